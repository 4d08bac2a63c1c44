"""`shard.type_quota`: cap or balance the kept samples per edit type, deterministically.

A lab asks for a mix (docs/edit_types.md); the filter keeps whatever passes. The shard stage sees every
kept sample at once, so the cap is decided there, in two passes over the filter's partitions: the first
reads only the columns that decide (id, candidate, status, type, `sim_direction`), the second writes the
shards with the samples over their type's cap turned into drops (`over_type_quota`, in the rejected tars
when those are exported). Within a type the samples with the highest directional CLIP similarity stay,
ties broken by a hash of the sample key, so the same config over the same partitions keeps the same
samples on every rerun and machine, whatever the partition order. Multi-turn sessions are capped turn by
turn (docs/sessions.md): a turn competes for its type's room only once its previous turn stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from editgen.output.shard_writer import sample_key
from editgen.pipeline.records import read_verified
from editgen.pipeline.sessions import SESSION_ID, TURN, session_of, turn_id
from editgen.pipeline.settings.shard import OTHER_TYPES
from editgen.pipeline.stage import KEPT, REQUESTED_COLUMN, TYPE_COLUMN, UNTYPED
from editgen.pipeline.storage import Storage, parquet_file

OVER_QUOTA = "over_type_quota"
SCORE = "sim_direction"
Quota = int | dict[str, int] | str
#: (sample key, edit type, sim_direction[, the sample key of the session turn before it, or None])
Sample = tuple[str, str, float | None] | tuple[str, str, float | None, str | None]


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
    key, score = sample[0], sample[2]
    return (-(score if score is not None else float("-inf")), hashlib.sha256(key.encode()).hexdigest())


def select(samples: Iterable[Sample], quota: Quota) -> set[str]:
    """The keys that stay among kept samples (key, type, score[, the key of the session turn before it]):
    per type, the best `cap` of them. A session's turns are chosen turn by turn (all turns 1 first, then
    the turns 2 whose turn 1 stays, ...), so a cap never keeps a turn whose previous turn it dropped."""
    items = list(samples)
    prev = {item[0]: (item[3] if len(item) > 3 else None) for item in items}  # type: ignore[misc]
    counts: dict[str, int] = {}
    for item in items:
        counts[item[1]] = counts.get(item[1], 0) + 1
    room = caps(quota, counts)
    levels: dict[int, list[Sample]] = {}
    for item in items:
        levels.setdefault(_level(item[0], prev), []).append(item)
    keep: set[str] = set()
    for level in sorted(levels):
        by_type: dict[str, list[Sample]] = {}
        for item in levels[level]:
            before = prev[item[0]]
            if before is None or before in keep:
                by_type.setdefault(item[1], []).append(item)
        for t, group in by_type.items():
            group.sort(key=_rank)
            cap = room[t]
            chosen = group if cap is None else group[:cap]
            keep.update(item[0] for item in chosen)
            room[t] = None if cap is None else cap - len(chosen)
    return keep


def _level(key: str, prev: Mapping[str, str | None]) -> int:
    """1 for a sample outside a session or a turn 1, else 1 + its previous turn's level."""
    depth, seen = 1, key
    while prev.get(seen) is not None and depth <= len(prev):
        seen, depth = str(prev[seen]), depth + 1
    return depth


def kept_samples(storage: Storage, parts: Iterable[tuple[str, str, str | None]]) -> Iterator[Sample]:
    """(key, type, sim_direction, previous turn's key or None) of every kept sample of the finished
    partitions (verified reads, only the deciding columns parsed)."""
    wanted = ["id", "candidate", "status", TYPE_COLUMN, REQUESTED_COLUMN, SCORE, SESSION_ID, TURN]
    for directory, fname, sha256 in parts:
        pf = parquet_file(read_verified(storage, directory, fname, sha256, "shard"))
        names = set(pf.schema_arrow.names)
        for row in pf.read(columns=[c for c in wanted if c in names]).to_pylist():
            if row.get("status", KEPT) == KEPT:
                found = session_of(row)
                before = None if found is None or found[1] == 1 else sample_key(turn_id(found[0], found[1] - 1),
                                                                                  row["candidate"])
                yield sample_key(row["id"], row["candidate"]), sample_type(row), row.get(SCORE), before


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
