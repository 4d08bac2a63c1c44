"""Ray bootstrap: join a cluster when an address is given, otherwise start a local Ray on demand."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import UserError
from pipeline.settings.run import RayConfig
from pipeline.storage import store_env

log = logging.getLogger("editgen")


def ensure_ray(cfg: RayConfig, address: str | None = None) -> dict[str, Any]:
    """Connect once per process; reuse an existing connection (tests start one Ray per session)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    addr = address or cfg.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "configure_logging": True,
    }
    if cfg.runtime_env:
        kwargs["runtime_env"] = cfg.runtime_env
    if addr:
        log.info("joining Ray cluster at %s", addr)
        with native_stderr() as captured:
            try:
                ray.init(address=addr, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every way of not joining becomes one line
                raise UserError(connection_error(addr, exc, captured())) from None
    else:
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
        if cfg.object_store_memory is not None:
            kwargs["object_store_memory"] = cfg.object_store_memory
        log.info("starting a local Ray")
        ray.init(**kwargs)
    return ray.cluster_resources()


@contextlib.contextmanager
def native_stderr() -> Iterator[Callable[[], str]]:
    """Hold what Ray's C++ core writes straight to file descriptor 2 while joining a cluster (a line a
    second for 20 s when it is refused): on failure it tells the cause, on success it is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False

        def read() -> str:
            tmp.seek(0)
            return tmp.read().decode("utf-8", errors="replace")

        try:
            yield read
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                sys.stderr.write(read())


def connection_error(addr: str, exc: BaseException, native_log: str = "") -> str:
    """One line saying why joining the cluster at `addr` failed and what fixes it (Ray's own message is a
    page of log lines and advice)."""
    text = str(exc)
    lowered = f"{text}\n{native_log}".lower()
    if (type(exc).__name__ == "AuthenticationError" or "invalidauthtoken" in lowered
            or "unauthenticated" in lowered or "authentication token" in lowered):
        return (f"ray: the cluster at {addr} uses token authentication and refused this driver: set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to that cluster's token")
    if "version mismatch" in lowered or "python version" in lowered:
        first = next((ln.strip() for ln in text.splitlines() if "ersion" in ln), text[:200])
        return f"ray: cannot join the cluster at {addr}: {first[:300]}"
    if isinstance(exc, ConnectionError | TimeoutError) or "connect" in lowered or "timed out" in lowered:
        return (f"ray: no Ray cluster answers at {addr} (is `ray start --head` running there? "
                "check --ray-address / RAY_ADDRESS)")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"ray: cannot join the cluster at {addr}: {type(exc).__name__}: {first[:300]}"


def fit_concurrency(stage: str, want: int, num_cpus: float, num_gpus: float, quiet: bool = False) -> int:
    """How many actors of this shape the cluster can hold; errors when not even one fits, since a
    request Ray can never satisfy would hang forever instead of failing."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if num_gpus > 0 and gpus < num_gpus:
        raise UserError(
            f"{stage}: needs {num_gpus:g} GPU per worker but the Ray cluster has {gpus:g}; "
            f"set {stage}.resources.num_gpus=0 to run on CPU"
        )
    if num_cpus > cpus:
        raise UserError(f"{stage}: needs {num_cpus:g} CPUs per worker but the Ray cluster has {cpus:g}")
    limits = [want]
    if num_cpus > 0:
        limits.append(int(cpus // num_cpus))
    if num_gpus > 0:
        limits.append(int(gpus // num_gpus))
    n = max(1, min(limits))
    if n < want and not quiet:
        log.warning("%s: cluster fits %d of %d requested workers", stage, n, want)
    return n


def remote_task(fn: Callable[..., Any], num_cpus: float = 1, max_retries: int = 2) -> Any:
    """`fn` as a Ray task that carries the worker environment (see `with_worker_env`): a task on a node
    without the driver's credentials could not read the input or OUT."""
    import ray

    return ray.remote(fn).options(num_cpus=num_cpus, max_retries=max_retries, **with_worker_env({}))


def with_worker_env(options: dict[str, Any]) -> dict[str, Any]:
    """Actor options whose runtime_env carries EDITGEN_* and the object-store client variables (AWS_*,
    ...): a worker on another node has none of the driver's environment, and without them it could not
    read or write OUT. A stage's own runtime_env values win."""
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("EDITGEN_")}
    env_vars.update(store_env())
    if not env_vars:
        return options
    runtime_env = dict(options.pop("runtime_env", {}) or {})
    runtime_env["env_vars"] = {**env_vars, **runtime_env.get("env_vars", {})}
    return {**options, "runtime_env": runtime_env}
