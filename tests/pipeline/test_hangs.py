"""No run hangs forever, and a terminated driver stops in order (issue 19 items 1 and 10; docs/faults.md).

A worker is frozen for real (EDITGEN_FAULT_STOP: it SIGSTOPs itself mid-partition, alive and silent as a
stuck CUDA call or a hung NFS read leaves it): the runner kills it once its partition passes its progress
deadline and redoes the partition elsewhere, or fails the stage with one line when every attempt freezes;
plain tasks and the progress board itself are watched the same way. `editgen run` told SIGTERM (or
SIGINT) mid-render stops with one line, no native stack, its lease released, and a rerun matches a clean
run byte for byte. Every process a test freezes is SIGKILLed by pid at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from editgen.pipeline.config import build_config
from editgen.pipeline.errors import StageFailed
from editgen.pipeline.runner import run_pipeline, stage_hashes
from editgen.pipeline.settings.base import Resources
from editgen.pipeline.watchdog import Deadline
from tests.support import ROOT, cli_env, error_line, freeze_always, freeze_once, total, wait_until

DEMO = ROOT / "examples" / "demo_captions.jsonl"
#: 12 captions in 4 partitions of 3; 2 candidates of 2 steps per pair (as tests/pipeline/test_faults.py).
SETTINGS = ["ingest.limit=12", "ingest.rows_per_partition=3", "render.steps=2", "render.candidates=2",
            "render.resources.concurrency=2", "instruct.resources.concurrency=2"]
FAST = "resources.progress_timeout_s=2"  # seconds-level deadlines: a frozen worker costs ~10 s, not 10 min


def config(*extra: str):
    return build_config(profile="tiny", overrides=[*SETTINGS, "run.progress=false", *extra],
                        extra={"ingest": {"input": [str(DEMO)]}})


def cli(out: Path, ray_address: str | None, *extra: str, args: tuple[str, ...] = ()) -> list[str]:
    """`editgen run` with the settings of `config()` (same stage hashes, same outputs)."""
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO),
           "--out", str(out), "--no-progress", "-q", *args]
    for item in (*SETTINGS, *extra):
        cmd += ["--set", item]
    return cmd + (["--ray-address", ray_address] if ray_address else [])


def parts(out: Path, stage: str) -> dict[str, bytes]:
    d = out / stage
    return {p.name: p.read_bytes() for p in sorted(d.glob("part-*.parquet"))}


def copy_stages(src: Path, out: Path, *stages: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shutil.copytree(src / stage, out / stage)


def stage_complete(out: Path, stage: str) -> bool:
    import json

    meta = out / stage / "_stage.json"
    return meta.is_file() and json.loads(meta.read_text())["complete"]


def run_log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("run-*.log")))


def _state(pid: int) -> str | None:
    """The process's state letter (T: stopped), None once it is gone (zombies count as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if state in ("Z", "X") else state


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    """The pids still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_state(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _state(p)]


@contextlib.contextmanager
def frozen_pids(log: Path) -> Iterator[Path]:
    """The file EDITGEN_FAULT_STOP_LOG names; afterwards every pid in it still alive is SIGKILLed (only
    processes this test froze: the hook wrote their pids)."""
    try:
        yield log
    finally:
        for pid in stopped(log):
            with contextlib.suppress(ProcessLookupError):
                if _state(pid):
                    os.kill(pid, signal.SIGKILL)


def stopped(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.fixture
def freeze(monkeypatch, tmp_path) -> Iterator[Path]:
    """Freeze hook for in-process runs (the runner forwards EDITGEN_* to its actors): set FAULT_STOP."""
    log = tmp_path / "stopped-pids"
    monkeypatch.setenv("EDITGEN_FAULT_STOP_LOG", str(log))
    with frozen_pids(log):
        yield log


@pytest.fixture(scope="module")
def clean(tmp_path_factory, ray_session) -> Path:
    """ingest -> instruct, uninterrupted: what every faulty run is compared with."""
    out = tmp_path_factory.mktemp("hangs") / "clean"
    result = run_pipeline(config(), str(out), to_stage="instruct")
    assert [s.partitions for s in result.stages] == [4, 4]
    return out


@pytest.fixture(scope="module")
def clean_render(clean) -> Path:
    """The clean run, rendered too (only the slow tests need it)."""
    assert run_pipeline(config(), str(clean), only="render").stages[0].partitions == 4
    return clean


# ---- the deadline itself ------------------------------------------------------------------------
def test_deadline_follows_the_steps_own_waits():
    auto = Deadline.of(Resources())
    assert auto.seconds() == 600  # nothing timed yet: the floor
    auto.saw(5.0)
    auto.saw(90.0)
    auto.saw(20.0)
    assert auto.seconds() == 900  # 10 x the longest wait between progress seen so far
    assert Deadline.of(Resources(progress_floor_s=30, progress_factor=3)).seconds() == 30
    fixed = Deadline.of(Resources(progress_timeout_s=2))
    fixed.saw(100.0)
    assert fixed.seconds() == 2
    assert stage_hashes(config()) == stage_hashes(config(f"instruct.{FAST}", "render.resources.progress_floor_s=5"))


# ---- a wedged actor --------------------------------------------------------------------------
def test_wedged_worker_is_killed_and_its_partition_redone_elsewhere(clean, freeze, monkeypatch, tmp_path):
    """Partition 1's worker freezes on the first attempt: killed after the 2 s deadline, replaced, the
    partition redone by a live worker; the stage's output equals the clean run's."""
    out = tmp_path / "out"
    copy_stages(clean, out, "ingest")
    monkeypatch.setenv("EDITGEN_FAULT_STOP", "instruct:1:0")
    t0 = time.monotonic()
    result = run_pipeline(config(f"instruct.{FAST}"), str(out), only="instruct")
    assert time.monotonic() - t0 < 120
    assert result.stages[0].computed == 4
    [frozen] = stopped(freeze)
    assert wait_gone([frozen]) == [], "the wedged worker was not killed"
    import json

    rec = json.loads((out / "instruct" / "_done" / "part-00001.json").read_text())
    assert rec["attempt"] == 1 and not rec["worker"].endswith(f":{frozen}")
    assert "instruct: partition 1 made no progress for 2s; killing its worker" in run_log(out)
    assert parts(out, "instruct") == parts(clean, "instruct")


@pytest.mark.slow
def test_worker_wedged_on_every_attempt_fails_in_bounded_time_then_resumes(clean, ray_address, tmp_path):
    """Every attempt at partition 1 freezes: after max_retries the stage fails with one line naming the
    partition and the deadline (exit 1), nothing hangs, the lease is released, and a rerun completes."""
    out = tmp_path / "out"
    copy_stages(clean, out, "ingest")
    log = tmp_path / "stopped-pids"
    env = cli_env() | {"EDITGEN_FAULT_STOP": "instruct:1", "EDITGEN_FAULT_STOP_LOG": str(log)}
    cmd = cli(out, ray_address, f"instruct.{FAST}", "instruct.resources.max_retries=1", args=("--only", "instruct"))
    with frozen_pids(log):
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert time.monotonic() - t0 < 150
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = error_line(proc)
        assert line.startswith("editgen: instruct: partition 1 failed after 2 attempts: made no progress for 2s")
        assert "instruct.resources.progress_timeout_s" in line and "rerun to resume" in line
        assert len(stopped(log)) == 2 and wait_gone(stopped(log)) == []
    assert not (out / "_lease.json").exists() and not stage_complete(out, "instruct")
    assert run_pipeline(config(), str(out), only="instruct").stages[0].computed >= 1
    assert parts(out, "instruct") == parts(clean, "instruct")


# ---- frozen plain tasks and a frozen progress board -------------------------------------------------
def test_frozen_task_is_cancelled_and_retried(clean, freeze, monkeypatch, tmp_path):
    """ingest's publish step runs as plain Ray tasks (no actors): a task frozen mid-partition is cancelled
    (its process killed) and submitted again; the output equals the clean run's."""
    out = tmp_path / "out"
    monkeypatch.setenv("EDITGEN_FAULT_STOP", "ingest/publish:2:0")
    run_pipeline(config(f"ingest.{FAST}"), str(out), only="ingest")
    [frozen] = stopped(freeze)
    assert wait_gone([frozen]) == []
    assert "ingest/publish: partitions 0-3 attempt 1 made no progress for 2s" in run_log(out)
    assert parts(out, "ingest") == parts(clean, "ingest")


@pytest.mark.slow
def test_frozen_map_reduce_and_map_tasks(ray_session, freeze, tmp_path):
    """The executor's plain tasks (ingest's dedup, checksum verification): tasks frozen once are retried
    and the result is right; one frozen on every attempt fails with one line naming it."""
    from editgen.pipeline.executor import RayExecutor
    from editgen.pipeline.settings.run import RayConfig

    ex = RayExecutor(RayConfig(), worker_start_timeout_s=60)
    fast = Resources(progress_timeout_s=2)
    try:
        calls = [(str(tmp_path / "a"), 2), (str(tmp_path / "b"), 3)]
        assert ex.map_reduce(freeze_once, calls, total, (1,), resources=fast) == 1 + 4 + 9
        with pytest.raises(StageFailed, match=r"^dedup: task 2 of 3 \(freeze_always\) failed after 2 attempts: "
                                              r"made no progress for 2s"):
            ex.map_tasks(freeze_always, [(0,), (1,), (2,)], max_retries=1, label="dedup", resources=fast)
    finally:
        ex.close()
    assert len(stopped(freeze)) == 4 and wait_gone(stopped(freeze)) == []


@pytest.mark.slow
def test_frozen_progress_board_is_replaced(clean, freeze, monkeypatch, tmp_path):
    """The board the workers report to freezes (on the driver's 3rd question): the driver replaces it
    and the run completes, with no partition taken for wedged."""
    out = tmp_path / "out"
    copy_stages(clean, out, "ingest")
    monkeypatch.setenv("EDITGEN_FAULT_STOP", "board:3")
    monkeypatch.setenv("EDITGEN_FAULT_DELAY_S", "instruct=3")  # 4 partitions one after another: >= 12 s
    # an 8 s deadline: the driver gives a silent board that long (at most 30 s) before replacing it
    run_pipeline(config("instruct.resources.concurrency=1", "instruct.resources.progress_timeout_s=8"), str(out),
                 only="instruct")
    assert wait_gone(stopped(freeze)) == [] and len(stopped(freeze)) == 1
    log = run_log(out)
    assert "the progress board did not answer" in log and "made no progress" not in log
    assert parts(out, "instruct") == parts(clean, "instruct")


# ---- the driver told to stop -------------------------------------------------------------------
NATIVE = ("SIGTERM received", "Fatal Python error", "Traceback", "*** ", "Aborted", "core dumped")


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,line", [
    (signal.SIGTERM, 143, "editgen: terminated (SIGTERM); rerun the same command to resume"),
    (signal.SIGINT, 130, "editgen: interrupted; rerun the same command to resume"),
])
def test_signal_mid_render_stops_cleanly_then_resumes(sig, code, line, clean_render, ray_address, tmp_path):
    """SIGTERM (or SIGINT) to `editgen run` mid-render: exit 143 (130), one line, no native stack dump or
    traceback, the lease released and the stop in the run log; a rerun is byte-identical to a clean run."""
    clean, out = clean_render, tmp_path / "out"
    copy_stages(clean, out, "ingest", "instruct")
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": "render=2"}
    proc = subprocess.Popen(cli(out, ray_address, args=("--to", "render")), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(list((out / "render" / "_done").glob("part-*.json"))) >= 1, proc, timeout=240)
    os.kill(proc.pid, sig)
    t0 = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == code, stderr[-3000:]
    assert error_line(subprocess.CompletedProcess(proc.args, code, stdout, stderr)) == line
    assert not any(mark in stderr for mark in NATIVE), stderr[-3000:]
    assert not (out / "_lease.json").exists() and not (out / "_progress.json").exists()
    assert "run stopped" in run_log(out) and not stage_complete(out, "render")
    done = parts(out, "render")
    assert 1 <= len(done) < 4
    assert run_pipeline(config(), str(out), only="render").stages[0].computed == 4 - len(done)
    assert parts(out, "render") == parts(clean, "render")
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.slow
def test_sigterm_with_a_local_ray_stops_cleanly(clean, tmp_path):
    """The same with the Ray the driver starts itself (no --ray-address), told to stop while Ray starts:
    ray.init installs SIGTERM handlers of its own (exit 15 at once; a native stack dump and exit 134 once
    its core runs); the driver's orderly stop must win throughout."""
    out = tmp_path / "out"
    copy_stages(clean, out, "ingest")
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": "instruct=2", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cli(out, None, args=("--only", "instruct")), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: "starting a local Ray" in run_log(out), proc)
    time.sleep(2)  # inside ray.init, the window where Ray's handlers used to be in charge
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 143, stderr[-3000:]
    assert error_line(subprocess.CompletedProcess(proc.args, 143, stdout, stderr)).startswith("editgen: terminated")
    assert not any(mark in stderr for mark in NATIVE), stderr[-3000:]
    assert not (out / "_lease.json").exists()
