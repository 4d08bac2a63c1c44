"""Run-wide settings: Ray connection and runtime behaviour."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.settings.base import Strict


class RayConfig(Strict):
    address: str | None = Field(None, description="existing cluster (ray://host:10001 or host:6379); "
                                "None = RAY_ADDRESS or a local Ray started on demand")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a locally started Ray")
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory: int | None = Field(None, ge=78_643_200)
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="passed to ray.init")


class RunConfig(Strict):
    verify_checksums: Literal["metadata", "full"] = Field(
        "metadata", description="metadata = trust a finished partition whose size and ETag/mtime match its "
        "record (re-hash only where the marker moved); full = re-hash every file, on the workers in parallel"
    )

    @field_validator("verify_checksums", mode="before")
    @classmethod
    def _bool_verify(cls, value: object) -> object:
        """Earlier configs said true/false."""
        return {True: "full", False: "metadata"}.get(value, value) if isinstance(value, bool) else value
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
