"""One driver per OUT: a lease object (OUT/_lease.json) that a run creates before writing anything.

Two drivers on one OUT would interleave partitions, shards and manifests of two configurations into one
dataset that still validates. So `editgen run` takes the lease first. The lease holds an owner token,
host, pid, start time, the holder's own TTL and heartbeat period, a heartbeat counter, and where the
holder runs (boot id, PID-namespace id, the process's start time). A background thread renews it every
`run.lease_heartbeat_s`. A second driver that finds a live holder stops at once (exit 2) naming it.

When may a lease be taken over? Only when its holder is provably gone:

- Same machine and PID namespace (the boot id from /proc/sys/kernel/random/boot_id and the PID-namespace
  id from /proc/self/ns/pid both equal ours; a hostname proves nothing, since containers with host
  networking share it): the holder's process is looked up directly. Gone, a zombie, or its pid reused
  by another process (start time in /proc/<pid>/stat differs) means stale at once.
- Otherwise (another host, another container, or an old lease without these fields) only by heartbeat,
  judged with the HOLDER's TTL (recorded in the lease; a reader's own, perhaps shorter, TTL is not
  used; old leases without one get the longer of the reader's and the default TTL). The heartbeat's age is
  measured on the store's clock alone: the lease's modification time against that of a probe object
  written just now, both stamped by the store. The holder's and the reader's clocks never enter, so clock
  skew between hosts can neither let a live lease be stolen nor keep a dead one forever. Store mtimes
  have 1 s resolution, so a lease is stale only past TTL + 1 s. On a store without modification times,
  a lease that looks fresh by the reader's clock is held; one that looks old is watched for the TTL on
  the reader's monotonic clock and taken only if it did not change meanwhile.

The TTL must be at least 3 heartbeats (run.lease_ttl_s, validated in pipeline.settings.run). A holder
that could not renew for its own TTL stops at its next `check()`: by then another run may have taken
over.

What each store guarantees for the lease's writes:

- Local disks (and NFS with working locks): created by a hard link (fails if it exists); every change to
  an existing lease (renew, takeover, release) is a compare-and-swap under an exclusive flock on
  OUT/_lease.lock (kept; it is empty). Exact.
- S3 APIs: created by a conditional PUT (If-None-Match: *); renewed and taken over by a conditional PUT
  (If-Match: the ETag read), so a renewal never overwrites a takeover and a takeover never overwrites a
  renewal. A PUT that reached the store but whose answer was lost is retried; the retry then finds a lease
  with our own token, and that means we hold it. Release reads, then deletes; a takeover can only race it
  if our heartbeat had already stalled past the TTL.
- Other fsspec stores: check, write, read back. Two racing writers may both think they hold the lease
  until the loser's next heartbeat reads the winner's token (at most one heartbeat later).

Read-only commands (status, validate, preview, shards, export-hf) never need it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from editgen.pipeline.errors import OutputError, StageFailed, UserError
from editgen.pipeline.settings.run import LEASE_TTL_DEFAULT_S, LEASE_TTL_MIN_HEARTBEATS
from editgen.pipeline.storage import TMP_MARK, Storage

log = logging.getLogger("editgen")

LEASE_FILE = "_lease.json"
LOCK_FILE = "_lease.lock"
#: Store modification times are whole seconds on S3: a lease is stale only past its TTL plus this.
MTIME_SLACK_S = 1.0
#: How long a local lease change waits for the lock file before giving up (changes take milliseconds).
LOCK_WAIT_S = 5.0


# ---- where a process runs: enough to look its pid up only where that pid means the same process ----
def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def boot_id() -> str | None:
    """This kernel's boot (random per boot, shared by all containers on the machine; Linux only)."""
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str | None:
    """This process's PID namespace ("pid:[4026531836]"): unique on one boot of one machine. None when
    /proc is not this namespace's (a host /proc in a container): its pids would name other processes."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a pid in our namespace, None when there is none.
    The start time tells a reused pid from the process that held it."""
    line = _read_first_line(f"/proc/{pid}/stat")
    if line is None:
        return None
    fields = line.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


# ---- the lease record ----
def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _of(value: object, kind: type) -> object:
    """`value` if it has the type a field needs (not a bool posing as an int), else None."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


@dataclass
class LeaseInfo:
    owner: str
    host: str
    pid: int
    started: float
    heartbeat: float
    command: str = "editgen run"
    ttl_s: float | None = None
    heartbeat_s: float | None = None
    beat: int = 0
    boot_id: str | None = None
    pid_ns: str | None = None
    proc_start: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> LeaseInfo | None:
        """The lease in `data`; None when it is not one (half-written by a best-effort store, damaged).
        Fields added later are optional, and a wrong-typed one counts as absent."""
        try:
            raw = json.loads(data)
            base = {k: raw[k] for k in ("owner", "host", "pid", "started", "heartbeat")}
            info = cls(**base, command=str(raw.get("command", "editgen run")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        info.ttl_s, info.heartbeat_s = _positive(raw.get("ttl_s")), _positive(raw.get("heartbeat_s"))
        info.beat = _of(raw.get("beat"), int) or 0  # type: ignore[assignment]
        info.boot_id, info.pid_ns = _of(raw.get("boot_id"), str), _of(raw.get("pid_ns"), str)  # type: ignore[assignment]
        info.proc_start = _of(raw.get("proc_start"), int)  # type: ignore[assignment]
        return info

    def ttl(self, fallback_s: float) -> float:
        """The holder's TTL governs; an old lease without one gets the longer of ours and the default."""
        return self.ttl_s or max(fallback_s, LEASE_TTL_DEFAULT_S)

    def same_namespace(self) -> bool:
        """True only when this lease's pid provably names a process we can look up: same boot of the
        same machine and same PID namespace."""
        return bool(self.boot_id and self.pid_ns and self.proc_start is not None
                    and self.boot_id == boot_id() and self.pid_ns == pid_namespace())

    def describe(self, age_s: float | None = None) -> str:
        age = time.time() - self.heartbeat if age_s is None else age_s
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"{self.host} pid {self.pid} (since {started}, heartbeat {age:.0f}s ago)"


class LeaseHeld(UserError):
    """Another live driver holds OUT's lease."""


def _read_raw(storage: Storage) -> bytes:
    """The lease's bytes. An S3 read checks the ETag it started with, so a renewal landing mid-read fails
    it (s3fs FileExpired, an OSError): read again."""
    for _ in range(3):
        try:
            return storage.read_bytes(LEASE_FILE)
        except FileNotFoundError:
            raise
        except OSError:
            time.sleep(0.05)
    return storage.read_bytes(LEASE_FILE)


def read_lease(storage: Storage) -> LeaseInfo | None:
    """The current lease, or None when there is none or it is unreadable."""
    try:
        return LeaseInfo.parse(_read_raw(storage))
    except FileNotFoundError:
        return None


def process_gone(info: LeaseInfo) -> str | None:
    """Why the holder's process provably no longer runs (None: it runs, or we cannot tell from here)."""
    if not info.same_namespace():
        return None
    seen = process_start(info.pid)
    if seen is None:
        return f"its process {info.pid} on {info.host} is gone"
    if seen[0] in ("Z", "X"):
        return f"its process {info.pid} on {info.host} has exited"
    if seen[1] != info.proc_start:
        return f"its process {info.pid} on {info.host} is gone (the pid now belongs to another process)"
    return None


def stale_reason(info: LeaseInfo, ttl_s: float = LEASE_TTL_DEFAULT_S, now: float | None = None) -> str | None:
    """A hint for `editgen status` (which writes nothing, so cannot read the store's clock): the holder
    process is gone, or its heartbeat timestamp is older than its TTL by this machine's clock."""
    gone = process_gone(info)
    if gone:
        return gone
    age, ttl = (now or time.time()) - info.heartbeat, info.ttl(ttl_s)
    return f"its heartbeat is {age:.0f}s old (lease TTL {ttl:g}s)" if age > ttl + MTIME_SLACK_S else None


# ---- one look at the lease on the store ----
@dataclass
class Seen:
    """The lease as read once: its bytes (for compare-and-swap), ETag, and mtime on the store's clock."""

    raw: bytes
    info: LeaseInfo | None
    etag: str | None
    mtime: float | None
    age_s: float | None = field(default=None)

    def who(self) -> str:
        return self.info.describe(self.age_s) if self.info else "an unreadable lease"


def observe(storage: Storage) -> Seen | None:
    """Read the lease, or None if there is none. Object stores: ETag first, then bytes, so the bytes are
    never older than the ETag (a swap conditional on that ETag fails if they differ). Local disks: bytes
    first, then mtime, so the mtime is never older than the bytes (the swap compares bytes)."""
    try:
        if storage.local:
            raw = _read_raw(storage)
            meta = storage.info(LEASE_FILE)
        else:
            meta = storage.info(LEASE_FILE)
            raw = _read_raw(storage)
    except FileNotFoundError:
        return None
    return Seen(raw, LeaseInfo.parse(raw), meta.etag, meta.mtime)


def store_now(storage: Storage) -> float | None:
    """The store's clock now: the mtime it stamps on a probe object we write and remove."""
    probe = f"{TMP_MARK}clock-{uuid.uuid4().hex}"
    storage.write_bytes(b"", probe)
    try:
        return storage.info(probe).mtime
    finally:
        storage.remove(probe)


def _unchanged_for(storage: Storage, seen: Seen, ttl_s: float) -> bool:
    """Watch the lease for `ttl_s` of our monotonic clock: True if nobody renewed, replaced or removed it."""
    log.warning("lease: %s looks stale, but %s keeps no modification times: watching it for %gs",
                seen.who(), storage.root, ttl_s)
    deadline = time.monotonic() + ttl_s + MTIME_SLACK_S
    while time.monotonic() < deadline:
        time.sleep(min(1.0, ttl_s / 10))
        now = observe(storage)
        if now is None or now.raw != seen.raw:
            return False
    return True


def verdict(storage: Storage, seen: Seen, fallback_ttl_s: float) -> str | None:
    """Why the lease in `seen` no longer protects a live run (None: it does). Sets seen.age_s."""
    if seen.info is not None:
        gone = process_gone(seen.info)
        if gone:
            return gone
    ttl = seen.info.ttl(fallback_ttl_s) if seen.info else max(fallback_ttl_s, LEASE_TTL_DEFAULT_S)
    now = store_now(storage) if seen.mtime is not None else None
    if now is not None and seen.mtime is not None:
        seen.age_s = max(0.0, now - seen.mtime)
        if seen.age_s > ttl + MTIME_SLACK_S:
            return f"it was last renewed {seen.age_s:.0f}s ago by the store's clock (its TTL is {ttl:g}s)"
        return None
    if seen.info is not None and time.time() - seen.info.heartbeat <= ttl:
        return None  # looks fresh even by our clock: held (the safe way to be wrong)
    if _unchanged_for(storage, seen, ttl):
        return f"it did not change for {ttl:g}s (its TTL) while we watched"
    return None


@contextmanager
def local_lock(storage: Storage) -> Iterator[None]:
    """Serialise changes to a local lease (flock on OUT/_lease.lock; NFS maps it to a POSIX lock). Object
    stores need none: they compare-and-swap by ETag."""
    storage.makedirs()
    fd = os.open(storage.path(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LeaseHeld(f"{storage.url(LOCK_FILE)}: the lease is locked by another process for "
                                    f"over {LOCK_WAIT_S:g}s; try again") from None
                time.sleep(0.01)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                log.warning("lease: %s cannot lock files (%s): lease changes are best effort", storage.root, exc)
                break
        yield
    finally:
        os.close(fd)  # releases the lock


def swap_local(storage: Storage, expected: bytes, payload: bytes | None) -> bool:
    """Local compare-and-swap: put `payload` (None: remove) in place of the lease only if it still holds
    exactly `expected`. The new file is written and synced first, so the lock is held only to re-read and
    rename: a driver frozen (SIGSTOP) inside that window, which would block takeovers, is improbable."""
    final = storage.path(LEASE_FILE)
    tmp = posixpath.join(posixpath.dirname(final), f"{TMP_MARK}{uuid.uuid4().hex}-{LEASE_FILE}")
    try:
        if payload is not None:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        with local_lock(storage):
            try:
                with open(final, "rb") as f:
                    if f.read() != expected:
                        return False
            except FileNotFoundError:
                return False
            if payload is None:
                os.unlink(final)
            else:
                os.replace(tmp, final)
            return True
    except OSError as exc:
        raise OutputError(f"{final}: cannot write the lease ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Lease:
    """Held by one `editgen run` for its whole life; `check()` raises once it is lost."""

    def __init__(self, storage: Storage, ttl_s: float = LEASE_TTL_DEFAULT_S, heartbeat_s: float = 10.0) -> None:
        if ttl_s < LEASE_TTL_MIN_HEARTBEATS * heartbeat_s * (1 - 1e-9):
            raise ValueError(f"lease TTL {ttl_s:g}s is under {LEASE_TTL_MIN_HEARTBEATS} heartbeats of {heartbeat_s:g}s")
        self.storage, self.ttl_s, self.heartbeat_s = storage, ttl_s, heartbeat_s
        now, pid = time.time(), os.getpid()
        start = process_start(pid)
        self.info = LeaseInfo(uuid.uuid4().hex, socket.gethostname(), pid, now, now, ttl_s=ttl_s,
                              heartbeat_s=heartbeat_s, boot_id=boot_id(), pid_ns=pid_namespace(),
                              proc_start=start[1] if start else None)
        self.lost: str | None = None
        self.taken_over: str | None = None
        self._renewed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.info), sort_keys=True, indent=1).encode()

    def _ours(self) -> bool:
        """Whether the lease on the store now carries our token: the test after any write whose answer
        may have been lost (the write reached the store, the retry then found the result)."""
        info = read_lease(self.storage)
        return info is not None and info.owner == self.info.owner

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming the live holder."""
        for _ in range(5):
            if self._create():
                return self._held()
            seen = observe(self.storage)
            if seen is None:
                continue  # released between our write and our read: try again
            if seen.info is not None and seen.info.owner == self.info.owner:
                return self._held()  # our own create, whose answer was lost
            why = verdict(self.storage, seen, self.ttl_s)
            if why is None:
                raise LeaseHeld(
                    f"{self.storage.url(LEASE_FILE)}: another editgen run holds this output: "
                    f"{seen.who()}; wait for it, or remove the lease if that run is really gone"
                )
            if self._swap(seen):
                holder = f"{seen.info.host} pid {seen.info.pid}" if seen.info else "an unreadable lease"
                self.taken_over = f"took over a stale lease of {holder}: {why}"
                log.warning("lease: %s", self.taken_over)
                return self._held()
        raise LeaseHeld(f"{self.storage.url(LEASE_FILE)}: could not take the lease (another run keeps taking it)")

    def _create(self) -> bool:
        try:
            return self.storage.create_exclusive(self._payload(), LEASE_FILE)
        except OutputError:
            if self._ours():
                return True
            raise

    def _swap(self, seen: Seen) -> bool:
        """Write our lease over the one in `seen` if the store still holds exactly that one (a takeover of a
        stale lease, a renewal of ours): True if ours is there now."""
        payload = self._payload()
        if self.storage.local:
            return swap_local(self.storage, seen.raw, payload)
        try:
            if seen.etag:
                done = self.storage.replace_if_match(payload, seen.etag, LEASE_FILE)
                if done is not None:
                    return done or self._ours()  # a retry refused after our own write landed finds ours
            self.storage.write_bytes(payload, LEASE_FILE)
        except OutputError:
            if self._ours():
                return True
            raise
        return self._ours()

    def _held(self) -> None:
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="editgen-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and not self.lost:
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a flaky store must not kill the run; the TTL covers it
                log.warning("lease heartbeat failed (%s); retrying", exc)

    def _renew(self) -> None:
        """Bump the heartbeat if the lease is still ours, as a compare-and-swap against a takeover."""
        seen = observe(self.storage)
        if seen is None or seen.info is None or seen.info.owner != self.info.owner:
            return self._lose(seen)
        self.info.beat += 1
        self.info.heartbeat = time.time()
        if not self._swap(seen):
            return self._lose(observe(self.storage))
        self._renewed = time.monotonic()

    def _lose(self, holder: Seen | None) -> None:
        self.lost = f"the lease on {self.storage.root} is now held by {holder.who() if holder else 'nobody (removed)'}"
        log.error("lease lost: %s", self.lost)

    def check(self) -> None:
        """Raise if another driver took the lease, or may have (we could not renew it for its TTL):
        writing on would mix two runs' output."""
        late = time.monotonic() - self._renewed
        if not self.lost and self._thread is not None and late > self.ttl_s:
            self.lost = (f"this run could not renew its lease on {self.storage.root} for {late:.0f}s (its TTL is "
                         f"{self.ttl_s:g}s), so another run may have taken it over")
        if self.lost:
            raise StageFailed(f"stopping: {self.lost}; rerun once that run is finished")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            seen = observe(self.storage)
            if seen is not None and seen.info is not None and seen.info.owner == self.info.owner:
                if self.storage.local:
                    swap_local(self.storage, seen.raw, None)
                else:
                    self.storage.remove(LEASE_FILE)
        except Exception as exc:  # noqa: BLE001 - never mask the run's own result; expiry covers it
            log.warning("lease: could not release (%s); it expires after %gs", exc, self.ttl_s)
