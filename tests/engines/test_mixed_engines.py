"""A run that mixes every registered engine: each pair's engine is drawn from `render.engine`'s weights,
the driver is SIGKILLed mid-render, and the rerun publishes exactly what an uninterrupted run publishes
(issue 21 tests: "a run mixing engines survives SIGKILL and its rerun equals a clean run byte for byte").
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from editgen.engines import REGISTRY
from tests.support import ROOT, cli_env, wait_until

DEMO = ROOT / "examples" / "demo_captions.jsonl"
MIX = "render.engine={" + ", ".join(f"{name}: 1" for name in REGISTRY) + "}"
SETTINGS = ["ingest.limit=16", "ingest.rows_per_partition=4", "render.steps=2", "render.candidates=2",
            "render.resources.concurrency=2", MIX]


def cmd(out, ray_address: str) -> list[str]:
    argv = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO),
            "--out", str(out), "--no-progress", "-q", "--ray-address", ray_address]
    for item in SETTINGS:
        argv += ["--set", item]
    return argv


def published(out) -> dict[str, bytes]:
    files = {}
    for stage in ("ingest", "instruct", "render", "filter"):
        for p in sorted((out / stage).rglob("part-*.parquet")):
            files[str(p.relative_to(out))] = p.read_bytes()
    for p in sorted([*(out / "shards").rglob("*.tar"), out / "manifest.json"]):
        files[str(p.relative_to(out))] = p.read_bytes()
    return files


@pytest.mark.slow
def test_mixed_engines_survive_sigkill_and_rerun_equals_a_clean_run(tmp_path, ray_address):
    clean = tmp_path / "clean"
    done = subprocess.run(cmd(clean, ray_address), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    engines = {json.loads(p)["format"].split("/")[0] for f in sorted((clean / "render").glob("part-*.parquet"))
               for p in pq.read_table(f, columns=["params"])["params"].to_pylist() if p}
    assert engines == {f"editgen.{name}" for name in REGISTRY}, engines  # every engine drew pairs

    out = tmp_path / "killed"
    for stage in ("ingest", "instruct"):  # the same upstream: the kill and the rerun's work are in render
        shutil.copytree(clean / stage, out / stage)
    env = {**cli_env(), "EDITGEN_FAULT_DELAY_S": "render=2"}
    proc = subprocess.Popen(cmd(out, ray_address), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any((out / "render" / "_done").glob("part-*.json")), proc, timeout=600)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd(out, ray_address), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    got, want = published(out), published(clean)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
