"""Config of the shard stage (WebDataset output). Owned by the shard stage."""

from __future__ import annotations

import importlib
from typing import Annotated, Literal

from pydantic import Field, field_validator

from editgen.pipeline.settings.base import Resources, Strict

#: The edit-type taxonomy, imported by name (prompts/ sits above the core, like instruct.type_weights).
TAXONOMY_MODULE = "editgen.prompts.taxonomy"
#: A type_quota key for every type the mapping does not name (and for untyped samples).
OTHER_TYPES = "*"
Cap = Annotated[int, Field(ge=0)]


class ShardConfig(Strict):
    samples_per_shard: int = Field(1000, ge=1)
    max_shard_bytes: int = Field(
        1_000_000_000, ge=10_240, description="a shard closes before it would exceed this (tar bytes)"
    )
    prefix: str = Field("edits", pattern=r"^[A-Za-z0-9_-]+$", description="shard file name prefix")
    export_rejected: bool = Field(
        False, description="also write filter-rejected candidates to rejected-NNNNNN.tar (as negatives)"
    )
    type_quota: Cap | dict[str, Cap] | Literal["balance"] | None = Field(
        None,
        description="kept samples per edit type (docs/edit_types.md): n caps every type at n; {type: n, '*': n} "
        "caps the types named ('*': every other type); 'balance' caps every type at the smallest type's count. "
        "The best by sim_direction stay (ties by key hash), the rest are dropped as over_type_quota; None: no cap",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(concurrency=2),
        description="concurrency = shards encoded/uploaded in parallel",
    )

    @field_validator("type_quota")
    @classmethod
    def _known_types(cls, value: int | dict[str, int] | str | None) -> int | dict[str, int] | str | None:
        """A mapping names known edit types or '*' (one line naming the first unknown)."""
        if isinstance(value, dict):
            names = importlib.import_module(TAXONOMY_MODULE).NAMES
            unknown = [k for k in value if k not in names and k != OTHER_TYPES]
            if unknown:
                raise ValueError(f"unknown edit type {unknown[0]!r} (known: {', '.join(names)}, or '*' for the rest)")
        return value
