"""Progress deadlines for work in flight on the cluster. A worker that stops making progress (a stuck CUDA
call, a hung network-filesystem read: alive but silent, as a SIGSTOPped process is) would otherwise hold
its partition, and so the run, forever while the other workers idle.

Each unit of work in flight (a partition on an actor, a task) has a key and a clock. The clock starts
when the work starts (an actor's partition at dispatch, since only a ready, idle actor gets one; a task at
its first report, so a task queued for a CPU is not judged) and restarts on every report the work posts
on the ProgressBoard (pipeline.live_progress: rows done, once per batch). Work whose clock passes the
deadline is overdue: the executor kills its worker and retries it elsewhere. The driver judges only from
a board answer to a question asked after the deadline had passed, so a driver that was busy itself never
makes healthy work look wedged; a board that stops answering is replaced (and running work gets a fresh
clock, since its reports went to the old board).

The deadline (`Deadline`) is `resources.progress_timeout_s` when set, else max(`progress_floor_s`,
`progress_factor` x the longest wait between progress seen so far in this step): derived from the stage's
own batch, partition or task times in this run.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from editgen.pipeline.errors import StageFailed
from editgen.pipeline.live_progress import Beacon, ProgressBoard
from editgen.pipeline.settings.base import Resources

log = logging.getLogger("editgen")

#: How often the driver asks the board (seconds), and how long it waits for an answer before it takes the
#: board itself as wedged: the deadline it serves, within these bounds (a board still starting up, whose
#: process may take seconds to spawn on a busy node, gets run.worker_start_timeout_s instead).
POLL_S = 1.0
BOARD_TIMEOUT_S = (5.0, 30.0)


@dataclass
class Deadline:
    """How long work in flight may go without progress: fixed, or derived from the step's own waits."""

    fixed: float | None
    floor: float
    factor: float
    longest: float = 0.0  # the longest wait between progress seen so far (healthy work only)

    @classmethod
    def of(cls, res: Resources) -> Deadline:
        return cls(res.progress_timeout_s, res.progress_floor_s, res.progress_factor)

    def seconds(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return max(self.floor, self.factor * self.longest)

    def saw(self, wait: float) -> None:
        self.longest = max(self.longest, wait)


class BoardHolder:
    """The executor's progress board: one small actor for the whole run, replaced if it stops answering."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.board: Any = None
        self.answered = False  # has this board answered yet (it is up)?

    def get(self) -> Any:
        if self.board is None:
            from editgen.pipeline.ray_runtime import with_worker_env

            options = with_worker_env({"num_cpus": 0, "max_restarts": 0})
            self.board = self.ray.remote(ProgressBoard).options(**options).remote()
            self.answered = False
        return self.board

    def renew(self) -> Any:
        self.close()
        return self.get()

    def close(self) -> None:
        if self.board is not None:
            kill(self.ray, self.board)
            self.board = None


@dataclass
class _Clock:
    since: float  # when the clock last (re)started, time.monotonic()
    started: bool  # a task's clock starts at its first report
    seen: int  # the board's report count for this key when last looked at (counts only grow)


class Watch:
    """The clocks of one step's (or one task batch's) work in flight; see the module docstring."""

    def __init__(self, ray: Any, boards: BoardHolder, deadline: Deadline, start_timeout: float, label: str) -> None:
        self.ray, self.boards, self.deadline = ray, boards, deadline
        self.start_timeout, self.label = start_timeout, label
        self.beacon = Beacon(boards.get(), uuid.uuid4().hex[:12])
        self.clocks: dict[int, _Clock] = {}
        self.state: dict[int, tuple[float, int]] = {}  # the board's last answer: key -> (rows, reports)
        self.query: Any = None
        self.asked = float("-inf")
        self.confirmed = float("-inf")  # when the question of the newest answer was asked

    def begin(self, key: int, started: bool = True) -> None:
        self.clocks[key] = _Clock(time.monotonic(), started, self.state.get(key, (0.0, 0))[1])

    def end(self, key: int, ok: bool = True) -> None:
        """The work finished (ok: its last wait counts toward the deadline) or was given up."""
        clock = self.clocks.pop(key, None)
        if ok and clock is not None and clock.started:
            self.deadline.saw(time.monotonic() - clock.since)

    def drop(self, key: int) -> None:
        self.end(key, ok=False)
        self.beacon.clear(key)

    def rows(self) -> dict[int, float]:
        """Rows done inside each piece of work in flight, as last reported."""
        return {key: self.state.get(key, (0.0, 0))[0] for key in self.clocks}

    def poll(self) -> bool:
        """Ask the board once per POLL_S, never blocking; True when a new answer came in."""
        now = time.monotonic()
        if self.query is None:
            if now - self.asked >= POLL_S:
                self.query, self.asked = self.beacon.board.state.remote(self.beacon.group), now
            return False
        if not self.ray.wait([self.query], timeout=0)[0]:
            low, high = BOARD_TIMEOUT_S
            patience = max(low, min(high, self.deadline.seconds())) if self.boards.answered else self.start_timeout
            if now - self.asked > patience:
                self._renew(f"did not answer for {now - self.asked:.0f}s")
            return False
        try:
            state = self.ray.get(self.query)
        except Exception as exc:  # noqa: BLE001 - a dead board is replaced, never a reason to fail
            self._renew(f"failed ({type(exc).__name__})")
            return False
        self.query, self.boards.answered = None, True
        self._apply(state, self.asked)
        return True

    def _apply(self, state: dict[int, tuple[float, int]], asked: float) -> None:
        self.state, self.confirmed = state, asked
        for key, clock in self.clocks.items():
            reports = state.get(key, (0.0, 0))[1]
            if reports <= clock.seen or asked <= clock.since:
                continue
            if clock.started:
                self.deadline.saw(asked - clock.since)
            clock.seen, clock.started, clock.since = reports, True, asked

    def _renew(self, why: str) -> None:
        log.warning("%s: the progress board %s; replacing it (work in flight gets a fresh deadline)", self.label, why)
        self.beacon = Beacon(self.boards.renew(), self.beacon.group)
        self.query, self.state = None, {}
        now = time.monotonic()
        for clock in self.clocks.values():
            clock.since, clock.seen = now, 0

    def overdue(self) -> list[tuple[int, str]]:
        """(key, why) of the work whose clock ran out, judged from a board answer newer than the deadline."""
        limit, found = self.deadline.seconds(), []
        for key, clock in self.clocks.items():
            if clock.started and self.confirmed - clock.since > limit:
                found.append((key, f"made no progress for {limit:g}s"))
            elif not clock.started and self.confirmed - clock.since > self.start_timeout:
                found.append((key, f"did not start within {self.start_timeout:g}s"))
        return found

    def close(self) -> None:
        try:
            self.beacon.board.forget.remote(self.beacon.group)
        except Exception:  # noqa: BLE001 - best effort: the board goes with the run anyway
            pass


@dataclass
class TaskBatch:
    """Calls of one function as Ray tasks, each watched: at most `slots` in flight (so a task rarely waits
    for a CPU); an overdue one is cancelled with force (its worker process is killed, frozen or not) and
    submitted again, `max_retries` times, after which the stage fails naming it. `submit(key, attempt,
    beacon)` starts call `key`; the result refs come back unfetched, in call order."""

    ray: Any
    watch: Watch
    submit: Callable[[int, int, Beacon], Any]
    calls: int
    slots: int
    max_retries: int
    describe: Callable[[int], str]
    tick: Callable[[], None] = lambda: None
    on_ready: Callable[[int, Any], None] = lambda _key, _ref: None
    inflight: dict[Any, int] = field(default_factory=dict)

    def run(self) -> list[Any]:
        ray, pending = self.ray, deque(range(self.calls))
        attempts, done = [0] * self.calls, {}
        try:
            while pending or self.inflight:
                self.tick()
                while pending and len(self.inflight) < self.slots:
                    key = pending.popleft()
                    self.inflight[self.submit(key, attempts[key], self.watch.beacon)] = key
                    self.watch.begin(key, started=False)
                refs = list(self.inflight)
                if ray.wait(refs, num_returns=1, timeout=POLL_S, fetch_local=False)[0]:
                    for ref in ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0]:
                        key = self.inflight.pop(ref)
                        self.watch.end(key)
                        done[key] = ref
                        self.on_ready(key, ref)
                self.watch.poll()
                for key, why in self._give_up():
                    attempts[key] += 1
                    if attempts[key] > self.max_retries:
                        raise StageFailed(stalled_message(self.describe(key), attempts[key], why, self.watch.label))
                    log.warning("%s attempt %d %s: its task was cancelled; retrying", self.describe(key),
                                attempts[key], why)
                    pending.appendleft(key)
        except BaseException:
            for ref in self.inflight:
                cancel(ray, ref)
            raise
        finally:
            self.watch.close()
        return [done[key] for key in range(self.calls)]

    def _give_up(self) -> list[tuple[int, str]]:
        """Cancel the overdue tasks (not those that finished meanwhile): their keys and why."""
        given_up = []
        for key, why in self.watch.overdue():
            ref = next(r for r, k in self.inflight.items() if k == key)
            if self.ray.wait([ref], timeout=0, fetch_local=False)[0]:
                continue  # finished after all: collected next round
            cancel(self.ray, ref)
            del self.inflight[ref]
            self.watch.drop(key)
            given_up.append((key, why))
        return given_up


def stalled_message(what: str, attempts: int, why: str, stage: str) -> str:
    """The one line a stage fails with when its work kept stalling: what, the deadline, what to do."""
    if why.startswith("did not start"):
        hint = "the cluster could not start it; rerun to resume"
    else:
        hint = (f"its worker was killed each time; rerun to resume, or raise {stage}.resources.progress_timeout_s "
                "if a batch can take that long")
    return f"{what} failed after {attempts} attempts: {why} ({hint})"


def kill(ray: Any, actor: Any) -> None:
    """Kill an actor for good: SIGKILL, which also ends a stopped (wedged) process."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - best effort cleanup
        pass


def cancel(ray: Any, ref: Any) -> None:
    """Cancel a task, killing its worker process (a frozen one too)."""
    try:
        ray.cancel(ref, force=True)
    except Exception:  # noqa: BLE001 - best effort: it may have finished meanwhile
        pass
