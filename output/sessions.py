"""Multi-turn sessions in the shards (`instruct.turns` > 1, docs/sessions.md): how the turns of a session
are linked, and what each of their samples carries.

A kept session turn's JSON gains `"session": {"id", "turn", "prev", "first"}`: `prev` is the sample key of
the same candidate's previous turn (null for turn 1), `first` the key of its turn 1, so a reader follows a
chain from any turn. Each sample also carries the session's first input image as `<key>.first_input.<ext>`
(samples stay self-contained: a training loop conditioning on the whole session needs no other sample).
Turn 1's is its own input image: every sample of a session dataset has the same members, which readers
that build one schema per dataset (Ray Data) need; for the same reason an inverse pair of a session turn
(a plain pair, no `session` block, output.inverse) carries its own input image as its `first_input`.

Rows come session by session, each chain's turns in order (instruct emits them so; render and the filter
keep partition order), so this state is one session's first input images and last written turns: memory
is bounded by one session. A kept turn is published only right after its chain's previous turn was (a
`prev` that resolves): a turn whose previous turn is not in the shards (dropped by a quota, an undecodable
image) is dropped as `session_prev_missing`. The shard writer never cuts a tar inside a session
(output.shard_writer.ShardSetWriter's `group`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from editgen.output.keys import sample_key
from editgen.pipeline.sessions import SESSION_ID, session_of, turn_id

#: The sample JSON's field and the image member's stem.
SESSION_FIELD = "session"
FIRST_INPUT = "first_input"
#: Why a kept turn is not published: its chain's previous turn is not in the shards.
PREV_MISSING = "session_prev_missing"
#: The manifest section (present only for a dataset with sessions).
MANIFEST_SECTION = "sessions"


class SessionGap(ValueError):
    """A session turn that cannot be published with its links (reason: PREV_MISSING)."""

    reason = PREV_MISSING


def session_block(session_id: str, turn: int, candidate: int) -> dict[str, Any]:
    """The sample JSON's `session` field: ids and keys that link a turn to its chain."""
    return {"id": session_id, "turn": turn,
            "prev": sample_key(turn_id(session_id, turn - 1), candidate) if turn > 1 else None,
            "first": sample_key(session_id, candidate)}


class SessionChains:
    """Streaming state of the current session (module doc); `active` once a row has the session columns."""

    def __init__(self) -> None:
        self.active = False
        self._sid: str | None = None
        self._first: dict[int, bytes] = {}
        self._written: dict[int, int] = {}  # candidate -> last turn published in the kept set
        self.sessions = 0
        self._counted: str | None = None
        self.turns: Counter[int] = Counter()

    def group(self, row: dict[str, Any]) -> str | None:
        """The row's session id: a shard writer keeps its samples in one tar."""
        st = session_of(row)
        return st[0] if st else None

    def prepare(self, row: dict[str, Any], kept: bool) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """(the row with its `session` block, [(FIRST_INPUT, bytes)]); a row outside sessions comes back as
        it is, with its own input as first input in a session dataset. Raises SessionGap (module doc)."""
        self.active = self.active or SESSION_ID in row
        st = session_of(row)
        if st is None:
            return row, self.own_first_input(row)
        sid, turn = st
        cand = int(row["candidate"])
        if sid != self._sid:
            self._sid, self._first, self._written = sid, {}, {}
        if turn == 1 and row.get("input_image"):
            self._first.setdefault(cand, bytes(row["input_image"]))
        first = self._first.get(cand)
        if turn > 1 and (first is None or (kept and self._written.get(cand) != turn - 1)):
            raise SessionGap(f"session {sid}: turn {turn} of candidate {cand} without its previous turn")
        images = [(FIRST_INPUT, first)] if first else []  # none: turn 1 without input (dropped as such)
        return {**row, SESSION_FIELD: session_block(sid, turn, cand)}, images

    def own_first_input(self, row: dict[str, Any]) -> list[tuple[str, bytes]]:
        """A plain pair's first input in a session dataset (its own input image), else nothing."""
        data = row.get("input_image")
        return [(FIRST_INPUT, bytes(data))] if self.active and data else []

    def published(self, row: dict[str, Any]) -> None:
        """A kept turn's sample is in the shards: its chain may go on, and it is counted."""
        st = session_of(row)
        if st is None:
            return
        sid, turn = st
        self._written[int(row["candidate"])] = turn
        if sid != self._counted:  # its first published sample (a turn 1: later turns need theirs)
            self._counted = sid
            self.sessions += 1
        self.turns[turn] += 1

    def summary(self) -> dict[str, Any] | None:
        """The manifest's `sessions` section: sessions with a published turn, samples per turn; None (left
        out) for a dataset without sessions."""
        if not self.turns:
            return None
        return {"sessions": self.sessions, "turn_samples": {str(t): n for t, n in sorted(self.turns.items())}}


#: Shard-stage metrics of a session dataset (what `editgen status` reports): sessions, samples per turn.
SESSIONS_METRIC, TURN_METRIC = "sessions", "session_turn_samples:"


def session_metrics(section: Mapping[str, Any] | None) -> dict[str, float]:
    """The manifest's sessions section as flat metrics (none without sessions)."""
    if not section:
        return {}
    found = {SESSIONS_METRIC: float(section["sessions"])}
    found.update({TURN_METRIC + t: float(n) for t, n in section["turn_samples"].items()})
    return found


def session_counts(metrics: Mapping[str, float]) -> dict[str, Any] | None:
    """Inverse of `session_metrics`: {sessions, turn_samples: {turn: n}} (None: no sessions)."""
    if SESSIONS_METRIC not in metrics:
        return None
    turns = {k[len(TURN_METRIC):]: int(v) for k, v in metrics.items() if k.startswith(TURN_METRIC)}
    ordered = dict(sorted(turns.items(), key=lambda kv: int(kv[0])))
    return {"sessions": int(metrics[SESSIONS_METRIC]), "turn_samples": ordered}

