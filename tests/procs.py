"""Watching a CLI subprocess in the fault and object-store tests: wait for a condition while it runs,
and read the one `editgen:` line a failed run must print."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest


def error_line(proc: subprocess.CompletedProcess) -> str:
    """A failed run says what and where in exactly one `editgen:` line, never with a traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("editgen:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    return lines[0]


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before the fault: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the awaited progress never came")
