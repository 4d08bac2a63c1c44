"""One driver per OUT: a lease object (OUT/_lease.json) that a run creates before writing anything.

Two drivers on one OUT would interleave partitions, shards and manifests of two configurations into one
dataset that still validates. So `editgen run` takes the lease first:

- created with an exclusive write (hard link locally; a conditional PUT, If-None-Match: *, on S3; a
  check-write-read-back best effort on stores without conditional writes);
- holds owner token, host, pid, start time and a heartbeat that a background thread renews every
  `run.lease_heartbeat_s` seconds;
- a second driver finds it held and stops with one line naming the holder (exit 2);
- a lease whose holder is dead (same host, pid gone) or whose heartbeat is older than
  `run.lease_ttl_s` is stale: the next run removes it, takes a fresh one and says so;
- the heartbeat re-reads the lease before renewing; if another driver took it over (our heartbeat
  stalled past the TTL), this run stops at its next check instead of writing on.

Read-only commands (status, validate, preview, export-hf) never need it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline.errors import StageFailed, UserError
from pipeline.storage import Storage

log = logging.getLogger("editgen")

LEASE_FILE = "_lease.json"


@dataclass
class LeaseInfo:
    owner: str
    host: str
    pid: int
    started: float
    heartbeat: float
    command: str = "editgen run"

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"{self.host} pid {self.pid} (since {started}, heartbeat {age:.0f}s ago)"


class LeaseHeld(UserError):
    """Another live driver holds OUT's lease."""


def read_lease(storage: Storage) -> LeaseInfo | None:
    """The current lease, or None when there is none (or it is unreadable, i.e. half-written by a
    best-effort store: treated as absent, the heartbeat expiry covers the rest)."""
    try:
        raw = json.loads(storage.read_text(LEASE_FILE))
        return LeaseInfo(**{k: raw[k] for k in ("owner", "host", "pid", "started", "heartbeat")},
                         command=raw.get("command", "editgen run"))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(info: LeaseInfo, ttl_s: float, now: float | None = None) -> str | None:
    """Why a lease no longer protects a live run (None: it does)."""
    now = now or time.time()
    if info.host == socket.gethostname() and not _pid_alive(info.pid):
        return f"its process {info.pid} on {info.host} is gone"
    if now - info.heartbeat > ttl_s:
        return f"its heartbeat is {now - info.heartbeat:.0f}s old (lease TTL {ttl_s:g}s)"
    return None


class Lease:
    """Held by one `editgen run` for its whole life; `check()` raises once it is lost."""

    def __init__(self, storage: Storage, ttl_s: float = 120.0, heartbeat_s: float = 10.0) -> None:
        self.storage, self.ttl_s, self.heartbeat_s = storage, ttl_s, heartbeat_s
        now = time.time()
        self.info = LeaseInfo(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)
        self.lost: str | None = None
        self.taken_over: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.info), sort_keys=True, indent=1).encode()

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming the live holder."""
        for _ in range(3):
            if self.storage.create_exclusive(self._payload(), LEASE_FILE):
                self._start_heartbeat()
                return
            holder = read_lease(self.storage)
            if holder is None:
                continue  # released (or unreadable) between our write and our read: try again
            why = stale_reason(holder, self.ttl_s)
            if why is None:
                raise LeaseHeld(
                    f"{self.storage.url(LEASE_FILE)}: another editgen run holds this output: "
                    f"{holder.describe()}; wait for it, or remove the lease if that run is really gone"
                )
            self.taken_over = f"took over a stale lease of {holder.host} pid {holder.pid}: {why}"
            log.warning("lease: %s", self.taken_over)
            self.storage.remove(LEASE_FILE)
        raise LeaseHeld(f"{self.storage.url(LEASE_FILE)}: could not take the lease (another run keeps taking it)")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="editgen-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = read_lease(self.storage)
                if current is None or current.owner != self.info.owner:
                    who = current.describe() if current else "nobody (removed)"
                    self.lost = f"the lease on {self.storage.root} is now held by {who}"
                    log.error("lease lost: %s", self.lost)
                    return
                self.info.heartbeat = time.time()
                self.storage.write_bytes(self._payload(), LEASE_FILE)
            except Exception as exc:  # noqa: BLE001 - a flaky store must not kill the run; expiry covers it
                log.warning("lease heartbeat failed (%s); retrying", exc)

    def check(self) -> None:
        """Raise if another driver took the lease: writing on would mix two runs' output."""
        if self.lost:
            raise StageFailed(f"stopping: {self.lost}; rerun once that run is finished")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            current = read_lease(self.storage)
            if current is not None and current.owner == self.info.owner:
                self.storage.remove(LEASE_FILE)
        except Exception as exc:  # noqa: BLE001 - never mask the run's own result; expiry covers it
            log.warning("lease: could not release (%s); it expires after %gs", exc, self.ttl_s)
