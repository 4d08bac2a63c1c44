"""The candidate record: one typed, versioned record for every engine, built and serialised here only.

A record is what the render stage stores in a candidate's `params` column (JSON) and `editgen pair` in
`params.json`: the engine that rendered it and the version of that engine's record, the model it ran on,
the candidate's identity and seed, every engine parameter needed to render it again bit for bit
(`params`), its UNet work (`compute`), its edit mask (`mask`, where the engine gives one) and, when
`render.routes` chose its engine, the route: the pair's edit type (`route`; absent otherwise, so a record
of a run without routes is the bytes it always was).

On disk the record is one flat JSON object, the layout Prompt-to-Prompt records always had: the engine
and version are its `format` (`editgen.<engine>/<version>`, so a P2P record of before engines existed is
`editgen.p2p/1` and reads back unchanged), the envelope fields below are top-level keys, and the engine's
own parameters sit beside them. `to_row` and `from_row` are exact inverses on every stored record.
Nothing here imports torch: status, shard and the config check read records without the render stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: `format` of a record: `editgen.<engine name>/<record version>`.
FORMAT = re.compile(r"editgen\.([a-z][a-z0-9_]*)/([0-9]+)")
#: Keys of the envelope (the same for every engine); every other key of a row is the engine's.
MODEL_KEYS = ("model", "dtype", "profile", "tiny_variant", "torch_threads", "model_edits", "model_edits_in_model")
ENVELOPE_KEYS = ("format", *MODEL_KEYS, "pair_id", "candidate", "seed", "compute", "mask", "route")
#: Record dtype names (what `torch.dtype` a render ran in; `auto` is never recorded).
DTYPES = ("float32", "float16", "bfloat16")


def record_format(engine: str, version: int) -> str:
    return f"editgen.{engine}/{version}"


@dataclass(frozen=True)
class ModelRef:
    """Which weights, in which dtype, with which thread count a candidate was rendered: what a
    regeneration loads (a tiny model is rebuilt from `profile`/`tiny_variant`; closed-form edits are
    re-applied from `model_edits` and checked against `model_edits_in_model`)."""

    model: str
    dtype: str
    profile: str | None = None
    tiny_variant: str | None = None
    torch_threads: int | None = None  # CPU float reductions depend on it: part of an exact re-render
    model_edits: Mapping[str, Any] | None = None
    model_edits_in_model: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"record dtype must be explicit ({', '.join(DTYPES)}), got {self.dtype!r}")

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.model, "dtype": self.dtype}
        for key in MODEL_KEYS[2:]:
            value = getattr(self, key)
            if value:  # absent rather than null/empty: the layout records always had
                row[key] = dict(value) if isinstance(value, Mapping) else value
        return row


@dataclass(frozen=True)
class Compute:
    """A candidate's UNet work: row-steps (rows x steps of its own render plus its share of work done
    for it, such as a real image's inversion) and FLOPs (row-steps x FLOPs per row-step)."""

    unet_row_steps: float
    unet_flops: float
    flops_per_row_step: int

    @classmethod
    def of(cls, row_steps: float, flops_per_row_step: int) -> Compute:
        return cls(float(row_steps), float(row_steps * flops_per_row_step), int(flops_per_row_step))

    def to_row(self) -> dict[str, float | int]:
        return {"unet_row_steps": self.unet_row_steps, "unet_flops": self.unet_flops,
                "flops_per_row_step": self.flops_per_row_step}


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate of one engine: everything needed to render it again (see the module docstring)."""

    engine: str
    version: int
    model: ModelRef
    seed: int
    params: Mapping[str, Any] = field(default_factory=dict)  # the engine's own, JSON-able
    pair_id: str | None = None
    candidate: int | None = None
    compute: Compute | None = None
    mask: Mapping[str, Any] | None = None  # the edit mask's description, where the engine gives one
    route: str | None = None  # the edit type whose `render.routes` entry chose the engine (no render input)

    def __post_init__(self) -> None:
        if not FORMAT.fullmatch(record_format(self.engine, self.version)):
            raise ValueError(f"engine name {self.engine!r} / version {self.version!r}: expected a lower-case "
                             "name and a non-negative integer")
        clash = sorted(set(self.params) & set(ENVELOPE_KEYS))
        if clash:
            raise ValueError(f"engine parameters may not use the record's own keys: {clash}")

    @property
    def format(self) -> str:
        return record_format(self.engine, self.version)

    def with_params(self, **params: Any) -> CandidateRecord:
        """A copy with some engine parameters added or replaced."""
        return replace(self, params={**self.params, **params})

    def to_row(self) -> dict[str, Any]:
        """The flat JSON object stored as `params` (the one place a candidate row is built)."""
        row: dict[str, Any] = {"format": self.format, **self.model.to_row(), "seed": int(self.seed)}
        if self.pair_id is not None:
            row["pair_id"] = self.pair_id
        if self.candidate is not None:
            row["candidate"] = int(self.candidate)
        if self.compute is not None:
            row["compute"] = self.compute.to_row()
        if self.mask is not None:
            row["mask"] = dict(self.mask)
        if self.route is not None:
            row["route"] = self.route
        row.update(self.params)
        return row

    def to_json(self) -> str:
        """The `params` column's text: sorted keys, so the same record is the same bytes."""
        return json.dumps(self.to_row(), sort_keys=True)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CandidateRecord:
        """Parse a stored record (the `params` JSON object); ValueError names what is wrong."""
        if not isinstance(row, Mapping):
            raise ValueError(f"a record is a JSON object, got {type(row).__name__}")
        m = FORMAT.fullmatch(str(row.get("format", "")))
        if m is None:
            raise ValueError(f"record format {row.get('format')!r} is not editgen.<engine>/<version>")
        for key, typ in (("model", str), ("dtype", str), ("seed", int)):
            if not isinstance(row.get(key), typ) or isinstance(row.get(key), bool):
                raise ValueError(f"record {key}: expected {typ.__name__}, got {row.get(key)!r}")
        model = ModelRef(**{k: row[k] for k in MODEL_KEYS if k in row})
        return cls(
            engine=m[1], version=int(m[2]), model=model, seed=row["seed"],
            params={k: v for k, v in row.items() if k not in ENVELOPE_KEYS},
            pair_id=row.get("pair_id"), candidate=row.get("candidate"),
            compute=_compute(row.get("compute")), mask=row.get("mask"), route=_route(row.get("route")),
        )


def _route(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"record route: expected an edit type name, got {value!r}")


def _compute(value: object) -> Compute | None:
    if value is None:
        return None
    try:
        return Compute(**value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"record compute: expected {{unet_row_steps, unet_flops, flops_per_row_step}}, "
                         f"got {value!r}") from None
