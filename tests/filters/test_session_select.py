"""Selection of multi-turn sessions: each chain (session, candidate) is kept as a prefix of passing turns,
top-k counts chains per session, every turn keeps one reason (filters.pairs.sessions)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa

from editgen.filters.pairs.outside_mask import OUTSIDE_MASK_COLUMNS
from editgen.filters.pairs.select import NOT_TOP_K, Thresholds, select
from editgen.filters.pairs.sessions import SESSION_TURN_AFTER_FAILURE
from editgen.pipeline.config import build_config
from editgen.pipeline.sessions import SESSION_ID, TURN, turn_id
from editgen.stages.filter import apply_selection

AFTER = SESSION_TURN_AFTER_FAILURE


def _rows(spec):
    """spec: [(session, turn, candidate, sim_direction)] -> ids, candidates, sessions, scores."""
    ids = [turn_id(s, t) for s, t, _, _ in spec]
    n = len(spec)
    scores = {"sim_direction": np.array([d for *_, d in spec], np.float32),
              "sim_image": np.full(n, 0.9, np.float32), "sim_0": np.full(n, 0.3, np.float32),
              "sim_1": np.full(n, 0.3, np.float32)}
    return ids, [c for _, _, c, _ in spec], [(s, t) for s, t, _, _ in spec], scores


def test_a_failing_turn_2_keeps_turn_1_only():
    spec = [("s", 1, 0, 0.5), ("s", 2, 0, 0.1), ("s", 3, 0, 0.6)]  # turn 2 below sim_direction (0.2)
    ids, cands, sessions, scores = _rows(spec)
    reasons, ranks = select(ids, cands, scores, Thresholds(), top_k=4, sessions=sessions)
    assert reasons == [None, "below_sim_direction", AFTER]
    assert ranks == [0, None, None]


def test_a_failing_turn_1_drops_the_chain_and_a_missing_turn_ends_the_prefix():
    spec = [("s", 1, 0, 0.0), ("s", 2, 0, 0.5), ("s", 1, 1, 0.5), ("s", 3, 1, 0.5)]
    ids, cands, sessions, scores = _rows(spec)
    reasons, ranks = select(ids, cands, scores, Thresholds(), top_k=None, sessions=sessions)
    assert reasons == ["below_sim_direction", AFTER, None, AFTER]
    assert ranks == [None, None, 0, None]


def test_top_k_ranks_chains_by_prefix_length_then_mean_direction_then_candidate():
    # chain c0: 3 turns, mean .3; c1: 2 turns (turn 3 fails), mean .9; c2: 3 turns mean .5; c3 = c2's scores
    spec = [("s", 1, 0, 0.3), ("s", 2, 0, 0.3), ("s", 3, 0, 0.3),
            ("s", 1, 1, 0.9), ("s", 2, 1, 0.9), ("s", 3, 1, 0.0),
            ("s", 1, 2, 0.5), ("s", 2, 2, 0.5), ("s", 3, 2, 0.5),
            ("s", 1, 3, 0.5), ("s", 2, 3, 0.5), ("s", 3, 3, 0.5),
            ("u", 1, 0, 0.4), ("u", 2, 0, 0.4)]  # another session: its own top-k
    ids, cands, sessions, scores = _rows(spec)
    reasons, ranks = select(ids, cands, scores, Thresholds(), top_k=2, sessions=sessions)
    assert ranks[:12] == [2, 2, 2, 3, 3, None, 0, 0, 0, 1, 1, 1]  # c2 ties c3: lower candidate first
    assert reasons[:12] == [NOT_TOP_K] * 3 + [NOT_TOP_K, NOT_TOP_K, "below_sim_direction"] + [None] * 6
    assert reasons[12:] == [None, None] and ranks[12:] == [0, 0]
    counts = Counter(reasons)  # one reason per turn: the counts add up
    assert sum(counts.values()) == len(spec) and counts[None] == 8


def test_rows_outside_sessions_keep_the_per_pair_rule():
    spec = [("s", 1, 0, 0.5), ("s", 1, 1, 0.6), ("p", 1, 0, 0.3), ("p", 1, 1, 0.4)]
    ids, cands, sessions, scores = _rows(spec)
    sessions[2:] = [None, None]
    reasons, ranks = select(ids, cands, scores, Thresholds(), top_k=1, sessions=sessions)
    assert reasons == [NOT_TOP_K, None, NOT_TOP_K, None] and ranks == [1, 0, 1, 0]
    plain = select(ids[2:], cands[2:], {k: v[2:] for k, v in scores.items()}, Thresholds(), top_k=1)
    assert plain == (reasons[2:], ranks[2:])


def _table(spec, sessions=True):
    ids, cands, sess, scores = _rows(spec)
    cols = {"id": ids, "candidate": pa.array(cands, pa.int32()),
            "input_image": [b"x"] * len(ids), "edited_image": [b"y"] * len(ids)}
    if sessions:
        cols[SESSION_ID] = [s for s, _ in sess]
        cols[TURN] = pa.array([t for _, t in sess], pa.int32())
    scores.update({c: np.full(len(ids), math.nan, np.float32) for c in OUTSIDE_MASK_COLUMNS})
    return pa.table(cols), scores


def test_apply_selection_reads_the_session_columns_and_reruns_from_stored_scores():
    spec = [("s", 1, 0, 0.25), ("s", 2, 0, 0.5), ("s", 1, 1, 0.6), ("s", 2, 1, 0.6)]
    table, scores = _table(spec)
    cfg = build_config().filter
    out = apply_selection(table, scores, cfg, "m")
    assert out["drop_reason"].to_pylist() == [None] * 4 and out["filter_rank"].to_pylist() == [1, 1, 0, 0]
    stricter = cfg.model_copy(update={"min_sim_direction": 0.3})  # a selection-only rerun
    out = apply_selection(table, scores, stricter, "m")
    assert out["drop_reason"].to_pylist() == ["below_sim_direction", AFTER, None, None]
    assert out["status"].to_pylist() == ["dropped", "dropped", "kept", "kept"]
    assert out["filter_rank"].to_pylist() == [None, None, 0, 0]
    plain, _ = _table(spec, sessions=False)  # the same rows without session columns: per pair, as always
    out = apply_selection(plain, scores, stricter, "m")
    assert out["drop_reason"].to_pylist() == ["below_sim_direction", None, None, None]
    assert out["filter_rank"].to_pylist() == [None, 1, 0, 0]
