"""The rows the shard stage publishes when stages after the filter judge its kept rows (docs/judge.md).

A judging stage (the VLM judge) sees only the rows the filter kept, so its partitions hold those rows,
each kept or dropped by the judge. The rejected export (`shard.export_rejected`) is for every candidate
that was rejected: the filter's own rejects are put back here, each at its place in the filter's
partition, so a session's turns stay in order and the rejected set is the filter-only one plus the
judge's rejects. A filter-rejected row gets the judge's columns as nulls (it was never judged), so every
rejected sample's JSON has the same fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from editgen.output.shard_writer import iter_rows
from editgen.pipeline.errors import DamagedInput
from editgen.pipeline.stage import KEPT
from editgen.pipeline.storage import Storage

#: A finished partition: (directory, file, sha256 from its record).
Part = tuple[str, str, str | None]


def _row_key(row: dict[str, Any]) -> tuple[str, int]:
    return str(row.get("id")), int(row.get("candidate") or 0)


def with_earlier_rejects(storage: Storage, judged: Iterable[tuple[int, Part]], screened: dict[int, Part],
                         added: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Each judged partition's rows, with the same-numbered filter partition's rejects in filter order.

    `judged`: (pid, part) of the judging stage in publication order; `screened`: pid -> the filter's part;
    `added`: the columns the judging stages add (null on a filter reject).
    A judged row must be the filter's next kept row (same id and candidate); anything else means the two
    stages' outputs disagree, which DamagedInput names (a rerun recomputes them)."""
    for pid, part in judged:
        earlier = screened.get(pid)
        if earlier is None:
            raise DamagedInput(f"shard: {part[0]}/{part[1]} has no filter partition {pid}; rerun `editgen run`")
        later = iter_rows(storage, [part])
        for row in iter_rows(storage, [earlier]):
            if row.get("status", KEPT) != KEPT:
                yield {**row, **{k: None for k in added if k not in row}}
                continue
            judged_row = next(later, None)
            if judged_row is None or _row_key(judged_row) != _row_key(row):
                raise _mismatch(part, earlier, row)
            yield judged_row
        leftover = next(later, None)
        if leftover is not None:
            raise _mismatch(part, earlier, leftover)


def _mismatch(part: Part, earlier: Part, row: dict[str, Any]) -> DamagedInput:
    return DamagedInput(f"shard: {part[0]}/{part[1]} does not follow {earlier[0]}/{earlier[1]} at row "
                        f"{row.get('id')!r} candidate {row.get('candidate')}; rerun `editgen run` with "
                        "--from judge")
