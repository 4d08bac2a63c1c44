"""Ray bootstrap: join a cluster when an address is given, otherwise start a local Ray on demand."""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline.errors import UserError
from pipeline.settings.run import RayConfig

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
        try:
            ray.init(address=addr, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"ray: cannot connect to cluster at {addr!r}: {exc}") from None
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
