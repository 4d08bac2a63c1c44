"""Fault-injection hooks for tests (documented in docs/faults.md): slow partitions down, or make a
worker process die hard in the middle of a given partition. Unset, they cost one environment lookup."""

from __future__ import annotations

import os

FAULT_DELAY = "EDITGEN_FAULT_DELAY_S"  # "0.5" (every stage) or "render=2,shard=1" (per stage)
FAULT_CRASH = "EDITGEN_FAULT_CRASH"  # "stage:pid[:attempt]" -> os._exit(137) mid-partition;
#                                     "stage:setup" -> the worker's constructor raises


def fault_delay_s(stage: str) -> float:
    """Seconds to sleep per partition (per shard for the shard stage) of `stage`, from FAULT_DELAY."""
    spec = os.environ.get(FAULT_DELAY, "").strip()
    if not spec:
        return 0.0
    if "=" not in spec:
        return float(spec)
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name.strip() == stage:
            return float(value)
    return 0.0


def crash_at_setup(stage: str) -> None:
    """FAULT_CRASH=stage:setup: the worker's constructor raises."""
    if os.environ.get(FAULT_CRASH, "") == f"{stage}:setup":
        raise RuntimeError(f"{FAULT_CRASH}: injected failure while starting the {stage} worker")


def crash_in_partition(stage: str, pid: int, attempt: int) -> None:
    """FAULT_CRASH=stage:pid[:attempt]: the worker process dies hard in the middle of that partition."""
    crash = os.environ.get(FAULT_CRASH, "")
    if not crash:
        return
    parts = crash.split(":")
    attempt_ok = len(parts) < 3 or int(parts[2]) == attempt
    if parts[0] == stage and parts[1].isdigit() and int(parts[1]) == pid and attempt_ok:
        os._exit(137)
