"""The terminal holds progress and editgen's own messages (issue 20 item 9): Ray's output is routed to the
run log, rates read at a glance. The CLI runs that check the same end to end are in test_rerun_cli.py."""

from __future__ import annotations

import logging
import os
import sys
import time

from rich.console import Console

from editgen.cli.status import render_table
from editgen.pipeline.logs import RunLog, ray_output_to_run_log
from editgen.pipeline.progress import Progress, human_rate
from editgen.pipeline.storage import Storage


def test_rates_are_human():
    assert [human_rate(r) for r in (4099800.87, 12345, 999.9, 850.2, 12.34, 1.234, 0.5, 0.0123, 0.0)] == [
        "4.1M rows/s", "12.3k rows/s", "1k rows/s", "850 rows/s", "12.3 rows/s", "1.23 rows/s", "30 rows/min",
        "44.3 rows/h", "-"]


def test_no_rate_from_a_few_milliseconds():
    """A driver-side step's rows all arrive at its end: the old bar divided them by microseconds."""
    progress = Progress(enabled=False)
    task = progress.add_stage("ingest/dedup", partitions=1, rows=1000)
    progress.advance(task, rows=1000)
    assert progress.rate(task) == 0.0
    progress._rows[task]["t0"] -= 2.0  # the step began two seconds ago
    assert 400 < progress.rate(task) < 600


def test_status_live_line_is_readable():
    live = {"stage": "ingest", "partitions_done": 3, "partitions_total": 9, "partitions_in_flight": [3, 4],
            "rows_done": 41000.0, "rows_total": 90000, "rows_per_s": 4099800.87, "eta_s": 3725.0}
    status = {"out": "/o", "stages": [], "compute": None, "live": live,
              "lease": {"holder": "pid 1 on h", "stale": None}}

    def shown(status: dict) -> str:
        console = Console(record=True, width=200)
        console.print(render_table(status))
        return " ".join(console.export_text().split())  # the caption wraps at the table's width

    assert "41000/90000 rows, 4.1M rows/s, ETA 1:02:05" in shown(status) and "4099800" not in shown(status)
    quiet = shown({**status, "live": {**live, "rows_per_s": 0.0, "eta_s": None}})
    assert "41000/90000 rows" in quiet and "rows/s" not in quiet  # no rate before there is one


def test_ray_output_goes_to_the_run_log(ray_session, tmp_path, capfd):
    """Inside `editgen run`'s routing: a task's prints (forwarded by Ray to the driver), a line written to
    file descriptor 2 (as Ray's C++ core does) and a `ray` logger warning reach the run log, not the
    terminal; editgen's own stderr still does; everything is as it was afterwards."""
    import ray
    import ray._private.worker as ray_worker

    @ray.remote
    def shout() -> None:
        print("shout-stdout-7f3a")
        print("shout-stderr-7f3a", file=sys.stderr)

    runlog = RunLog(console=False)
    runlog.attach(Storage(str(tmp_path)))
    log = tmp_path / "logs" / runlog.name
    printer, handlers = ray_worker.print_worker_logs, list(logging.getLogger("ray").handlers)
    with ray_output_to_run_log():
        ray.get(shout.remote())
        os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:1: native-line-7f3a\n")
        logging.getLogger("ray.test").warning("ray-logger-7f3a")
        print("editgen-own-7f3a", file=sys.stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "shout-stderr-7f3a" not in log.read_text():
            time.sleep(0.2)
    out, err = capfd.readouterr()
    text = log.read_text()
    for marker in ("shout-stdout-7f3a", "shout-stderr-7f3a", "native-line-7f3a", "ray-logger-7f3a"):
        assert marker in text and marker not in out + err, marker
    assert "(shout pid=" in text and "editgen-own-7f3a" in err
    assert ray_worker.print_worker_logs is printer and logging.getLogger("ray").handlers == handlers
    os.write(2, b"after-7f3a\n")
    assert "after-7f3a" in capfd.readouterr().err and "after-7f3a" not in log.read_text()
