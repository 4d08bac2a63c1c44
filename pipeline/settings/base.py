"""Shared building blocks of the config schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for every config section: unknown keys and wrong types are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class Resources(Strict):
    """How a stage is scheduled on Ray. Excluded from the config hash: it never changes results."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int = Field(1, ge=0, description="number of actors (workers); 0 = as many as the cluster fits")
    batch_size: int = Field(256, ge=1, description="rows handed to the batch function at once")
    max_retries: int = Field(3, ge=0, description="re-runs of a partition after a worker crash")
