"""The runner on a real local Ray: accounting, resume, kill -9, --from, config invalidation, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.cli.status import collect
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import UserError
from editgen.pipeline.runner import run_pipeline
from tests.support import ROOT, cli_env


def ingest_cfg(laion: Path, **over):
    ingest = {"input": [str(laion)], "rows_per_partition": 100, **over}
    return build_config(extra={"ingest": ingest, "run": {"progress": False}})


def files_state(out: Path, stage: str = "ingest") -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file a stage wrote."""
    base = out / stage
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(base.rglob("*")) if p.is_file()}


def partition_bytes(out: Path, stage: str = "ingest") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / stage).glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, ray_session, laion_parquet):
    out = tmp_path_factory.mktemp("baseline")
    result = run_pipeline(ingest_cfg(laion_parquet), str(out), only="ingest")
    return out, result


def test_exact_accounting_on_laion(baseline):
    out, result = baseline
    st = result.stages[0]
    assert st.rows_in == 1000
    assert st.rows_out + sum(st.dropped.values()) == 1000
    assert st.rows_out > 800
    for reason in ("too_short", "not_english", "blocklisted", "duplicate_caption"):
        assert st.dropped.get(reason, 0) > 0, reason
    tables = [pq.read_table(p) for p in sorted((out / "ingest").glob("part-*.parquet"))]
    assert sum(t.num_rows for t in tables) == 1000
    ids = [i for t in tables for i in t["id"].to_pylist()]
    assert len(set(ids)) == 1000
    dropped = [r for t in tables for r in t.to_pylist() if r["status"] == "dropped"]
    assert all(r["drop_reason"] for r in dropped)
    assert (out / "config.yaml").exists() and list((out / "logs").glob("run-*.log"))


def test_rerun_is_idempotent(baseline, laion_parquet):
    out, _ = baseline
    before = files_state(out)
    result = run_pipeline(ingest_cfg(laion_parquet), str(out), only="ingest")
    assert result.stages[0].computed == 0 and result.stages[0].skipped == 10
    after = files_state(out)
    changed = [k for k in before if before[k] != after.get(k) and not k.endswith("_stage.json")]
    assert changed == []


def test_status_json(baseline):
    out, _ = baseline
    proc = subprocess.run([sys.executable, "-m", "editgen.cli.main", "status", str(out), "--json"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    ing = next(s for s in status["stages"] if s["stage"] == "ingest")
    assert ing["complete"] and ing["partitions_done"] == ing["partitions_total"] == 10
    assert ing["rows_in"] == 1000 == ing["rows_out"] + ing["rows_dropped"]
    assert ing["rows_dropped"] == sum(ing["dropped"].values())
    assert len(ing["config_hash"]) == 16


def test_altered_partition_is_detected_and_recomputed(baseline, laion_parquet, tmp_path):
    out, _ = baseline
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = copy / "ingest" / "part-00003.parquet"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated
    pre = copy / "ingest" / "_pre" / "part-00005.parquet"
    pre.write_bytes(pre.read_bytes()[:-10] + b"0123456789")  # same size, altered
    result = run_pipeline(ingest_cfg(laion_parquet), str(copy), only="ingest")
    assert result.stages[0].computed == 1
    assert partition_bytes(copy) == partition_bytes(out)


def test_config_change_invalidates_and_says_so(baseline, laion_parquet, tmp_path):
    import shutil

    out, _ = baseline
    copy = tmp_path / "cfgchange"
    shutil.copytree(out, copy)
    result = run_pipeline(ingest_cfg(laion_parquet, min_words=4), str(copy), only="ingest")
    st = result.stages[0]
    assert st.computed == 10 and "config changed" in st.note
    assert st.dropped["too_short"] > 29
    # Scheduling-only settings never invalidate.
    again = run_pipeline(ingest_cfg(laion_parquet, min_words=4, resources={"concurrency": 1}), str(copy),
                         only="ingest")
    assert again.stages[0].computed == 0


def test_from_recomputes(baseline, laion_parquet, tmp_path):
    import shutil

    out, _ = baseline
    copy = tmp_path / "from"
    shutil.copytree(out, copy)
    result = run_pipeline(ingest_cfg(laion_parquet), str(copy), from_stage="ingest", to_stage="ingest")
    assert result.stages[0].name == "ingest" and result.stages[0].computed == 10
    assert partition_bytes(copy) == partition_bytes(out)


def test_fewer_partitions_removes_stale_ones(baseline, laion_parquet, tmp_path):
    import shutil

    out, _ = baseline
    copy = tmp_path / "resize"
    shutil.copytree(out, copy)
    run_pipeline(ingest_cfg(laion_parquet, rows_per_partition=400), str(copy), only="ingest")
    assert sorted(partition_bytes(copy)) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    status = collect(str(copy))
    ing = next(s for s in status["stages"] if s["stage"] == "ingest")
    assert ing["rows_in"] == 1000 and ing["partitions_done"] == 3


def test_only_needs_complete_upstream(ray_session, laion_parquet, tmp_path):
    from editgen.pipeline.registry import stage_names

    names = stage_names()
    if len(names) < 2:
        pytest.skip("only the ingest stage is built")
    with pytest.raises(UserError, match="upstream stage 'ingest' is missing"):
        run_pipeline(ingest_cfg(laion_parquet), str(tmp_path / "o"), only=names[1])


def test_sigkill_mid_stage_then_rerun_is_byte_identical(baseline, laion_parquet, ray_address, tmp_path):
    out, _ = baseline
    killed = tmp_path / "killed"
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": "0.5"}
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--only", "ingest", "--input", str(laion_parquet),
           "--out", str(killed), "--set", "ingest.rows_per_partition=100", "--ray-address", ray_address,
           "--no-progress", "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done_dir = killed / "ingest" / "_pre" / "_done"
    while time.time() < deadline:
        if done_dir.exists() and len(list(done_dir.glob("part-*.json"))) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(done_dir.glob("part-*.json")))
    assert 3 <= n_done < 10, "the kill must land in the middle of the stage"
    assert not (killed / "ingest" / "_stage.json").exists() or not json.loads(
        (killed / "ingest" / "_stage.json").read_text())["complete"]
    result = run_pipeline(ingest_cfg(laion_parquet), str(killed), only="ingest")
    assert result.stages[0].skipped >= 3
    assert partition_bytes(killed) == partition_bytes(out)
    assert partition_bytes(killed, "ingest/_pre") == partition_bytes(out, "ingest/_pre")
    assert not list(killed.rglob(".tmp-*"))


def test_cli_bad_input_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "editgen.cli.main", "run", "--only", "ingest", "--input", str(bad), "--out", str(out)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(bad) in proc.stderr
    assert not out.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "editgen.cli.main", "run", "--input", str(tmp_path / "missing.parquet"), "--out",
         str(out)], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "missing.parquet" in proc.stderr and not out.exists()


def test_fsspec_urls_for_input_and_out(ray_session, laion_parquet, tmp_path):
    """Inputs and OUT given as URLs go through fsspec end to end (same code path as s3://)."""
    out_url = f"file://{tmp_path / 'url-out'}"
    cfg = build_config(extra={"ingest": {"input": [f"file://{laion_parquet}"], "rows_per_partition": 500,
                                         "limit": 200}, "run": {"progress": False}})
    result = run_pipeline(cfg, out_url, only="ingest")
    assert result.stages[0].rows_in == 200
    assert len(list((tmp_path / "url-out" / "ingest").glob("part-*.parquet"))) == 1
    status = collect(out_url)
    ing = next(s for s in status["stages"] if s["stage"] == "ingest")
    assert ing["rows_in"] == 200 == ing["rows_out"] + ing["rows_dropped"]
