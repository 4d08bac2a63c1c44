"""`editgen run` on an existing OUT, and the terminal a run leaves (issue 20 items 8 and 9), through the CLI:
one tiny run (6 captions, 1 candidate of 2 steps) in which an instruct worker dies once, then reruns on
copies of its OUT. A rerun without --profile keeps the recorded config and recomputes nothing; --set says
what it recomputes and why before any work; after `--only ingest` with a new ingest setting, status shows
the stages built on the old ingest stale and export-hf/preview refuse them until `editgen run --out OUT`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, cli_env, error_line

pytestmark = pytest.mark.slow

DEMO = ROOT / "examples" / "demo_captions.jsonl"
SETTINGS = ["ingest.limit=6", "render.steps=2", "render.candidates=1"]
STAGES = ("ingest", "instruct", "render", "filter", "shard")
#: What Ray prints on its own: its Python log format, the C++ core's (glog) lines, forwarded output.
RAY_LINE = re.compile(r"core_worker|\(raylet\)|\(autoscaler|\(\w* ?pid=\d+|\b(?:INFO|WARNING|ERROR) \S+\.py:\d+ -- "
                      r"|\[\d{4}-\d\d-\d\d [\d:,]+ [IWEF] \d+ \d+\]|Token authentication")


def editgen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**(env or cli_env()), "COLUMNS": "400"}  # no wrapped log lines to search through
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The first run, progress display on; instruct's worker dies in its first partition (and is retried),
    so Ray has its say: the raylet's worker-died error (and, depending on the Ray session, its token-auth
    warning and core worker lines)."""
    out = tmp_path_factory.mktemp("rerun") / "out"
    proc = editgen("run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out),
                   *[a for kv in SETTINGS for a in ("--set", kv)],
                   env=cli_env() | {"EDITGEN_FAULT_CRASH": "instruct:0:0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def copy_of(first: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> Path:
    return Path(shutil.copytree(first[0], tmp_path / "out"))


def stage_hashes(out: Path) -> dict[str, str]:
    return {s: json.loads((out / s / "_stage.json").read_text())["stage_hash"] for s in STAGES}


def data_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".parquet", ".tar")}


def newest_log(out: Path) -> str:
    return max((out / "logs").glob("run-*.log"), key=lambda p: p.stat().st_mtime_ns).read_text()


def status(out: Path) -> dict[str, dict]:
    proc = editgen("status", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}


def test_ray_logs_go_to_the_run_log_not_the_terminal(first):
    out, proc = first
    terminal = proc.stdout + proc.stderr
    assert [ln for ln in terminal.splitlines() if RAY_LINE.search(ln)] == []
    assert "instruct: partition 0 attempt 1 failed" in terminal  # editgen's own line about it stays
    log = newest_log(out)
    # the raylet's line is certain (a killed worker); the token-auth warning and the C++ core's lines come
    # or not with the Ray session (routing fd 2 is proven in test_quiet_terminal.py)
    assert "(raylet) A worker died" in log
    assert [ln for ln in log.splitlines() if RAY_LINE.search(ln)]


def test_rerun_without_profile_keeps_the_recorded_one(first, tmp_path):
    out = copy_of(first, tmp_path)
    hashes, files = stage_hashes(out), data_files(out)
    proc = editgen("run", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"rerun: config recorded in {out}/config.yaml (profile tiny)" in proc.stdout
    assert "recomputing" not in proc.stdout + newest_log(out)
    assert stage_hashes(out) == hashes and data_files(out) == files
    assert all(s["state"] == "complete" for s in status(out).values())


def test_rerun_with_set_says_what_it_recomputes_before_any_work(first, tmp_path):
    out = copy_of(first, tmp_path)
    hashes = stage_hashes(out)
    proc = editgen("run", "--out", str(out), "--set", "render.steps=3", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notice = "recomputing render, filter, shard (render.steps 2 -> 3); kept: ingest, instruct"
    log = newest_log(out)
    for text in (proc.stdout, log):  # the terminal and the run log, before the run touches anything
        assert notice in text and text.index(notice) < text.index("editgen run: out=") < text.index("render: 1/1")
    now = stage_hashes(out)
    assert [s for s in STAGES if now[s] != hashes[s]] == ["render", "filter", "shard"]
    assert all(s["state"] == "complete" for s in status(out).values())


def test_stale_after_only_ingest_until_rerun(first, tmp_path):
    out = copy_of(first, tmp_path)
    proc = editgen("run", "--out", str(out), "--only", "ingest", "--set", "ingest.min_words=4", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recomputing ingest (ingest.min_words" in proc.stdout
    st = status(out)
    assert st["ingest"]["state"] == "complete"
    assert [st[s]["state"] for s in STAGES[1:]] == ["stale"] * 4 and not any(st[s]["complete"] for s in STAGES[1:])
    assert [st[s]["stale_reason"] for s in STAGES[1:]] == ["upstream changed"] + ["upstream stale"] * 3
    table = editgen("status", str(out))  # piped: not cut at 80 columns
    assert "stale (upstream changed)" in table.stdout and all(h in table.stdout for h in stage_hashes(out).values())
    for args in (["export-hf", str(out), str(tmp_path / "hf")], ["preview", str(out)], ["shards", str(out)]):
        refused = editgen(*args)
        line = error_line(refused)
        assert refused.returncode == 2 and "ingest was recomputed after instruct was computed" in line
        assert f"`editgen run --out {out}`" in line and f"`editgen {args[0]}`" in line
    assert not (tmp_path / "hf").exists() and not (out / "preview.html").exists()
    fixed = editgen("run", "--out", str(out), "--no-progress")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "recomputing instruct, render, filter, shard (ingest was recomputed after instruct ran)" in fixed.stdout
    assert all(s["state"] == "complete" for s in status(out).values())
    assert editgen("export-hf", str(out), str(tmp_path / "hf")).returncode == 0
