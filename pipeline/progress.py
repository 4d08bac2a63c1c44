"""Live progress per stage (partitions and rows): a rich bar each, or nothing with the display off."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Thin wrapper so the runner works the same with the display on or off (tests, CI logs)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 150)
        self._rows: dict[Any, list[int]] = {}
        self._bar: RichProgress | None = None
        if enabled:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("partitions"),
                TextColumn("{task.fields[rows]}"),
                TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()

    def add_stage(self, name: str, partitions: int, rows: int) -> Any:
        self._rows[name] = {"done": 0, "skipped": 0, "total": rows, "partial": 0.0, "t0": None,
                            "parts": 0, "partitions": partitions, "added": time.monotonic()}
        if not self._bar:
            return name
        task = self._bar.add_task(name, total=max(partitions, 1), rows=f"0/{rows} rows", speed="")
        self._rows[task] = self._rows.pop(name)
        if partitions == 0:
            self._bar.update(task, completed=1)
        return task

    def advance(self, task: Any, rows: int, skipped: bool = False) -> None:
        state = self._rows[task]
        state["skipped" if skipped else "done"] += rows
        state["parts"] += 1
        if not skipped and state["t0"] is None:  # work began when the stage did (a driver-side step)
            state["t0"] = state["added"]
        self._refresh(task, advance=1, resumed=skipped)

    def start(self, task: Any) -> None:
        """Work on this stage begins now (rows/s and ETA count from here, not from resumed rows)."""
        self._rows[task]["t0"] = time.monotonic()

    def partial(self, task: Any, rows: float) -> None:
        """Rows done inside the partitions still running (reported by their workers)."""
        state = self._rows[task]
        state["partial"] = rows
        self._refresh(task)

    def rate(self, task: Any) -> float:
        """Computed rows per second since work on the stage began (resumed rows do not count); 0 (no rate)
        in its first MIN_RATE_S, when a few rows over a few milliseconds say nothing."""
        state = self._rows[task]
        if state["t0"] is None or time.monotonic() - state["t0"] < MIN_RATE_S:
            return 0.0
        return self.rows_computed(task) / (time.monotonic() - state["t0"])

    def rows_computed(self, task: Any) -> float:
        """Rows computed by this run (finished partitions plus the running ones' reports), resumed excluded."""
        state = self._rows[task]
        return state["done"] + state["partial"]

    def rows_done(self, task: Any) -> float:
        state = self._rows[task]
        return state["done"] + state["skipped"] + state["partial"]

    def _refresh(self, task: Any, advance: int = 0, resumed: bool = False) -> None:
        if not self._bar:
            return
        state = self._rows[task]
        done = self.rows_done(task)
        rate = self.rate(task)
        eta = (state["total"] - done) / rate if rate > 0 else None
        label = f"{done:.0f}/{state['total']} rows" + (" (resumed)" if resumed else "")
        speed = human_rate(rate) + (f" ETA {clock(eta)}" if eta is not None else "") if rate else ""
        self._bar.update(task, advance=advance, rows=label, speed=speed)

    def stop(self) -> None:
        if self._bar:
            self._bar.stop()
            self._bar = None


#: Seconds of work before a rate is shown.
MIN_RATE_S = 1.0


def human_rate(per_second: float, what: str = "rows") -> str:
    """A rate people read at a glance: 3 significant digits with k/M/G (`4.1M rows/s`, `12.3 rows/s`), per
    minute or hour when under one a second (`2.5 rows/min`); `-` for no rate."""
    if not per_second > 0:
        return "-"
    if per_second >= 1:
        return f"{_si(per_second)} {what}/s"
    if per_second * 60 >= 1:
        return f"{_si(per_second * 60)} {what}/min"
    return f"{_si(per_second * 3600)} {what}/h"


def _si(value: float) -> str:
    """3 significant digits, with a k/M/G/T suffix from 1000 up (999.9 -> `1k`)."""
    for suffix in ("", "k", "M", "G"):
        text = f"{value:.3g}"
        if "e" not in text and float(text) < 1000:
            return text + suffix
        value /= 1000
    return f"{value:.3g}T"


def clock(seconds: float) -> str:
    """`h:mm:ss`."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
