"""Progress inside running partitions: a 1000-row render partition takes hours on a GPU, so workers
report rows done as they go and the driver shows them (bar, rows/s, ETA) and publishes them to
OUT/_progress.json, which `editgen status` shows for a live run.

The board is a tiny Ray actor: a worker's report is one fire-and-forget call, throttled to one every
`REPORT_EVERY_S`; a lost report only makes the bar lag.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.progress import Progress
    from pipeline.records import PartitionRecord
    from pipeline.stage import PartitionSpec
    from pipeline.storage import Storage

log = logging.getLogger("editgen")

REPORT_EVERY_S = 0.5
PROGRESS_FILE = "_progress.json"


class ProgressBoard:
    """Ray actor body: {partition: rows done so far} of the partitions being computed."""

    def __init__(self) -> None:
        self.partial: dict[int, float] = {}

    def report(self, pid: int, rows: float) -> None:
        self.partial[pid] = rows

    def clear(self, pid: int) -> None:
        self.partial.pop(pid, None)

    def snapshot(self) -> dict[int, float]:
        return dict(self.partial)


def reporter(board: Any, pid: int) -> Callable[[float], None]:
    """A throttled callback that posts rows done in partition `pid` to the board (no-op without one)."""
    if board is None:
        return lambda _rows: None
    last = [0.0]

    def report(rows: float) -> None:
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY_S:
            last[0] = now
            board.report.remote(pid, float(rows))

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
