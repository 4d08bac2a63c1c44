"""Multi-turn sessions in the instruct stage (`instruct.turns` > 1): the check only a chain of edits needs and
the table of its turn rows (docs/sessions.md, "Instruct: the chain of edits").

A session is one input row edited k times in a row, each turn editing the previous turn's edited caption.
The LLM sees one turn at a time, so it can undo the previous turn ("make the car red" after "make the car
blue"): such a turn adds nothing a single edit does not have, and its pair is the previous pair reversed,
so it is dropped (`SESSION_REPEATS`) and its session ends there. Rows, ids and the two session columns
follow `pipeline/sessions.py`, the one place every stage takes them from.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from editgen.p2p.edit_diff import normalized
from editgen.pipeline.sessions import SESSION_ID, TURN, turn_id

#: The session columns the stage appends when turns > 1, with fixed types (stable for all-null batches).
SESSION_FIELDS = (pa.field(SESSION_ID, pa.string()), pa.field(TURN, pa.int32()))


def repeats_caption(edited: str, earlier: Sequence[str | None]) -> bool:
    """Whether `edited` is one of the session's earlier captions, compared as the no-change check compares
    (case, whitespace and punctuation, a trailing period included, ignored)."""
    key = normalized(edited)
    return any(c is not None and normalized(c) == key for c in earlier)


def turn_rows(batch: pa.Table, turns: Sequence[int], captions: Sequence[str | None]) -> pa.Table:
    """The input rows of every emitted turn, session by session, turn by turn: input row i repeated
    `turns[i]` times, with id = turn_id(session, t), `captions` (one per emitted turn: the turn's input
    caption) and the session columns appended. Every other input column is copied from the session's row."""
    sessions = [str(x) for x in batch.column("id").to_pylist()]
    take = [i for i, n in enumerate(turns) for _ in range(n)]
    numbers = [t for n in turns for t in range(1, n + 1)]
    if len(captions) != len(take):
        raise ValueError(f"{len(captions)} captions for {len(take)} turns")
    table = batch.take(pa.array(take, pa.int64()))
    for f in SESSION_FIELDS:
        if f.name in table.column_names:
            table = table.drop_columns([f.name])
    ids = [turn_id(sessions[i], t) for i, t in zip(take, numbers, strict=True)]
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    caption_type = table.schema.field("caption").type
    table = table.set_column(
        table.schema.get_field_index("caption"), "caption", pa.array(list(captions), caption_type)
    )
    table = table.append_column(SESSION_FIELDS[0], pa.array([sessions[i] for i in take], pa.string()))
    return table.append_column(SESSION_FIELDS[1], pa.array(numbers, pa.int32()))
