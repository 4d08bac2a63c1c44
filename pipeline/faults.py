"""Fault-injection hooks for tests (documented in docs/faults.md): slow partitions down, make a worker
process die hard in the middle of a given partition, or freeze one (SIGSTOP: alive and silent, as a
stuck CUDA call or a hung network-filesystem read leaves it). Unset, they cost one environment lookup."""

from __future__ import annotations

import os
import signal

FAULT_DELAY = "EDITGEN_FAULT_DELAY_S"  # "0.5" (every stage) or "render=2,shard=1" (per stage)
FAULT_CRASH = "EDITGEN_FAULT_CRASH"  # "stage:pid[:attempt]" -> os._exit(137) mid-partition;
#                                     "stage:setup" -> the worker's constructor raises
FAULT_STOP = "EDITGEN_FAULT_STOP"  # "stage[/step]:pid[:attempt]" -> the worker SIGSTOPs itself mid-partition;
#                                   "board:N" -> the progress board SIGSTOPs itself when asked the N-th time
FAULT_STOP_LOG = "EDITGEN_FAULT_STOP_LOG"  # a file each stopped process appends its pid to (test cleanup)


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


def stop_in_partition(label: str, pid: int, attempt: int) -> None:
    """FAULT_STOP=stage[/step]:pid[:attempt]: the process freezes (a real SIGSTOP) in that partition."""
    stop = os.environ.get(FAULT_STOP, "")
    if not stop:
        return
    parts = stop.split(":")
    attempt_ok = len(parts) < 3 or int(parts[2]) == attempt
    if parts[0] == label and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) == pid and attempt_ok:
        stop_here()


def stop_board_after() -> int:
    """FAULT_STOP=board:N: the progress board freezes when asked for its state the N-th time (0: never)."""
    name, _, count = os.environ.get(FAULT_STOP, "").partition(":")
    return int(count) if name == "board" and count.isdigit() else 0


def stop_here() -> None:
    """SIGSTOP this process, after noting its pid in FAULT_STOP_LOG (so a test can kill it afterwards)."""
    log = os.environ.get(FAULT_STOP_LOG)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGSTOP)
