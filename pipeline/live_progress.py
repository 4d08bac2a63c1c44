"""Progress inside running partitions: a 1000-row render partition takes hours on a GPU, so workers
report rows done as they go and the driver shows them (bar, rows/s, ETA) and publishes them to
OUT/_progress.json, which `editgen status` shows for a live run.

The board is a tiny Ray actor: a worker's report is one fire-and-forget call, throttled to one every
`REPORT_EVERY_S`; a lost report only makes the bar lag. The same reports are the progress that keeps a
partition within its deadline (pipeline.watchdog): the board counts them per key, so the driver can tell
a partition that keeps reporting from a wedged one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editgen.pipeline.errors import UserError

if TYPE_CHECKING:
    from editgen.pipeline.progress import Progress
    from editgen.pipeline.records import PartitionRecord
    from editgen.pipeline.stage import PartitionSpec
    from editgen.pipeline.storage import Storage

log = logging.getLogger("editgen")

REPORT_EVERY_S = 0.5
PROGRESS_FILE = "_progress.json"


class ProgressBoard:
    """Ray actor body: per group (one step's partitions, one batch of tasks), {key: (rows done so far,
    reports so far)} of the work in flight. Only counts and numbers: cheap to ask for once a second."""

    def __init__(self) -> None:
        from editgen.pipeline.faults import stop_board_after

        self.groups: dict[str, dict[int, tuple[float, int]]] = {}
        self.asked = 0
        self.stop_after = stop_board_after()

    def report(self, group: str, key: int, rows: float) -> None:
        entries = self.groups.setdefault(group, {})
        entries[key] = (rows, entries.get(key, (0.0, 0))[1] + 1)

    def clear(self, group: str, key: int) -> None:
        """Its rows are no longer in flight; its report count stays (counts only grow, so the driver
        tells a new attempt's first report from an old one's)."""
        entries = self.groups.get(group, {})
        if key in entries:
            entries[key] = (0.0, entries[key][1])

    def forget(self, group: str) -> None:
        self.groups.pop(group, None)

    def state(self, group: str) -> dict[int, tuple[float, int]]:
        self.asked += 1
        if self.asked == self.stop_after:
            from editgen.pipeline.faults import stop_here

            stop_here()
        return dict(self.groups.get(group, {}))


@dataclass(frozen=True)
class Beacon:
    """What a worker or task reports its progress through: the board and its group (plain data, shipped
    with each call, so a replaced board takes over from the next call on)."""

    board: Any
    group: str

    def report(self, key: int, rows: float) -> None:
        self.board.report.remote(self.group, key, float(rows))

    def clear(self, key: int) -> None:
        self.board.clear.remote(self.group, key)


def reporter(beacon: Beacon | None, key: int, offset: float = 0.0) -> Callable[[float], None]:
    """A throttled callback that posts rows done (plus `offset`) under `key` (no-op without a beacon)."""
    if beacon is None:
        return lambda _rows: None
    last = [0.0]

    def report(rows: float) -> None:
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY_S:
            last[0] = now
            beacon.report(key, offset + rows)

    return report


def progress_record(stage: str, partitions: int, done: int, rows_total: int, rows_done: float,
                    rate: float, inflight: dict[int, float]) -> str:
    """The JSON a live run publishes to OUT/_progress.json."""
    left = max(0.0, rows_total - rows_done)
    return json.dumps({
        "stage": stage, "partitions_total": partitions, "partitions_done": done,
        "partitions_in_flight": sorted(inflight), "rows_total": rows_total, "rows_done": round(rows_done, 2),
        "rows_per_s": round(rate, 3), "eta_s": round(left / rate, 1) if rate > 0 else None,
        "in_flight_rows_done": {str(k): round(v, 2) for k, v in sorted(inflight.items())},
        "updated": time.time(),
    }, sort_keys=True, indent=1)


class LiveMonitor:
    """The runner's side of a running step (pipeline.executor.Monitor): checks the lease, shows finished
    partitions and the workers' in-partition reports (bar, rows/s, ETA) and publishes them to
    OUT/_progress.json every PUBLISH_EVERY_S for `editgen status` on a live run."""

    PUBLISH_EVERY_S = 2.0

    def __init__(self, progress: Progress, storage: Storage, check: Callable[[], None], stage: str, task: Any,
                 partitions: int, rows: int) -> None:
        self.progress, self.storage, self.check = progress, storage, check
        self.stage, self.task, self.partitions, self.rows = stage, task, partitions, rows
        self.last_publish = 0.0
        progress.start(task)

    def done(self, spec: PartitionSpec, record: PartitionRecord) -> None:
        self.progress.advance(self.task, rows=spec.rows_in)

    def partial(self, in_flight: dict[int, float], done: int) -> None:
        self.progress.partial(self.task, sum(in_flight.values()))
        now = time.monotonic()
        if now - self.last_publish < self.PUBLISH_EVERY_S:
            return
        self.last_publish = now
        # figures of this run's work (partitions to compute, their rows), so done <= total and ETA holds
        text = progress_record(self.stage, self.partitions, done, self.rows, self.progress.rows_computed(self.task),
                               self.progress.rate(self.task), in_flight)
        try:
            self.storage.write_text(text, PROGRESS_FILE)
        except UserError:
            log.warning("could not publish %s", PROGRESS_FILE)

    def finish(self) -> None:
        self.progress.partial(self.task, 0.0)
        try:
            self.storage.remove(PROGRESS_FILE)
        except UserError:
            pass
