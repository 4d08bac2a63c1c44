"""Filter + shard through the real runner on Ray: a threshold change re-runs selection from cached
scores (no CLIP), leaves render partitions untouched, and re-shards. Render partitions are synthetic,
written with completion records exactly as the runner's worker writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from editgen.pipeline.config import build_config
from editgen.pipeline.records import write_record, write_stage_meta
from editgen.pipeline.stage import count_reasons, part_name
from editgen.pipeline.storage import Storage
from editgen.tiny.synthetic import render_table
from tests.support import shard_path, tar_files

pytest.importorskip("open_clip")
GRAPH = ["render", "filter", "shard"]


@pytest.fixture
def graph(monkeypatch):
    """Pretend render is in the graph (its module may not exist yet); filter/shard are real."""
    import editgen.pipeline.runner as runner
    monkeypatch.setattr(runner, "stage_names", lambda cfg=None: list(GRAPH))  # upstream links follow from it
    return runner


def _cfg(tmp_path: Path, **filt):
    return build_config(extra={
        "run": {"progress": False},
        "filter": {"clip_model": "tiny-clip", "clip_pretrained": "seed:0", "device": "cpu",
                   "min_sim_0": -1.0, "min_sim_1": -1.0, "min_sim_direction": -1.0, "min_sim_image": -1.0,
                   "top_k": 2, "resources": {"num_gpus": 0, "num_cpus": 1, "concurrency": 1}, **filt},
        "shard": {"samples_per_shard": 5},
    })


def _fake_render(storage: Storage, cfg, runner) -> None:
    h = runner.stage_hashes(cfg)["render"]
    for pid in range(2):
        t = render_table(n_pairs=3, candidates=3, size=32, seed=pid, start=3 * pid)
        sha, nbytes = storage.write_table(t, "render", part_name(pid))
        kept, dropped = count_reasons(t)
        write_record(storage, "render", {
            "stage": "render", "partition": pid, "file": part_name(pid), "stage_hash": h,
            "input_key": f"fake{pid}", "sha256": sha, "bytes": nbytes, "rows_in": 3,
            "rows_total": t.num_rows, "rows_out": kept, "dropped": dropped,
        })
    write_stage_meta(storage, "render", {"stage": "render", "stage_hash": h, "complete": True, "partitions": 2})


def _files(out: Path, stage: str) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / stage).glob("part-*"))}


def test_threshold_rerun_reuses_scores(tmp_path, ray_session, graph):
    out = tmp_path / "out"
    cfg = _cfg(tmp_path)
    _fake_render(Storage(str(out)), cfg, graph)
    render_before = _files(out, "render")

    res = graph.run_pipeline(cfg, str(out), from_stage="filter")
    filt, shard = res.stages
    assert filt.computed == 2 and filt.metrics.get("clip_scored") == 18
    assert filt.rows_in == 18 and filt.rows_out == 12 and filt.dropped == {"not_top_k": 6}
    assert shard.rows_out == 12 and shard_path(out, 2).exists()
    third = shard_path(out, 2)
    scores_before = _files(out / "filter", "_scores")

    cfg2 = _cfg(tmp_path, top_k=1)
    # config change detected by the runner (stage hash), no --from: filter then shard
    filt2 = graph.run_pipeline(cfg2, str(out), only="filter").stages[0]
    shard2 = graph.run_pipeline(cfg2, str(out), only="shard").stages[0]
    assert filt2.computed == 2 and filt2.metrics == {"score_cache_hits": 2.0}  # no CLIP work at all
    assert filt2.rows_out == 6 and filt2.dropped == {"not_top_k": 12}
    assert shard2.computed == 1 and shard2.rows_out == 6
    assert _files(out / "filter", "_scores") == scores_before
    assert _files(out, "render") == render_before
    assert not third.exists() and len(tar_files(out)) == 2  # the earlier generation is gone

    from editgen.cli.validate import validate

    assert validate(str(out), chain=False) == []
