"""Live progress per stage (partitions and rows) and the end-of-run summary table."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

if TYPE_CHECKING:
    from pipeline.runner import RunResult


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
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()

    def add_stage(self, name: str, partitions: int, rows: int) -> Any:
        if not self._bar:
            return name
        task = self._bar.add_task(name, total=max(partitions, 1), rows=f"0/{rows} rows")
        self._rows[task] = [0, rows]
        if partitions == 0:
            self._bar.update(task, completed=1)
        return task

    def advance(self, task: Any, rows: int, skipped: bool = False) -> None:
        if not self._bar:
            return
        done = self._rows[task]
        done[0] += rows
        label = f"{done[0]}/{done[1]} rows" + (" (resumed)" if skipped else "")
        self._bar.update(task, advance=1, rows=label)

    def stop(self) -> None:
        if self._bar:
            self._bar.stop()
            self._bar = None


def summary_table(result: RunResult) -> Table:
    table = Table(title=f"editgen run: {result.out}")
    for col in ("stage", "partitions", "computed", "rows in", "kept", "dropped", "s", "rows/s", "top drop reasons"):
        table.add_column(col, justify="right" if col not in ("stage", "top drop reasons") else "left",
                         no_wrap=col != "top drop reasons")
    for s in result.stages:
        dropped = sum(s.dropped.values())
        top = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped.items(), key=lambda kv: -kv[1])[:4])
        rate = f"{s.rows_in / s.seconds:.0f}" if s.computed and s.seconds > 0 else "-"
        table.add_row(
            s.name, str(s.partitions), str(s.computed), str(s.rows_in), str(s.rows_out), str(dropped),
            f"{s.seconds:.1f}", rate, top,
        )
    return table
