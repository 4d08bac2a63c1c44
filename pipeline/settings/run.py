"""Run-wide settings: Ray connection and runtime behaviour."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.settings.base import Strict


class RayConfig(Strict):
    address: str | None = Field(None, description="existing cluster (ray://host:10001 or host:6379); "
                                "None = RAY_ADDRESS or a local Ray started on demand")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a locally started Ray")
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory: int | None = Field(None, ge=78_643_200)
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="passed to ray.init")


class RunConfig(Strict):
    verify_checksums: bool = Field(True, description="re-hash finished partitions before trusting them")
    progress: bool = True
    log_level: str = "INFO"
    worker_start_timeout_s: float = Field(
        1800.0, gt=0, description="a stage with partitions left but no worker alive (none placeable, all "
        "restarting) fails after this long instead of waiting forever; covers model loading at start"
    )
    lease_ttl_s: float = Field(
        120.0, gt=0, description="a run's lease on OUT whose heartbeat is older than this is stale and is "
        "taken over by the next run (a dead driver on the same host is detected at once)"
    )
    lease_heartbeat_s: float = Field(10.0, gt=0, description="how often a run renews its lease on OUT")
