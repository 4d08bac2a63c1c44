"""A two-node Ray cluster as a user starts one: `ray start --head` and `ray start --address` processes.

Each node is its own `ray start --block` process in its own session, so teardown signals exactly the
process groups this helper started (never `ray stop`, which would end every Ray on the machine). The
head has no CPUs, so every stage actor runs on the worker node, whose environment is the one given
here: a test that strips credentials from it proves that they reach workers from the driver.
Token auth is on (RAY_AUTH_MODE=token with a fresh token), as on a shared cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.s3_server import free_port


@dataclass
class StartedCluster:
    address: str
    token: str
    pids: list[int]
    temp_dir: str  # every node's session files (logs, runtime envs) live under it until teardown


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _wait_for_nodes(address: str, env: dict[str, str], want: int, log: Path, timeout: float = 120) -> None:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == [str(want)]:
            return
        time.sleep(1)
    raise RuntimeError(f"ray cluster at {address} did not reach {want} nodes (see {log})")


@contextlib.contextmanager
def ray_start_cluster(env: dict[str, str], log_dir: Path, worker_cpus: int = 2) -> Iterator[StartedCluster]:
    """Head (0 CPUs) + one worker node; `env` is every node's environment (plus the auth variables)."""
    token = uuid.uuid4().hex + uuid.uuid4().hex
    node_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dir = f"/tmp/rs-{uuid.uuid4().hex[:8]}"  # short: Ray's unix socket paths live under it
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--temp-dir", temp_dir, "--disable-usage-stats", "--object-store-memory", str(100 << 20)]
    head = [_ray_bin(), "start", "--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard",
            "false", "--node-ip-address", "127.0.0.1", *common]
    worker = [_ray_bin(), "start", "--address", address, "--num-cpus", str(worker_cpus),
              "--node-ip-address", "127.0.0.1", *common]
    procs: list[subprocess.Popen] = []
    log = log_dir / "ray-start.log"
    try:
        with open(log, "ab") as out:
            procs.append(subprocess.Popen(head, env=node_env, stdout=out, stderr=out, start_new_session=True))
            _wait_for_nodes(address, node_env, 1, log)
            procs.append(subprocess.Popen(worker, env=node_env, stdout=out, stderr=out, start_new_session=True))
            _wait_for_nodes(address, node_env, 2, log)
        yield StartedCluster(address, token, [p.pid for p in procs], temp_dir)
    finally:
        for proc in reversed(procs):
            _stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the node's own process group (what `ray start --block` shuts down on), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the same group (workers, reaper)
