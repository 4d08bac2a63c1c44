"""Multi-turn sessions (`instruct.turns` > 1): how a session's turns are named, in one place.

A session is one input caption edited k times in a row, each turn editing the previous turn's edited
caption (docs/sessions.md). Every stage after instruct sees one row per turn; these two columns, present
only when sessions are on, tie the turns together: `session_id` (the input row's id, which is also turn
1's row id) and `turn` (1-based). Turn t's row id is `turn_id(session_id, t)`, so a shard key, a candidate's
RNG and a rerun all follow from the session and the turn alone.
"""

from __future__ import annotations

from collections.abc import Mapping
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
