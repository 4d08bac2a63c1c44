"""OUT's lease (pipeline/lease.py) on a local disk and on a real S3 API (moto): a live lease is never
taken, whatever the second driver's TTL, hostname or clock; a dead one is taken at once where its process
is provably ours to look up, else after the HOLDER's TTL; writes whose answer is lost do not fool the
writer; renewals and takeovers are compare-and-swaps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from editgen.pipeline.lease import (
    LEASE_FILE,
    Lease,
    LeaseHeld,
    boot_id,
    local_lock,
    observe,
    pid_namespace,
    process_start,
    read_lease,
)
from editgen.pipeline.storage import Storage
from tests.s3_server import S3Server, moto_server
from tests.support import ROOT, cli_env

#: A holder in its own process: takes the lease, says so, then checks it until it is lost (exit 3).
HOLDER = """
import sys, time
from editgen.pipeline.lease import Lease
from editgen.pipeline.storage import Storage
lease = Lease(Storage(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
lease.acquire()
print("held", lease.info.owner, flush=True)
while True:
    try:
        lease.check()
    except Exception as exc:
        print("lost:", exc, flush=True)
        sys.exit(3)
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    pytest.importorskip("s3fs")
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path) -> str:
    """OUT on a local disk or in a fresh bucket of the moto server (reached through AWS_* variables)."""
    if request.param == "local":
        return str(tmp_path / "out")
    server: S3Server = request.getfixturevalue("s3")
    mp = request.getfixturevalue("monkeypatch")
    for key, value in server.env.items():
        mp.setenv(key, value)
    return f"s3://{server.new_bucket('lease')}/out"


def storage(url: str) -> Storage:
    """A Storage with its own filesystem object, as a second driver process would have."""
    return Storage(url, {"skip_instance_cache": True} if url.startswith("s3://") else {})


def start_holder(url: str, ttl_s: float, heartbeat_s: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(ttl_s), str(heartbeat_s)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("held"), proc.stderr.read()
    return proc


def take_within(url: str, seconds: float, ttl_s: float = 60.0) -> tuple[Lease, float]:
    """A second driver (its own TTL `ttl_s`) retrying until it gets the lease: (lease, seconds it took)."""
    t0 = time.monotonic()
    while True:
        lease = Lease(storage(url), ttl_s, ttl_s / 6)
        try:
            lease.acquire()
            return lease, time.monotonic() - t0
        except LeaseHeld:
            assert time.monotonic() - t0 < seconds, "the lease was never taken"
            time.sleep(0.2)


def write_lease(url: str, **fields: object) -> dict[str, object]:
    """A lease as another driver would have written it: our hostname, fresh timestamps, then `fields`."""
    now = time.time()
    lease = {"owner": "someone-else", "host": socket.gethostname(), "pid": 1, "started": now, "heartbeat": now,
             "command": "editgen run", **fields}
    storage(url).write_bytes(json.dumps(lease).encode(), LEASE_FILE)
    return lease


def dead_pid() -> tuple[int, int]:
    """(pid, start time) of a real process of ours that has exited and been reaped."""
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start(proc.pid)
    proc.kill()
    proc.wait()
    assert start is not None
    return proc.pid, start[1]


def test_short_ttl_driver_cannot_take_a_live_lease(out):
    """The reported theft: a second driver started with a short TTL judged a healthy holder's
    heartbeat (a second old) by ITS TTL and took the lease. The holder's recorded TTL governs."""
    holder = Lease(storage(out), 30.0, 3.0)
    holder.acquire()
    try:
        time.sleep(2.5)  # the heartbeat is now older than the intruder's TTL (plus the 1 s mtime slack)
        intruder = Lease(storage(out), 0.3, 0.1)
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"another editgen run holds this output: .* pid {os.getpid()} "):
            intruder.acquire()
        assert time.monotonic() - t0 < 10, "a live holder is reported at once, not after its 30 s TTL"
        assert read_lease(storage(out)).owner == holder.info.owner
        holder.check()
    finally:
        holder.release()
    assert read_lease(storage(out)) is None


def test_stalled_holder_is_taken_after_its_own_ttl_and_then_stops(out):
    """A holder whose heartbeat stops (SIGSTOP: alive, silent) keeps its lease for ITS TTL, not the
    reader's (60 s here), is taken over after it, and stops itself when it resumes."""
    proc = start_holder(out, 2.0, 0.5)
    try:
        with pytest.raises(LeaseHeld, match=f"pid {proc.pid} "):
            Lease(storage(out), 60.0, 10.0).acquire()
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        lease, _ = take_within(out, 30)
        waited = time.monotonic() - stopped
        assert 2.0 <= waited < 20, waited
        assert "took over a stale lease" in lease.taken_over and "its TTL is 2s" in lease.taken_over
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(15) == 3
        assert "lost:" in proc.stdout.read()
        lease.check()
        assert read_lease(storage(out)).owner == lease.info.owner
        lease.release()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_config_refuses_a_ttl_under_three_heartbeats(tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("a red car on a road\n")
    proc = subprocess.run(
        [sys.executable, "-m", "editgen.cli.main", "run", "--only", "ingest", "--input", str(caps), "--out",
         str(tmp_path / "out"), "-q", "--set", "run.lease_ttl_s=29", "--set", "run.lease_heartbeat_s=10"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "run.lease_ttl_s: must be at least 3x run.lease_heartbeat_s (30s)" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["other_pid_namespace", "other_boot", "old_lease"])
def test_dead_pid_elsewhere_is_judged_by_heartbeat(tmp_path, where):
    """Containers sharing the host's hostname (host networking) but not its PID namespace: the holder's
    pid means nothing here, so a fresh heartbeat keeps the lease however dead that pid looks to us."""
    out = str(tmp_path / "out")
    pid, start = dead_pid()
    fields: dict[str, object] = {"pid": pid, "ttl_s": 2.0, "heartbeat_s": 0.5, "proc_start": start,
                                 "boot_id": boot_id(), "pid_ns": pid_namespace()}
    if where == "other_pid_namespace":
        fields["pid_ns"] = "pid:[4026599999]"
    elif where == "other_boot":
        fields["boot_id"] = "00000000-0000-0000-0000-000000000000"
    else:
        fields = {"pid": pid}  # written before leases said where they ran: heartbeat only, default TTL
    write_lease(out, **fields)
    with pytest.raises(LeaseHeld, match=f"pid {pid} "):
        Lease(storage(out), 30.0, 10.0).acquire()
    if where != "old_lease":
        lease, _ = take_within(out, 20)
        assert "by the store's clock (its TTL is 2s)" in lease.taken_over
        lease.release()


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_dead_holder_in_our_namespace_is_taken_at_once(tmp_path, reaped):
    """Same machine, same PID namespace: a holder that died (even one not yet reaped) is looked up
    directly and its lease taken at once, long before its 60 s TTL."""
    out = str(tmp_path / "out")
    proc = start_holder(out, 60.0, 10.0)
    with pytest.raises(LeaseHeld, match=f"pid {proc.pid} "):
        Lease(storage(out), 60.0, 10.0).acquire()
    proc.kill()
    if reaped:
        proc.wait()
    else:
        deadline = time.monotonic() + 10
        while (process_start(proc.pid) or ("?",))[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    try:
        lease, took = take_within(out, 10)
        assert took < 10 and f"its process {proc.pid} on {socket.gethostname()}" in lease.taken_over
        lease.release()
    finally:
        proc.wait()


def test_reused_pid_is_not_the_holder(tmp_path):
    """A live process whose start time differs from the one recorded has only inherited the pid."""
    out = str(tmp_path / "out")
    me = process_start(os.getpid())
    write_lease(out, pid=os.getpid(), ttl_s=60.0, heartbeat_s=10.0, boot_id=boot_id(), pid_ns=pid_namespace(),
                proc_start=me[1] - 1)
    lease, took = take_within(out, 10)
    assert took < 10 and "the pid now belongs to another process" in lease.taken_over
    lease.release()


def test_clock_skew_neither_steals_nor_blocks(out):
    """Ages are read on the store's clock: a holder whose clock is an hour behind still holds its freshly
    renewed lease; one whose clock is an hour ahead loses its unrenewed lease after its TTL."""
    pid, start = dead_pid()
    hour = 3600.0
    write_lease(out, pid=pid, heartbeat=time.time() - hour, ttl_s=30.0, heartbeat_s=0.5, boot_id="other-host")
    with pytest.raises(LeaseHeld, match=r"heartbeat \d{1,2}s ago"):
        Lease(storage(out), 30.0, 10.0).acquire()
    write_lease(out, pid=pid, heartbeat=time.time() + hour, ttl_s=1.5, heartbeat_s=0.5, boot_id="other-host")
    lease, took = take_within(out, 20)
    assert took >= 1.5 and "by the store's clock" in lease.taken_over
    lease.release()


def test_store_without_mtimes_watches_for_the_holders_ttl():
    """memory:// keeps no modification times: a lease that looks old by our clock (the holder's clock is
    behind) is watched for its TTL; renewed meanwhile, it is held; left alone, it is taken."""
    url = f"memory://lease-{os.getpid()}-{time.monotonic_ns()}/out"
    stop = threading.Event()

    def skewed_holder() -> None:
        beat = 0
        while not stop.wait(0.3):
            beat += 1
            write_lease(url, ttl_s=1.5, heartbeat_s=0.5, beat=beat, heartbeat=time.time() - 3600, boot_id="x")

    write_lease(url, ttl_s=1.5, heartbeat_s=0.5, heartbeat=time.time() - 3600, boot_id="x")
    thread = threading.Thread(target=skewed_holder)
    thread.start()
    try:
        with pytest.raises(LeaseHeld):
            Lease(storage(url), 30.0, 10.0).acquire()
    finally:
        stop.set()
        thread.join()
    lease = Lease(storage(url), 30.0, 10.0)
    lease.acquire()  # unchanged for the TTL while it watched
    assert "did not change for 1.5s" in lease.taken_over
    lease.release()


def test_unreadable_lease_is_held_for_the_default_ttl(tmp_path):
    out = str(tmp_path / "out")
    storage(out).write_bytes(b"{not json", LEASE_FILE)
    with pytest.raises(LeaseHeld, match="an unreadable lease"):
        Lease(storage(out), 3.0, 1.0).acquire()


# ---- compare-and-swap: renewals and takeovers never overwrite each other ----
def test_takeover_never_overwrites_a_renewal(out):
    """A driver judged the lease stale, then the holder renewed: the takeover must fail."""
    holder = Lease(storage(out), 30.0, 10.0)
    holder.acquire()
    judged = observe(storage(out))
    holder._renew()
    taker = Lease(storage(out), 30.0, 10.0)
    assert not taker._swap(judged)
    assert read_lease(storage(out)).owner == holder.info.owner
    holder.check()
    holder.release()


def test_renewal_never_overwrites_a_takeover_s3(s3, monkeypatch):
    """S3: the holder read its lease, a takeover replaced it, then the holder's renewal (If-Match on the
    ETag it read) must fail and the holder know it lost."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3.new_bucket('lease')}/out"
    holder = Lease(storage(url), 30.0, 10.0)
    holder.acquire()
    read_by_holder = observe(storage(url))
    taker = Lease(storage(url), 30.0, 10.0)
    assert taker._swap(read_by_holder)
    assert not holder._swap(read_by_holder)
    assert read_lease(storage(url)).owner == taker.info.owner
    holder._renew()
    assert holder.lost and "is now held by" in holder.lost
    with pytest.raises(Exception, match="stopping: the lease on .* is now held by"):
        holder.check()
    taker.release()


def test_renewal_never_overwrites_a_takeover_local(tmp_path):
    """Local disks: a takeover holds OUT/_lease.lock while it replaces the lease; the holder's renewal
    waits for it, then reads the new owner instead of writing over it."""
    out = str(tmp_path / "out")
    holder = Lease(storage(out), 30.0, 10.0)
    holder.acquire()
    taker = Lease(storage(out), 30.0, 10.0)
    locked, renewing = threading.Event(), threading.Event()

    def takeover() -> None:
        with local_lock(storage(out)):
            locked.set()
            renewing.wait(5)
            time.sleep(0.3)  # the renewal is now blocked on the lock
            storage(out).write_bytes(taker._payload(), LEASE_FILE)

    thread = threading.Thread(target=takeover)
    thread.start()
    locked.wait(5)
    renewing.set()
    holder._renew()
    thread.join()
    assert holder.lost and read_lease(storage(out)).owner == taker.info.owner


def test_holder_that_cannot_renew_for_its_ttl_stops(s3, monkeypatch):
    """The store refuses every renewal (connection reset before the PUT reaches it): after its TTL the
    holder stops at its next check, since another run may by then have taken the lease over."""
    from botocore.exceptions import EndpointConnectionError

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    store = storage(f"s3://{s3.new_bucket('lease')}/out")
    lease = Lease(store, 1.5, 0.5)
    lease.acquire()
    lease.check()

    async def unreachable(**kwargs):
        raise EndpointConnectionError(endpoint_url=s3.endpoint)

    monkeypatch.setattr(store.fs.s3, "put_object", unreachable)
    time.sleep(2.0)
    with pytest.raises(Exception, match=r"could not renew its lease on .* for \d+s \(its TTL is 1.5s\)"):
        lease.check()
    lease.release()


# ---- S3: a conditional PUT that reached the store but whose answer was lost ----
def lose_first_answer(store: Storage, condition: str, retried: bool, monkeypatch) -> list[str]:
    """Transport fault on the real client: the first put_object carrying `condition` reaches moto, then
    the connection drops before its answer. retried: as a connection error s3fs retries (the retry
    meets the object it wrote); else as an error that reaches the caller. Returns what was lost."""
    from botocore.exceptions import ConnectionClosedError

    store.exists(LEASE_FILE)  # opens the client
    client = store.fs.s3
    real, lost = client.put_object, []

    async def put_object(**kwargs):
        answer = await real(**kwargs)
        if condition in kwargs and not lost:
            lost.append(condition)
            if retried:
                raise ConnectionClosedError(endpoint_url=kwargs["Bucket"])
            raise ConnectionResetError(104, "Connection reset by peer")
        return answer

    monkeypatch.setattr(client, "put_object", put_object)
    return lost


@pytest.mark.parametrize("retried", [True, False], ids=["retried_by_s3fs", "error_to_caller"])
def test_lost_answer_of_the_lease_put_still_holds_the_lease(s3, monkeypatch, retried):
    """The reported failure: the retry found the run's own lease and exited 2 blaming 'another run ...
    pid <its own pid>'. Our token says it is ours; the run goes on holding and renewing it."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3.new_bucket('lease')}/out"
    store = storage(url)
    lost = lose_first_answer(store, "IfNoneMatch", retried, monkeypatch)
    lease = Lease(store, 6.0, 0.3)
    lease.acquire()
    assert lost == ["IfNoneMatch"] and lease.taken_over is None
    lost_renewal = lose_first_answer(store, "IfMatch", retried, monkeypatch)
    deadline = time.monotonic() + 20
    while (read_lease(storage(url)).beat < 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lost_renewal == ["IfMatch"], "a renewal's answer was lost too"
    lease.check()
    assert read_lease(storage(url)).owner == lease.info.owner and read_lease(storage(url)).beat >= 3
    assert lease.lost is None
    lease.release()
    assert read_lease(storage(url)) is None
