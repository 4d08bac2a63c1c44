"""Selection of multi-turn sessions (`instruct.turns` > 1, docs/sessions.md): the prefix rule.

A chain is one candidate followed through a session's turns: (session id, candidate), turn t's image
being the input of turn t+1 for that same candidate. A chain is only usable as far as every turn before
is, so it is kept as a prefix: turns 1..L, L = the first turn that fails its thresholds (or is missing)
minus one. A turn that passed its thresholds after that is dropped as `session_turn_after_failure`.
`filter.top_k` then counts chains per session, not turns: chains are ranked by (L desc, mean
sim_direction over the prefix desc, candidate asc) and the passing turns of a chain beyond k are
`not_top_k`. Every turn keeps exactly one reason, so drop counts still add up to the candidates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

#: A turn that passed its own thresholds but follows a failing turn of its chain.
SESSION_TURN_AFTER_FAILURE = "session_turn_after_failure"


def _prefix(turns: dict[int, int], reasons: Sequence[str | None]) -> list[int]:
    """Row indices of a chain's kept prefix (turns 1, 2, ... while present and passing)."""
    rows: list[int] = []
    t = 1
    while t in turns and reasons[turns[t]] is None:
        rows.append(turns[t])
        t += 1
    return rows


def select_chains(
    sessions: Sequence[tuple[str, int] | None],
    candidates: Sequence[int],
    threshold_reasons: Sequence[str | None],
    direction: np.ndarray,
    top_k: int | None,
    not_top_k: str,
) -> tuple[list[str | None], list[int | None]]:
    """(reason, rank) for the session rows (None entries of `sessions` are left as they come: reason from
    `threshold_reasons`, rank None). A kept or `not_top_k` turn's rank is its chain's rank in its session."""
    reasons = list(threshold_reasons)
    ranks: list[int | None] = [None] * len(reasons)
    chains: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for i, st in enumerate(sessions):
        if st is not None:
            chains[(st[0], int(candidates[i]))][st[1]] = i
    by_session: dict[str, list[tuple[int, float, int, list[int]]]] = defaultdict(list)
    for (sid, cand), turns in chains.items():
        prefix = _prefix(turns, reasons)
        for i in set(turns.values()) - set(prefix):
            if reasons[i] is None:
                reasons[i] = SESSION_TURN_AFTER_FAILURE
        if prefix:
            mean = float(np.mean([float(direction[i]) for i in prefix]))
            by_session[sid].append((-len(prefix), -mean, cand, prefix))
    for ranked in by_session.values():
        ranked.sort(key=lambda c: c[:3])
        for rank, (*_, prefix) in enumerate(ranked):
            for i in prefix:
                ranks[i] = rank
                if top_k is not None and rank >= top_k:
                    reasons[i] = not_top_k
    return reasons, ranks
