"""What the samples of a split hold, for the dataset card's `dataset_info.features` (output/card.py).

`datasets`' webdataset builder, given no features, infers them from the first 5 samples of one tar: a member
those lack (`reconstruction.png` of a real-image engine in a mixed run, `input.jpg` beside `input.png`) fails
the load ("don't share the same prefix"), and a JSON field they hold as null (`mask_kind`, a judge score)
is typed null, so the first sample that sets it fails the cast. Declared features make it read every sample
against one schema, a missing member or field as None. So the shard writer derives each tar's schema from
the bytes it writes (`tar_schema`: the member names, and the type of every `json` member), joins them in
tar order per split (`SplitSchema.join`) and stores the result in the manifest (`to_manifest`); the card
joins the splits it lists and writes them in the YAML shape datasets 5.x reads (`yaml_features`), without
importing `datasets` (a test-only extra).

The `json` member's type: pyarrow's inference over a tar's values (value by value where it fails), in one
lattice: null joins anything; int64 and float64 join as float64; lists join their items, objects their fields
(the union, sorted by name, so the bytes do not depend on which sample came first). Everything else is ANY,
declared as datasets' `Json` feature (each value kept as it was): a field whose values have no common type
(a number in one sample and a list or text in another, e.g. p2p's `cross_replace`: a number for a window
from step 0, else [start, end] or a per-word dict; a bool and a number), an integer beyond int64, and an
object with more than MAX_FIELDS fields (a dict keyed by data, e.g. p2p's per-word `reweight`, whose words
would otherwise each become a column). `Json` needs datasets >= 4.7. The join is commutative and
associative, so the schema is a function of the samples alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: The manifest key of a set's schema (beside its `samples`, `bytes`, `shards`).
FEATURES = "features"
#: A value of any JSON shape (datasets' `Json` feature); pyarrow < 19 has no json type: large_string,
#: which pyarrow never infers for a JSON value, stands in.
ANY: pa.DataType = pa.json_() if hasattr(pa, "json_") else pa.large_string()
#: Objects with more fields than this (over every sample of the split) are declared ANY (module doc).
MAX_FIELDS = 128
#: Member extensions the webdataset builder decodes as images (the writer's: output/shard_writer.image_ext).
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})
#: Member stems in the order the writer puts them in a sample (output/shard_writer.sample_members).
MEMBER_ORDER = ("input", "edited", "mask", "reconstruction", "first_input", "txt", "json")
#: Columns the webdataset builder adds to every sample, after its members.
BUILDER_COLUMNS = ("__key__", "__url__")
_SCALARS = {"null": pa.null(), "bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64(),
            "string": pa.string(), "json": ANY}
_NAMES = {t: name for name, t in _SCALARS.items()}
_INT64 = (-(2**63), 2**63 - 1)


def _fields(t: pa.DataType) -> dict[str, pa.DataType]:
    return {t.field(i).name: t.field(i).type for i in range(t.num_fields)}


def _struct(fields: Mapping[str, pa.DataType]) -> pa.DataType:
    """An object's type, fields sorted; ANY past MAX_FIELDS."""
    return ANY if len(fields) > MAX_FIELDS else pa.struct([pa.field(k, fields[k]) for k in sorted(fields)])


def normal(t: pa.DataType) -> pa.DataType:
    """An inferred pyarrow type in the lattice (module doc): one width per kind, struct fields sorted."""
    if t == ANY or t in _NAMES:
        return t
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(normal(t.value_type))
    if pa.types.is_struct(t):
        return _struct({k: normal(v) for k, v in _fields(t).items()})
    return ANY


def join(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The least type both values fit (module doc)."""
    if a == b or b == pa.null():
        return a
    if a == pa.null():
        return b
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    if pa.types.is_list(a) and pa.types.is_list(b):
        return pa.list_(join(a.value_type, b.value_type))
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        fa, fb = _fields(a), _fields(b)
        return _struct({k: join(fa.get(k, pa.null()), fb.get(k, pa.null())) for k in {*fa, *fb}})
    return ANY


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "big"
    return {float: "float", str: "string", list: "list", dict: "dict"}.get(type(value), "other")


def infer(values: Sequence[object]) -> pa.DataType:
    """The join of these JSON values' types: pyarrow's inference over all of them, or, where they disagree
    (pyarrow raises), kind by kind, an object's fields and a list's items each inferred on their own."""
    try:
        return normal(pa.array(values).type)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    kinds = {_kind(v) for v in values if v is not None}
    if kinds == {"dict"}:
        dicts = [v for v in values if isinstance(v, dict)]
        return _struct({k: infer([d.get(k) for d in dicts]) for k in {k for d in dicts for k in d}})
    if kinds == {"list"}:
        return pa.list_(infer([item for v in values if isinstance(v, list) for item in v]))
    if kinds <= {"int", "float"}:
        return pa.float64() if "float" in kinds else pa.int64()
    return ANY


@dataclass(frozen=True)
class SplitSchema:
    """The members any sample of a split has (by name after its key: `input.png`, `json`) and the join of
    its `json` members' types (null: none yet)."""

    members: frozenset[str] = frozenset()
    json: pa.DataType = field(default_factory=pa.null)

    def join(self, other: SplitSchema) -> SplitSchema:
        return SplitSchema(self.members | other.members, join(self.json, other.json))


def tar_schema(members: Iterable[tuple[str, bytes]]) -> SplitSchema:
    """One tar's schema from its (member name, bytes), named `<key>.<field>` (keys have no dots:
    output/keys.py, and the builder splits a name at its first dot)."""
    names, values = set(), []
    for name, data in members:
        member = name.split(".", 1)[1]
        names.add(member)
        if member == "json":
            values.append(json.loads(data))
    return SplitSchema(frozenset(names), infer(values) if values else pa.null())


def to_tree(t: pa.DataType) -> str | dict[str, Any]:
    """A lattice type as JSON for the manifest: a scalar's name, {"list": item} or {"struct": {name: type}}."""
    if pa.types.is_list(t):
        return {"list": to_tree(t.value_type)}
    if pa.types.is_struct(t):
        return {"struct": {k: to_tree(v) for k, v in _fields(t).items()}}
    return _NAMES[t]


def from_tree(tree: object) -> pa.DataType:
    """Inverse of `to_tree`; ValueError on anything else."""
    if isinstance(tree, str) and tree in _SCALARS:
        return _SCALARS[tree]
    if isinstance(tree, dict) and len(tree) == 1 and isinstance(tree.get("list"), str | dict):
        return pa.list_(from_tree(tree["list"]))
    if isinstance(tree, dict) and len(tree) == 1 and isinstance(tree.get("struct"), dict):
        return _struct({str(k): from_tree(v) for k, v in tree["struct"].items()})
    raise ValueError(f"not a feature type: {tree!r}")


def to_manifest(schema: SplitSchema) -> dict[str, Any]:
    """A split's `features` in the manifest."""
    return {"members": sorted(schema.members), "json": to_tree(schema.json)}


def from_manifest(section: object) -> SplitSchema | None:
    """A manifest split's `features`; None where it has none (a manifest written before them) or a bad one."""
    if not isinstance(section, dict) or not isinstance(section.get("members"), list):
        return None
    try:
        return SplitSchema(frozenset(str(m) for m in section["members"]), from_tree(section.get("json")))
    except ValueError:
        return None


def yaml_type(t: pa.DataType) -> dict[str, Any]:
    """A lattice type as datasets writes it in a card (`Features._to_yaml_list`: a list of a scalar is
    `list: int64`, of an object `list: [fields]`), without its name."""
    if pa.types.is_struct(t):
        return {"struct": [{"name": k, **yaml_type(v)} for k, v in _fields(t).items()]}
    if pa.types.is_list(t):
        item = yaml_type(t.value_type)
        return {"list": item.get("dtype", item.get("struct", item))}
    return {"dtype": _NAMES[t]}


def _member_type(member: str, schema: SplitSchema) -> dict[str, Any]:
    ext = member.rsplit(".", 1)[-1].lower()
    if ext in IMAGE_EXTENSIONS:
        return {"dtype": "image"}
    if ext == "json":
        return yaml_type(schema.json)
    return {"dtype": "string" if ext == "txt" else "binary"}  # the builder decodes txt; other bytes stay bytes


def _member_rank(member: str) -> tuple[int, str]:
    stem = member.split(".", 1)[0]
    return (MEMBER_ORDER.index(stem) if stem in MEMBER_ORDER else len(MEMBER_ORDER), member)


def members_in_order(schema: SplitSchema) -> list[str]:
    """The members in the order the writer puts them in a sample (others after them, by name)."""
    return sorted(schema.members, key=_member_rank)


def yaml_features(schema: SplitSchema) -> list[dict[str, Any]]:
    """The card's `dataset_info.features`: every member (images as `image`, `txt` as text, `json` as its
    struct) in sample order, then the builder's `__key__` and `__url__` (strings)."""
    rows = [{"name": m, **_member_type(m, schema)} for m in members_in_order(schema)]
    return rows + [{"name": c, "dtype": "string"} for c in BUILDER_COLUMNS]
