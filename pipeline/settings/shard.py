"""Config of the shard stage (WebDataset output). Owned by the shard stage."""

from __future__ import annotations

import importlib
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from editgen.pipeline.settings.base import Resources, Strict

#: The edit-type taxonomy, imported by name (prompts/ sits above the core, like instruct.type_weights).
TAXONOMY_MODULE = "editgen.prompts.taxonomy"
#: A type_quota key for every type the mapping does not name (and for untyped samples).
OTHER_TYPES = "*"
Cap = Annotated[int, Field(ge=0)]
#: The eval tars' prefix (output/eval_split.py; spelled here too: settings sit below output/).
EVAL_PREFIX = "eval"


class CardConfig(Strict):
    """The dataset card the shard stage writes (OUT/shards/README.md: output/card.py, docs/dataset_card.md).
    Outside the stage hash: a change rewrites the card (the stage's resume check compares it), no tar."""

    license: str = Field(
        "other", pattern=r"^[a-z0-9][a-z0-9.+-]*$",
        description="the card's `license` (a Hugging Face license id, e.g. cc-by-4.0, apache-2.0; other: "
        "say which in the body). The data's license follows from its sources' and models' licenses: editgen "
        "cannot know it, so the default claims none",
    )


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
    eval_fraction: float = Field(
        0.0, ge=0.0, le=0.5,
        description="share of kept pairs held out in eval-NNNNNN.tar (the card's `test` split; output/eval_split.py): "
        "drawn by a hash of the pair's id (a session's: its first turn's), so sibling candidates, inverse pairs "
        "and a session's turns stay in one split; 0: no eval split",
    )
    card: CardConfig = Field(default_factory=CardConfig, description="the dataset card (OUT/shards/README.md)")
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

    @model_validator(mode="after")
    def _eval_prefix_free(self) -> ShardConfig:
        """The eval tars sit beside the training ones: the training prefix must not be theirs."""
        if self.eval_fraction > 0 and self.prefix == EVAL_PREFIX:
            raise ValueError(f"prefix {EVAL_PREFIX!r} is the eval tars' (shard.eval_fraction > 0): choose another")
        return self
