"""The survival funnel with compute per stage (issue 23 item 5): rows in/out and drops per stage, GPU-seconds
where a GPU ran else CPU-seconds, UNet FLOPs and LLM/VLM tokens, kept per GPU-hour (per CPU-hour when no
GPU ran); `editgen status`, the manifest's `survival` section (untimed: manifest.json stays byte-identical
across resumes) and the preview agree. From constructed completion records and the shard stage's real body
over synthetic filter partitions: no model runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from editgen.cli.preview import survival_html
from editgen.cli.status import collect, survival_table
from editgen.output.survival import TIMED_KEYS, TIMED_STAGE_KEYS, end_line, stage_survival, survival, untimed
from editgen.pipeline.records import GLOBAL_RECORD, write_record, write_stage_meta
from editgen.pipeline.storage import Storage
from tests.support import filter_partitions, manifest, write_shards

GRAPH = ["ingest", "instruct", "render", "filter", "shard"]


def _rec(pid: int, rows_in: int, rows_out: int, dropped: dict[str, int] | None = None, cpu: float = 1.0,
         wall: float = 2.0, **metrics: float) -> dict[str, Any]:
    return {"partition": pid, "sha256": f"s{pid}", "stage_hash": "h", "rows_in": rows_in, "rows_out": rows_out,
            "dropped": dropped or {}, "metrics": metrics, "cpu_seconds": cpu, "seconds": wall}


def test_a_stage_line_sums_its_records_and_picks_gpu_or_cpu_seconds() -> None:
    cpu = stage_survival("filter", [_rec(0, 10, 6, {"clip_dir": 4}, cpu=1.5), _rec(1, 8, 5, {"clip_dir": 2,
                                                                                           "nsfw": 1}, cpu=2.0)])
    assert (cpu.rows_in, cpu.rows_out, cpu.dropped) == (18, 11, {"clip_dir": 6, "nsfw": 1})
    assert cpu.device == "cpu" and cpu.gpu_seconds is None and cpu.cpu_seconds == 3.5 and cpu.wall_seconds == 4.0
    assert cpu.unet_flops is None and cpu.generated_tokens is None
    gpu = stage_survival("render", [_rec(0, 6, 18, gpu_seconds=30.0, unet_flops=2e12),
                                    _rec(1, 5, 15, gpu_seconds=12.5, unet_flops=1e12)])
    assert gpu.device == "gpu" and gpu.gpu_seconds == 42.5 and gpu.unet_flops == 3e12
    assert gpu.cpu_seconds == 2.0  # the host's time is kept beside the GPU's


def test_tokens_for_any_llm_stage_and_rows_out_above_rows_in_shown_as_is() -> None:
    """instruct with sessions writes later turns (rows out > rows in); a judge stage's tokens count the
    same way as instruct's, by metric name, not by stage name."""
    instruct = stage_survival("instruct", [_rec(0, 4, 9, {"unparseable": 1}, generated_tokens=300,
                                                prompt_tokens=1200)])
    assert (instruct.rows_in, instruct.rows_out) == (4, 9)
    assert (instruct.generated_tokens, instruct.prompt_tokens) == (300, 1200)
    judge = stage_survival("judge", [_rec(0, 6, 4, {"judge_low": 2}, generated_tokens=90, prompt_tokens=5000)])
    assert (judge.generated_tokens, judge.prompt_tokens) == (90, 5000)


def test_step_folders_add_compute_but_not_rows() -> None:
    """ingest's clean and dedup steps spend compute; its rows are the publish step's records'."""
    line = stage_survival("ingest", [_rec(0, 40, 30, {"not_english": 10}, cpu=0.5)],
                          [_rec(0, 40, 40, cpu=3.0), {"partition": 0, "cpu_seconds": 1.0, "seconds": 1.5}])
    assert (line.rows_in, line.rows_out, line.dropped) == (40, 30, {"not_english": 10})
    assert line.cpu_seconds == 4.5 and line.wall_seconds == 5.5


def _lines(gpu: bool) -> dict[str, Any]:
    render = {"gpu_seconds": 360.0} if gpu else {}
    return {
        "ingest": stage_survival("ingest", [_rec(0, 40, 30, cpu=2.0)]),
        "instruct": stage_survival("instruct", [_rec(0, 30, 28, cpu=10.0, generated_tokens=100, prompt_tokens=400)]),
        "render": stage_survival("render", [_rec(0, 28, 84, cpu=100.0, unet_flops=5e12, **render)]),
        "filter": stage_survival("filter", [_rec(0, 84, 20, {"clip_dir": 64}, cpu=8.0)]),
        "shard": stage_survival("shard", [{"rows_in": 20, "rows_out": 20, "dropped": {}, "cpu_seconds": 0.0}]),
    }


def test_kept_per_gpu_hour_over_every_gpu_second() -> None:
    section = survival(GRAPH, _lines(gpu=True))
    assert section is not None
    assert [s["stage"] for s in section["stages"]] == GRAPH and section["not_run"] == []
    assert section["kept_samples"] == 20 and section["gpu_seconds"] == 360.0
    assert section["kept_per_gpu_hour"] == 200.0  # 20 kept in 0.1 GPU-hour
    assert section["kept_per_cpu_hour"] is None  # a GPU ran: the GPU-hour is the figure
    assert section["unet_flops"] == 5e12 and section["generated_tokens"] == 100
    assert "200 kept samples per GPU-hour" in end_line(section)


def test_kept_per_cpu_hour_when_no_gpu_ran() -> None:
    section = survival(GRAPH, _lines(gpu=False))
    assert section is not None and section["gpu_seconds"] is None and section["kept_per_gpu_hour"] is None
    assert section["cpu_seconds"] == 120.0 and section["kept_per_cpu_hour"] == 600.0
    assert "no GPU ran" in end_line(section) and "600 kept samples per CPU-hour" in end_line(section)


def test_the_stages_are_the_graphs_and_kept_waits_for_its_last_stage() -> None:
    """No fixed stage list: a judge between filter and shard appears in graph order; before the graph's
    last stage has run there are no kept samples to divide."""
    lines = {**_lines(gpu=True), "judge": stage_survival("judge", [_rec(0, 20, 15, {"judge_low": 5},
                                                                        gpu_seconds=40.0)])}
    del lines["shard"]
    graph = ["ingest", "instruct", "render", "filter", "judge", "shard"]
    section = survival(graph, lines)
    assert section is not None
    assert [s["stage"] for s in section["stages"]] == graph[:-1] and section["not_run"] == ["shard"]
    assert section["gpu_seconds"] == 400.0 and section["kept_samples"] is None
    assert section["kept_per_gpu_hour"] is None and "shard has not run" in end_line(section)
    assert survival(graph, {}) is None


def _stage(storage: Storage, name: str, records: list[dict[str, Any]], h: str = "h") -> None:
    write_stage_meta(storage, name, {"stage": name, "stage_hash": h, "complete": True, "partitions": len(records)})
    for r in records:
        write_record(storage, name, {"stage": name, **r, "stage_hash": h})


@pytest.fixture()
def published(tmp_path: Path) -> Path:
    """An OUT whose upstream stages hold constructed records (ingest with a step folder, an old
    partition of another hash that must not count) and whose shard stage ran its real body."""
    storage = Storage(str(tmp_path))
    _stage(storage, "ingest", [_rec(0, 40, 30, {"not_english": 10}, cpu=0.5)])
    _stage(storage, "ingest/_pre", [_rec(0, 40, 40, cpu=3.0)])
    _stage(storage, "instruct", [_rec(0, 30, 28, {"unparseable": 2}, cpu=4.0, generated_tokens=700,
                                      prompt_tokens=2100)])
    _stage(storage, "render", [_rec(0, 28, 24, cpu=50.0, gpu_seconds=90.0, unet_flops=3e12)])
    write_record(storage, "render", {**_rec(1, 99, 99, gpu_seconds=1e6), "stage": "render", "stage_hash": "old"})
    records = filter_partitions(tmp_path, parts=2, pairs=3, candidates=2)
    _stage(storage, "filter", [{**r, "cpu_seconds": 1.25, "seconds": 2.0} for r in records])
    summary = write_shards(tmp_path, [{**r, "stage_hash": "h"} for r in records], export_rejected=True)
    write_stage_meta(storage, "shard", {"stage": "shard", "stage_hash": "s", "complete": True, "partitions": 1})
    # what the runner writes (pipeline/runner.py _run_global): the body's summary and its timing
    write_record(storage, "shard", {"stage": "shard", "partition": 0, "stage_hash": "s", "input_key": "k",
                                    "seconds": 0.75, "cpu_seconds": 0.5, **summary}, GLOBAL_RECORD)
    return tmp_path


def test_status_manifest_and_preview_show_the_same_funnel(published: Path) -> None:
    status = collect(str(published))
    section = status["survival"]
    published_funnel = manifest(published)["survival"]
    assert published_funnel == untimed(section)  # the same funnel, less one run's seconds
    assert not set(published_funnel) & set(TIMED_KEYS)
    assert all(not set(line) & set(TIMED_STAGE_KEYS) for line in published_funnel["stages"])
    assert published_funnel["stages"][2]["device"] == "gpu"  # where it ran stays
    lines = {s["stage"]: s for s in section["stages"]}
    assert lines["ingest"]["cpu_seconds"] == 3.5 and lines["ingest"]["rows_out"] == 30  # clean step's compute
    assert lines["render"]["gpu_seconds"] == 90.0 and lines["render"]["unet_flops"] == 3e12  # not the old part's
    assert lines["instruct"]["generated_tokens"] == 700 and lines["instruct"]["device"] == "cpu"
    filt = next(s for s in status["stages"] if s["stage"] == "filter")
    assert (lines["filter"]["rows_in"], lines["filter"]["rows_out"]) == (filt["rows_in"], filt["rows_out"])
    assert lines["filter"]["dropped"] == filt["dropped"] and lines["filter"]["cpu_seconds"] == 2.5
    assert lines["shard"]["rows_in"] == filt["rows_out"] == section["kept_samples"] > 0
    assert (lines["shard"]["cpu_seconds"], lines["shard"]["wall_seconds"]) == (0.5, 0.75)
    assert section["cpu_seconds"] == 3.5 + 4.0 + 50.0 + 2.5 + 0.5
    assert section["kept_per_gpu_hour"] == round(section["kept_samples"] / (90.0 / 3600), 3)
    console = Console(width=200, record=True)
    table = survival_table(status)
    assert table is not None
    console.print(table)
    text = console.export_text()
    assert "90 GPU-s" in text and "3e+12 UNet FLOPs" in text and "700 tokens out" in text
    assert "kept samples per GPU-hour" in text
    page = survival_html(Storage(str(published)))
    assert "90 GPU-s" in page and end_line(section) in page


def test_a_rerun_of_the_shard_stage_publishes_the_same_manifest_bytes(published: Path) -> None:
    """Upstream records rewritten with other timings (a resumed run recomputed them) leave the
    manifest's bytes as they were: its funnel holds no seconds."""
    before = (published / "manifest.json").read_bytes()
    storage = Storage(str(published))
    _stage(storage, "instruct", [_rec(0, 30, 28, {"unparseable": 2}, cpu=40.0, wall=80.0, generated_tokens=700,
                                      prompt_tokens=2100)])
    _stage(storage, "render", [_rec(0, 28, 24, cpu=7.0, wall=9.0, gpu_seconds=55.0, unet_flops=3e12)])
    records = filter_partitions(published, parts=2, pairs=3, candidates=2)
    write_shards(published, [{**r, "stage_hash": "h"} for r in records], export_rejected=True)
    assert (published / "manifest.json").read_bytes() == before
