"""Multi-turn sessions (`instruct.turns` > 1): how a session's turns are named, in one place.

A session is one input caption edited k times in a row, each turn editing the previous turn's edited
caption (docs/sessions.md). Every stage after instruct sees one row per turn; these two columns, present
only when sessions are on, tie the turns together: `session_id` (the input row's id, which is also turn
1's row id) and `turn` (1-based). Turn t's row id is `turn_id(session_id, t)`, so a shard key, a candidate's
RNG and a rerun all follow from the session and the turn alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SESSION_ID, TURN = "session_id", "turn"
COLUMNS = (SESSION_ID, TURN)


def turn_id(session_id: str, turn: int) -> str:
    """Row id of turn `turn` (1-based): the session id for turn 1, else `<session_id>-t<turn>`."""
    if turn < 1:
        raise ValueError(f"turns count from 1, got {turn}")
    return session_id if turn == 1 else f"{session_id}-t{turn}"


def session_of(row: Mapping[str, Any]) -> tuple[str, int] | None:
    """(session id, turn) of a row, or None for a row outside any session (no or null session columns)."""
    sid, turn = row.get(SESSION_ID), row.get(TURN)
    if sid is None or turn is None:
        return None
    return str(sid), int(turn)


#: Drop reason of a turn whose session ended before it (an earlier turn was dropped, so the image it would
#: edit does not exist).
AFTER_FAILURE = "session_turn_after_failure"


def session_units(rows: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[int]]:
    """Row indices grouped into what renders as one unit: a row outside any session alone, a session's
    turns 1, 2, ... together (in turn order, as far as they are contiguous from turn 1); and the indices
    of session rows left over (a turn whose predecessor is missing), which cannot render."""
    units: list[list[int]] = []
    sessions: dict[str, dict[int, int]] = {}
    order: list[str] = []
    for i, row in enumerate(rows):
        found = session_of(row)
        if found is None:
            units.append([i])
            continue
        sid, turn = found
        if sid not in sessions:
            sessions[sid] = {}
            order.append(sid)
        sessions[sid].setdefault(turn, i)
    orphans = [i for i, row in enumerate(rows) if (f := session_of(row)) is not None and sessions[f[0]].get(f[1]) != i]
    for sid in order:
        turns = sessions[sid]
        run = []
        while len(run) + 1 in turns:
            run.append(turns[len(run) + 1])
        orphans += [i for t, i in turns.items() if t > len(run)]
        if run:
            units.append(run)
    return units, sorted(orphans)
