"""Config of the shard stage (WebDataset output). Owned by the shard stage."""

from __future__ import annotations

from pydantic import Field

from editgen.pipeline.settings.base import Resources, Strict


class ShardConfig(Strict):
    samples_per_shard: int = Field(1000, ge=1)
    max_shard_bytes: int = Field(
        1_000_000_000, ge=10_240, description="a shard closes before it would exceed this (tar bytes)"
    )
    prefix: str = Field("edits", pattern=r"^[A-Za-z0-9_-]+$", description="shard file name prefix")
    export_rejected: bool = Field(
        False, description="also write filter-rejected candidates to rejected-NNNNNN.tar (as negatives)"
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(concurrency=2),
        description="concurrency = shards encoded/uploaded in parallel",
    )
