"""Run-wide settings: Ray connection and runtime behaviour."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from editgen.pipeline.settings.base import Strict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: A lease's TTL when its holder records none (leases written before TTLs were recorded).
LEASE_TTL_DEFAULT_S = 120.0
#: run.lease_ttl_s must be at least this many heartbeats (see RunConfig._lease_timing).
LEASE_TTL_MIN_HEARTBEATS = 3


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class RayConfig(Strict):
    address: str | None = Field(None, description="existing cluster (ray://host:10001 or host:6379); "
                                "None = RAY_ADDRESS or a local Ray started on demand")
    num_cpus: int | None = Field(None, ge=1, le=100_000, description="logical CPUs of a locally started Ray")
    num_gpus: int | None = Field(None, ge=0, le=10_000)
    object_store_memory: int | None = Field(
        None, ge=78_643_200, description="bytes, for a locally started Ray; at most this machine's memory"
    )
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="passed to ray.init")

    @model_validator(mode="after")
    def _store_fits(self) -> RayConfig:
        """Ray would fail to start (with a traceback) asking for more shared memory than exists."""
        mem = physical_memory()
        local = self.address is None and not os.environ.get("RAY_ADDRESS")
        if local and self.object_store_memory is not None and mem and self.object_store_memory > mem:
            raise ValueError(f"object_store_memory: {self.object_store_memory} bytes is more than this machine's "
                             f"memory ({mem / 2**30:.0f} GiB)")
        return self


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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    worker_start_timeout_s: float = Field(
        1800.0, gt=0, description="a stage with partitions left but no worker alive (none placeable, all "
        "restarting) fails after this long instead of waiting forever; covers model loading at start"
    )
    lease_ttl_s: float = Field(
        LEASE_TTL_DEFAULT_S, gt=0, description="recorded in this run's lease on OUT: once the lease has gone "
        f"unrenewed this long (on the store's clock) another run may take it over; at least "
        f"{LEASE_TTL_MIN_HEARTBEATS}x lease_heartbeat_s (a dead driver in the same PID namespace is detected "
        "at once)"
    )
    lease_heartbeat_s: float = Field(10.0, gt=0, description="how often a run renews its lease on OUT")

    @model_validator(mode="after")
    def _lease_timing(self) -> RunConfig:
        """A TTL close to the heartbeat lets a second driver take the lease of a live one whose renewal
        is merely late (a slow store, a pause)."""
        floor = LEASE_TTL_MIN_HEARTBEATS * self.lease_heartbeat_s
        if self.lease_ttl_s < floor * (1 - 1e-9):  # 0.3 s is 3x 0.1 s, whatever floats say
            raise ValueError(f"lease_ttl_s: must be at least {LEASE_TTL_MIN_HEARTBEATS}x run.lease_heartbeat_s "
                             f"({floor:g}s), so a live run may miss two renewals without losing its lease "
                             f"(got {self.lease_ttl_s:g})")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
