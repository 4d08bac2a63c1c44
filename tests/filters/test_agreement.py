"""Agreement of a score with labels (filters.pairs.agreement): average ranks, Spearman with ties, the best
threshold, accuracy at a rule; and the score registry (filters.pairs.score_registry) against the modules
that compute the scores and the settings that threshold them."""

from __future__ import annotations

import math

import pytest

from editgen.filters.pairs.agreement import agreement, average_ranks, best_threshold, clears, spearman
from editgen.filters.pairs.clip_score import SCORE_COLUMNS
from editgen.filters.pairs.fidelity import FIDELITY_COLUMNS
from editgen.filters.pairs.outside_mask import OUTSIDE_MASK_COLUMNS
from editgen.filters.pairs.score_registry import CLIP_RANK, CLIP_RULE, SCORES, by_name, setting, thresholds
from editgen.pipeline.config import build_config


def test_average_ranks_share_ties():
    assert average_ranks([5, 1, 5]).tolist() == [2.5, 1.0, 2.5]
    assert average_ranks([0.3, 0.1, 0.3, 0.3, 0.2]).tolist() == [4.0, 1.0, 4.0, 4.0, 2.0]


def test_spearman_by_hand_with_ties_on_both_sides():
    # scores ranks [1, 3.5, 5, 3.5, 2, 6]; labels (0/1) ranks [2, 5, 5, 2, 2, 5]: sum dxdy 12, 17, 13.5
    rho = spearman([0.10, 0.25, 0.30, 0.25, 0.15, 0.40], [0, 1, 1, 0, 0, 1])
    assert rho == pytest.approx(12 / math.sqrt(17 * 13.5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) is None  # a constant side: undefined, not 0
    assert spearman([1.0], [1.0]) is None


def test_best_threshold_first_maximum_and_nothing_passes():
    scores, labels = [0.10, 0.25, 0.30, 0.25, 0.15, 0.40], [False, True, True, False, False, True]
    assert best_threshold(scores, labels) == (0.25, pytest.approx(5 / 6))  # 0.30 agrees as often: more permissive wins
    # lower is better: pass = score <= t
    assert best_threshold([0.0, 0.05, 0.2, 0.3, 0.01], [False, True, False, False, True], False) == (
        0.05, pytest.approx(0.8))
    assert best_threshold([0.5, 0.6], [False, False]) == (None, 1.0)  # every label fails: nothing passes


def test_agreement_skips_missing_scores_and_counts_them_out():
    nan = float("nan")
    result = agreement([0.1, nan, 0.3, None], [0, 1, 1, 1], [False, True, True, True],
                       [clears(v, 0.2, None) if v is not None else False for v in [0.1, nan, 0.3, None]])
    assert result.n == 2 and result.accuracy == 1.0 and result.spearman == pytest.approx(1.0)
    assert agreement([nan], [1], [True]).n == 0
    assert clears(0.5, 0.2, 0.9) and not clears(0.95, 0.2, 0.9) and not clears(nan, 0.2, None)


def test_registry_names_every_stored_score_and_real_settings():
    names = [s.name for s in SCORES]
    assert len(names) == len(set(names))
    assert {*SCORE_COLUMNS, *FIDELITY_COLUMNS, *OUTSIDE_MASK_COLUMNS} <= set(names)
    assert set(CLIP_RULE) == set(SCORE_COLUMNS) and CLIP_RANK in CLIP_RULE
    cfg = build_config(overrides=["filter.max_outside_mask_l1=0.1", "filter.min_sim_direction=0.3"])
    for s in SCORES:  # every threshold path is a setting of the schema (a typo would silently mean "no threshold")
        for path in (s.minimum, s.maximum):
            if path is not None:
                section, key = path.split(".")
                assert key in type(getattr(cfg, section)).model_fields, path
    assert thresholds(cfg, by_name()["outside_mask_l1"]) == (None, 0.1)
    assert thresholds(cfg, by_name()["sim_direction"]) == (0.3, None)
    assert setting(cfg, "nosuch.min_score") is None  # a section this checkout does not have
