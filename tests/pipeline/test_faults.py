"""Faults, each for real (docs/faults.md): a worker node killed mid-render on a multi-node Ray cluster,
the driver SIGKILLed in every stage, partition files and shards truncated or altered on disk, an output
disk that is read-only or full, an LLM server that fails. After each, the run either finishes or stops
with one clear line, leaves nothing corrupt behind, and a rerun publishes shards byte-identical to an
uninterrupted run's: nothing lost, nothing twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.cli.status import collect
from editgen.output.shard_writer import sample_key
from editgen.pipeline.config import build_config
from editgen.pipeline.runner import run_pipeline
from tests.llm_fixtures import BadServer, free_port
from tests.support import ROOT, cli_env, error_line, manifest, shard_path, wait_until

DEMO = ROOT / "examples" / "demo_captions.jsonl"
#: 12 captions in 4 partitions of 3; 2 candidates of 2 steps per pair; shards of 2 samples written one
#: at a time (so a kill can land between two shards).
SETTINGS = [
    "ingest.limit=12", "ingest.rows_per_partition=3",
    "render.steps=2", "render.candidates=2", "render.resources.concurrency=2",
    "shard.samples_per_shard=2", "shard.resources.concurrency=1",
]
STAGES = ("ingest", "instruct", "render", "filter", "shard")
PARTITIONS = 4


def config(*extra: str):
    return build_config(profile="tiny", overrides=[*SETTINGS, "run.progress=false", *extra],
                        extra={"ingest": {"input": [str(DEMO)]}})


def cli(out: Path, *extra: str, ray_address: str | None = None, args: tuple[str, ...] = ()) -> list[str]:
    """`editgen run` with the same settings as `config()` (same stage hashes, same outputs)."""
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO),
           "--out", str(out), "--no-progress", "-q", *args]
    for item in (*SETTINGS, *extra):
        cmd += ["--set", item]
    if ray_address:
        cmd += ["--ray-address", ray_address]
    return cmd


def run_cli(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def outputs(out: Path) -> dict[str, bytes]:
    """Every data file a run publishes: stage partitions (with ingest/_pre and the filter score cache),
    shards and manifest."""
    files = {}
    for stage in STAGES[:-1]:
        for p in sorted((out / stage).rglob("part-*.parquet")):
            files[str(p.relative_to(out))] = p.read_bytes()
    for p in sorted([*(out / "shards").rglob("*"), *(out / "rejected").rglob("*"), out / "manifest.json"]):
        if p.is_file():
            files[str(p.relative_to(out))] = p.read_bytes()
    return files


def assert_same_outputs(out: Path, baseline: Path) -> None:
    got, want = outputs(out), outputs(baseline)
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"differ from the uninterrupted run: {differ}"


def shard_keys(out: Path) -> list[str]:
    keys = []
    m = manifest(out)  # the train and eval tars (tiny's shard.eval_fraction): every published sample
    for tar in [out / e["name"] for e in [*m["shards"], *m.get("eval", {}).get("shards", [])]]:
        with tarfile.open(tar) as t:
            keys += [m.name[:-5] for m in t.getmembers() if m.name.endswith(".json")]
    return keys


def expected_keys(out: Path) -> set[str]:
    """Every kept filter row must become exactly one shard sample."""
    keys = set()
    for p in sorted((out / "filter").glob("part-*.parquet")):
        for r in pq.read_table(p, columns=["id", "candidate", "status"]).to_pylist():
            if r["status"] == "kept":
                keys.add(sample_key(r["id"], r["candidate"]))
    return keys


def done_records(out: Path, stage: str) -> dict[str, bytes]:
    d = out / stage / ("_pre/_done" if stage == "ingest" else "_done")
    return {p.name: p.read_bytes() for p in sorted(d.glob("part-*.json"))} if d.is_dir() else {}


def stage_complete(out: Path, stage: str) -> bool:
    meta = out / stage / "_stage.json"
    return meta.is_file() and json.loads(meta.read_text())["complete"]


def assert_nothing_corrupt(out: Path) -> None:
    """No temp files; every completion record matches its file; every partition file is whole."""
    assert not list(out.rglob(".tmp-*")), "temp files left behind"
    for done in out.rglob("_done"):
        for rec_path in done.glob("part-*.json"):
            rec = json.loads(rec_path.read_text())
            data = (done.parent / rec["file"]).read_bytes()
            assert len(data) == rec["bytes"] and hashlib.sha256(data).hexdigest() == rec["sha256"], rec_path
    for p in out.rglob("part-*.parquet"):
        pq.read_metadata(p)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, ray_session) -> Path:
    """The uninterrupted run every faulty run is compared with."""
    out = tmp_path_factory.mktemp("faults") / "baseline"
    result = run_pipeline(config(), str(out))
    assert [s.name for s in result.stages] == list(STAGES)
    assert all(s.partitions == PARTITIONS for s in result.stages[:-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] >= 3 and len(manifest["shards"]) >= 2
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) and set(keys) == expected_keys(out)
    return out


def copy_upstream(baseline: Path, out: Path, stages: tuple[str, ...] = ("ingest", "instruct")) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shutil.copytree(baseline / stage, out / stage)


# ---- the driver SIGKILLed during each stage in turn -------------------------------------------------
def _count(d: Path, pattern: str) -> int:
    return len(list(d.glob(pattern))) if d.is_dir() else 0


KILL_WHEN: dict[str, Callable[[Path], bool]] = {
    "ingest": lambda out: _count(out / "ingest" / "_pre" / "_done", "part-*.json") >= 1,
    "instruct": lambda out: _count(out / "instruct" / "_done", "part-*.json") >= 1,
    "render": lambda out: _count(out / "render" / "_done", "part-*.json") >= 1,
    "filter": lambda out: _count(out / "filter" / "_done", "part-*.json") >= 1,
    "shard": lambda out: _count(out / "shards", "gen-*/edits-*.tar") >= 1,
}


@pytest.mark.slow
def test_driver_sigkill_in_every_stage_then_resume_is_byte_identical(baseline, ray_address, tmp_path):
    """One OUT, six runs: run k is SIGKILLed in stage k (after part of it is done), run 6 finishes.
    Work finished before a kill is reused, never redone, and the final output equals the baseline."""
    out = tmp_path / "killed"
    delay = ",".join(f"{s}=1.5" for s in STAGES)  # every partition (every shard) takes >= 1.5 s
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": delay}
    survivors: dict[str, dict[str, bytes]] = {}
    for stage in STAGES:
        proc = subprocess.Popen(cli(out, ray_address=ray_address), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_until(lambda stage=stage: KILL_WHEN[stage](out), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = STAGES[: STAGES.index(stage)]
        assert all(stage_complete(out, s) for s in before), f"killed in {stage}: upstream must be complete"
        assert not stage_complete(out, stage), f"the kill must land inside {stage}"
        if stage == "shard":
            assert not (out / "shard" / "_done" / "global.json").exists()
            assert len(list((out / "shards").glob("gen-*/edits-*.tar"))) < len(json.loads(
                (baseline / "manifest.json").read_text())["shards"])
        else:
            survivors[stage] = done_records(out, stage)
            assert 1 <= len(survivors[stage]) < PARTITIONS, f"{stage}: {sorted(survivors[stage])}"
    proc = run_cli(cli(out, ray_address=ray_address))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(stage_complete(out, s) for s in STAGES)
    for stage, records in survivors.items():  # finished before the kill -> reused as is
        now = done_records(out, stage)
        assert {k: now[k] for k in records} == records, f"{stage}: finished partitions were recomputed"
    assert_same_outputs(out, baseline)
    assert_nothing_corrupt(out)


def test_live_status_shows_lease_partitions_in_flight_and_rows_within_a_partition(baseline, ray_address, tmp_path):
    """While render runs, `editgen status` names the lease holder and what the driver last published:
    partitions in flight, rows done inside them (reported per candidate by the workers), rows/s."""
    out = tmp_path / "live"
    copy_upstream(baseline, out)
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": "render=6"}  # each partition stays in flight >= 6 s
    proc = subprocess.Popen(cli(out, ray_address=ray_address, args=("--to", "render")), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def live() -> dict | None:
        st = run_cli([sys.executable, "-m", "editgen.cli.main", "status", str(out), "--json"])
        got = json.loads(st.stdout) if st.returncode == 0 else {}
        rows = (got.get("live") or {}).get("in_flight_rows_done", {})
        if got.get("lease") and any(v > 0 for v in rows.values()):
            seen.append(got)
        return got

    seen: list[dict] = []
    wait_until(lambda: live() is not None and bool(seen), proc, timeout=240)
    status = seen[0]
    assert f"pid {proc.pid}" in status["lease"]["holder"] and status["live"]["stage"] == "render"
    assert status["live"]["partitions_in_flight"] and status["live"]["rows_total"] > 0
    assert 0 < status["live"]["rows_per_s"] < 100  # a tiny render on 2 cores: a few rows a second
    assert proc.wait(timeout=300) == 0
    assert not (out / "_progress.json").exists() and not (out / "_lease.json").exists()


# ---- a worker node killed in the middle of render -----------------------------------------------------
class RayCluster:
    """tests/fault_cluster.py in a subprocess: head (no CPUs) + N one-CPU worker nodes."""

    def __init__(self, proc: subprocess.Popen, address: str) -> None:
        self.proc, self.address = proc, address

    def command(self, line: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())


@contextlib.contextmanager
def ray_cluster(workers: int, log: Path) -> Iterator[RayCluster]:
    temp_dir = f"/tmp/rf-{uuid.uuid4().hex[:8]}"  # short: Ray's unix socket paths live under it
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_cluster", "--workers", str(workers), "--temp-dir", temp_dir],
            cwd=ROOT, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            start_new_session=True,
        )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            pytest.fail(f"the test Ray cluster did not start; see {log}")
        yield RayCluster(proc, json.loads(line)["address"])
    finally:
        try:
            if proc.stdin:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            proc.wait(timeout=90)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the helper's own session: only what it started
            proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def render_records(out: Path) -> list[dict]:
    return [json.loads(v) for v in done_records(out, "render").values()]


@pytest.mark.slow
def test_worker_node_killed_mid_render(baseline, tmp_path):
    """Two worker nodes, one render actor on each; one node dies with a partition in flight. Its actor
    cannot be placed again (the other node's CPU is taken), so the runner must not feed it partitions
    (each would fail at once and burn a retry: with max_retries=1 the stage failed that way): the
    survivor finishes the stage and the shards hold every sample exactly once."""
    out = tmp_path / "out"
    copy_upstream(baseline, out)  # the same upstream: the cluster's time goes to render
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": "render=3"}
    with ray_cluster(2, tmp_path / "cluster.log") as cluster:
        # one retry only: the lost partition may fail once, never again on the dead node's actor
        cmd = cli(out, "render.resources.max_retries=1", ray_address=cluster.address)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: KILL_WHEN["render"](out), proc)
        assert cluster.command("kill 0") == {"killed": 0}
        _, stderr = proc.communicate(timeout=500)
    assert proc.returncode == 0, stderr[-3000:]
    log = next((out / "logs").glob("run-*.log")).read_text()
    redone = any(r["attempt"] >= 1 for r in render_records(out))
    assert (redone and "worker died" in log) or "unavailable" in log, "the runner saw the worker go"
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) and set(keys) == expected_keys(baseline)
    assert_same_outputs(out, baseline)
    assert_nothing_corrupt(out)


@pytest.mark.slow
def test_last_worker_node_lost_fails_in_bounded_time_then_resumes(baseline, tmp_path):
    """The only worker node dies mid-render: no worker can ever be placed, so the stage fails after
    run.worker_start_timeout_s (exit 1, one line) instead of hanging; with a new node, a rerun resumes
    and matches the uninterrupted run."""
    out = tmp_path / "out"
    copy_upstream(baseline, out)  # the same upstream: the cluster's time goes to render
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": "render=2"}
    with ray_cluster(1, tmp_path / "cluster.log") as cluster:
        cmd = cli(out, "run.worker_start_timeout_s=30", ray_address=cluster.address)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: KILL_WHEN["render"](out), proc)
        killed_at = time.monotonic()
        assert cluster.command("kill 0") == {"killed": 0}
        stdout, stderr = proc.communicate(timeout=300)
        waited = time.monotonic() - killed_at
        assert proc.returncode == 1, stderr[-3000:]
        line = error_line(subprocess.CompletedProcess(cmd, 1, stdout, stderr))
        assert "render: no worker alive for 30s" in line and "partitions left" in line
        assert waited < 120
        assert not stage_complete(out, "render")
        assert_nothing_corrupt(out)
        assert cluster.command("add") == {"added": 1}
        again = run_cli(cli(out, ray_address=cluster.address))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_outputs(out, baseline)


def test_worker_that_cannot_start_fails_the_stage_with_its_error(baseline, ray_session, tmp_path, monkeypatch):
    """A constructor that always raises (here: the EDITGEN_FAULT_CRASH=stage:setup hook) is retried a
    bounded number of times, then the stage fails naming the worker's own error, instead of burning
    every partition's retries on a dead actor."""
    from editgen.pipeline.errors import StageFailed

    out = tmp_path / "out"
    copy_upstream(baseline, out, ("ingest",))
    monkeypatch.setenv("EDITGEN_FAULT_CRASH", "instruct:setup")
    t0 = time.monotonic()
    with pytest.raises(StageFailed, match=r"instruct: worker failed to start: .*injected failure while starting"):
        run_pipeline(config("instruct.resources.max_retries=1"), str(out), only="instruct")
    assert time.monotonic() - t0 < 120
    assert not stage_complete(out, "instruct") and done_records(out, "instruct") == {}


@pytest.mark.parametrize("fault", ["oom", "pair"])
def test_systemic_render_failure_fails_the_stage_then_resumes(fault, baseline, ray_session, tmp_path, monkeypatch):
    """Every UNet batch out of memory (or every pair failing): the partition fails, is retried, and the
    stage fails (exit 1, resumable), never 'complete' with every pair dropped as render_failed; once the
    cause is gone the rerun matches the uninterrupted run."""
    from editgen.pipeline.errors import StageFailed

    out = tmp_path / "out"
    copy_upstream(baseline, out)
    monkeypatch.setenv("EDITGEN_FAULT_RENDER_ERROR", fault)
    why = "out of memory" if fault == "oom" else r"pairs failed to render \(render.max_failed_fraction=0.5\)"
    with pytest.raises(StageFailed, match=rf"render: partition \d+ failed after 2 attempts: .*{why}"):
        run_pipeline(config("render.resources.max_retries=1"), str(out), only="render")
    assert not stage_complete(out, "render") and done_records(out, "render") == {}
    monkeypatch.delenv("EDITGEN_FAULT_RENDER_ERROR")
    assert run_pipeline(config(), str(out), only="render").stages[0].computed == PARTITIONS
    for pid in range(PARTITIONS):
        name = f"render/part-{pid:05d}.parquet"
        assert out.joinpath(name).read_bytes() == baseline.joinpath(name).read_bytes(), name


# ---- files truncated or altered on disk ---------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _alter(path: Path) -> None:
    """Same size, different bytes: only the checksum can tell."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_files_are_detected_and_recomputed(baseline, ray_session, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(baseline, out)
    _truncate(out / "render" / "part-00001.parquet")
    _alter(out / "filter" / "part-00002.parquet")
    _truncate(shard_path(out, 0))
    result = {s.name: s for s in run_pipeline(config(), str(out)).stages}
    assert [result[s].computed for s in STAGES] == [0, 0, 1, 1, 1]
    # the recomputed render partition is identical, so filter partition 1 (its consumer) stays valid
    assert_same_outputs(out, baseline)
    # a shard altered in place (same size) and, separately, the manifest: the checksums tell
    for victim in (shard_path(out, 1), out / "manifest.json"):
        _alter(victim)
        shard = run_pipeline(config(), str(out), only="shard").stages[0]
        assert shard.computed == 1, victim
        assert_same_outputs(out, baseline)
    assert_nothing_corrupt(out)


@pytest.mark.slow
def test_resume_reads_metadata_and_full_verification_runs_on_workers(baseline, ray_session, tmp_path):
    """A copied OUT (new mtimes, same bytes) recomputes nothing and is hashed once, not on every resume;
    a same-size edit that keeps the mtime passes the metadata check and is caught by
    run.verify_checksums=full, which hashes on Ray workers."""
    out = tmp_path / "copy"
    shutil.copytree(baseline, out, copy_function=shutil.copy)  # no mtimes kept
    assert [s.computed for s in run_pipeline(config(), str(out)).stages] == [0, 0, 0, 0, 0]
    rec = json.loads((out / "render" / "_done" / "part-00000.json").read_text())
    assert rec["mtime"] == (out / "render" / "part-00000.parquet").stat().st_mtime  # re-stamped
    victim = out / "instruct" / "part-00001.parquet"
    st = victim.stat()
    _alter(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_pipeline(config(), str(out), only="instruct").stages[0].computed == 0
    full = run_pipeline(config("run.verify_checksums=full"), str(out), only="instruct").stages[0]
    assert full.computed == 1
    assert victim.read_bytes() == (baseline / "instruct" / "part-00001.parquet").read_bytes()


# ---- output not writable, disk full ---------------------------------------------------------------------
def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only or size-limited output directory")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"`mount {' '.join(args)}` is not permitted here: {proc.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` made read-only by a read-only bind mount onto itself (chmod means nothing to root)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(path), str(path))
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


def test_unwritable_output_fails_before_any_work(tmp_path):
    with read_only(tmp_path / "ro") as ro:
        proc = run_cli(cli(ro / "out"))
        assert proc.returncode == 2
        line = error_line(proc)
        assert f"{ro / 'out'}: output location is not writable" in line
        assert list(ro.iterdir()) == []


@pytest.mark.slow
def test_read_only_stage_dir_fails_in_worker_cleanly_then_resumes(baseline, ray_address, tmp_path):
    """OUT/filter/_done read-only: the error is raised inside a Ray worker (a RayTaskError on the
    driver) and must still come out as one line, exit 2; so must a --from that cannot remove it."""
    out = tmp_path / "out"
    copy_upstream(baseline, out, ("ingest", "instruct", "render"))
    with read_only(out / "filter" / "_done"):
        proc = run_cli(cli(out, ray_address=ray_address))
        assert proc.returncode == 2
        line = error_line(proc)
        assert f"{out}/filter/_done/part-0000" in line and "not writable (Read-only file system)" in line
        assert_nothing_corrupt(out)
        assert not stage_complete(out, "filter")
        proc = run_cli(cli(out, ray_address=ray_address, args=("--from", "filter")))
        assert proc.returncode == 2
        assert "filter/_done" in error_line(proc)
    proc = run_cli(cli(out, ray_address=ray_address))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(out, baseline)
    assert_nothing_corrupt(out)


@pytest.mark.slow
def test_disk_full_fails_cleanly_then_resumes(baseline, ray_address, tmp_path):
    """A 4 MiB tmpfs filled up to 48 KiB once render is done: no filter partition (~130 KB) fits. One
    line, exit 2, no partial file or record; after freeing space the rerun completes."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        copy_upstream(baseline, out, ("ingest", "instruct", "render"))
        st = os.statvfs(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 48 * 1024))
        proc = run_cli(cli(out, ray_address=ray_address))
        assert proc.returncode == 2
        line = error_line(proc)
        assert "no space left on device while writing output" in line and f"{out}/filter/part-0000" in line
        assert_nothing_corrupt(out)
        assert not stage_complete(out, "filter") and not (out / "filter" / "_done").exists()
        filler.unlink()
        proc = run_cli(cli(out, ray_address=ray_address))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert_same_outputs(out, baseline)
        assert_nothing_corrupt(out)


# ---- an LLM server that fails (per-request behaviour: tests/llm/test_llm_openai.py) -----------------------
FAST_LLM = ["instruct.backend=openai", "instruct.model=served", "instruct.openai.timeout_s=0.5",
            "instruct.openai.max_retries=2", "instruct.openai.backoff_s=0.01", "instruct.openai.backoff_max_s=0.05",
            "instruct.openai.max_concurrency=4"]


@pytest.mark.parametrize("mode", ["500", "garbage", "hang", "refused", "flaky:6"])
def test_llm_server_faults_through_the_runner(mode, baseline, ray_session, tmp_path):
    """Through the real runner and Ray actors: every row is retried, then dropped with a reason; the stage
    finishes and `status` accounts for every row."""
    out = tmp_path / "out"
    copy_upstream(baseline, out, ("ingest",))
    with contextlib.ExitStack() as stack:
        if mode == "refused":
            url, srv = f"http://127.0.0.1:{free_port()}/v1", None  # nothing listens there
        else:
            srv = stack.enter_context(BadServer(mode, hang_s=1.5))
            url = srv.url
        result = run_pipeline(config(*FAST_LLM, f"instruct.openai.base_url={url}"), str(out), only="instruct")
    st = result.stages[0]
    rows_in = sum(json.loads(v)["rows_out"] for v in done_records(baseline, "instruct").values())
    assert st.partitions == PARTITIONS and st.rows_in == rows_in > 0
    assert st.rows_out + sum(st.dropped.values()) == rows_in
    rows = [r for p in sorted((out / "instruct").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == rows_in and all(r["status"] == "kept" or r["drop_reason"] for r in rows)
    if mode.startswith("flaky"):
        assert st.rows_out > 0  # the first 6 answers are 503s: retries get most rows through
        assert set(st.dropped) <= {"llm_request_failed"}
    else:
        assert st.rows_out == 0 and st.dropped == {"llm_request_failed": rows_in}
        assert all(r["attempts"] == 1 and r["llm_backend"] == "openai" for r in rows)
        if srv is not None:
            assert srv.hits == rows_in * 3  # 1 try + max_retries=2 per row
    status = next(s for s in collect(str(out))["stages"] if s["stage"] == "instruct")
    assert status["complete"] and status["rows_in"] == status["rows_out"] + status["rows_dropped"] == rows_in
