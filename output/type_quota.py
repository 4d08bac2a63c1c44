"""`shard.type_quota`: cap or balance the kept samples per edit type, deterministically.

A lab asks for a mix (docs/edit_types.md); the filter keeps whatever passes. The shard stage sees every
kept sample at once, so the cap is decided there, in two passes over the filter's partitions: the first
reads only the columns that decide (id, candidate, status, type, `sim_direction`), the second writes the
shards with the samples over their type's cap turned into drops (`over_type_quota`, in the rejected tars
when those are exported). Within a type the samples with the highest directional CLIP similarity stay,
ties broken by a hash of the sample key, so the same config over the same partitions keeps the same
samples on every rerun and machine, whatever the partition order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from editgen.output.shard_writer import sample_key
from editgen.pipeline.records import read_verified
from editgen.pipeline.settings.shard import OTHER_TYPES
from editgen.pipeline.stage import KEPT, REQUESTED_COLUMN, TYPE_COLUMN, UNTYPED
from editgen.pipeline.storage import Storage, parquet_file

OVER_QUOTA = "over_type_quota"
SCORE = "sim_direction"
Quota = int | dict[str, int] | str
Sample = tuple[str, str, float | None]  # (sample key, edit type, sim_direction)


def sample_type(row: Mapping[str, Any]) -> str:
    """A sample's edit type: its answer's, else the one asked for, else `untyped` (pipeline.stage.row_types)."""
    return row.get(TYPE_COLUMN) or row.get(REQUESTED_COLUMN) or UNTYPED


def caps(quota: Quota, counts: Mapping[str, int]) -> dict[str, int | None]:
    """Each present type's cap under `quota` (None: uncapped), given its kept count."""
    if quota == "balance":
        low = min(counts.values(), default=0)
        return {t: low for t in counts}
    if isinstance(quota, int):
        return {t: quota for t in counts}
    assert isinstance(quota, dict)
    return {t: quota.get(t, quota.get(OTHER_TYPES)) for t in counts}


def _rank(sample: Sample) -> tuple[float, str]:
    key, _, score = sample
    return (-(score if score is not None else float("-inf")), hashlib.sha256(key.encode()).hexdigest())


def select(samples: Iterable[Sample], quota: Quota) -> set[str]:
    """The keys that stay among kept (key, type, score) samples: per type, the best `cap` of them."""
    by_type: dict[str, list[Sample]] = {}
    for sample in samples:
        by_type.setdefault(sample[1], []).append(sample)
    limit = caps(quota, {t: len(v) for t, v in by_type.items()})
    keep: set[str] = set()
    for t, group in by_type.items():
        group.sort(key=_rank)
        cap = limit[t]
        keep.update(k for k, _, _ in (group if cap is None else group[:cap]))
    return keep


def kept_samples(storage: Storage, parts: Iterable[tuple[str, str, str | None]]) -> Iterator[Sample]:
    """(key, type, sim_direction) of every kept sample of the finished partitions (verified reads, only
    the deciding columns parsed)."""
    wanted = ["id", "candidate", "status", TYPE_COLUMN, REQUESTED_COLUMN, SCORE]
    for directory, fname, sha256 in parts:
        pf = parquet_file(read_verified(storage, directory, fname, sha256, "shard"))
        names = set(pf.schema_arrow.names)
        for row in pf.read(columns=[c for c in wanted if c in names]).to_pylist():
            if row.get("status", KEPT) == KEPT:
                yield sample_key(row["id"], row["candidate"]), sample_type(row), row.get(SCORE)


class QuotaGate:
    """The second pass: rows as they stream to the writer, those over their type's cap turned into
    drops; counts each type's kept and over-quota samples for the funnel and the stage's accounting."""

    def __init__(self, keep: set[str] | None) -> None:
        self.keep = keep
        self.kept: dict[str, int] = {}
        self.over: dict[str, int] = {}

    def rows(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            if row.get("status", KEPT) == KEPT:
                t = sample_type(row)
                if self.keep is not None and sample_key(row["id"], row["candidate"]) not in self.keep:
                    self.over[t] = self.over.get(t, 0) + 1
                    row = {**row, "status": "dropped", "drop_reason": OVER_QUOTA}
                else:
                    self.kept[t] = self.kept.get(t, 0) + 1
            yield row
