"""Agreement between human labels and a stored score: accuracy of a pass rule and Spearman's rank
correlation (ties get average ranks), so a lab can check a judge or a threshold before trusting it with a
GPU-week (docs/calibration.md). Pure functions over plain lists; no scipy (not a dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """One score (or rule) against the labels of the samples it has a finite value for.

    `accuracy`: share of samples whose predicted pass/fail equals the label at the configured rule (None
    when no rule is configured); `best_threshold` / `best_accuracy`: the threshold on the score that agrees
    most (pass = score >= t, or <= t for a lower-is-better score; None = nothing passes);
    `spearman`: rank correlation of the raw score with the label value (None when undefined)."""

    n: int
    accuracy: float | None
    best_threshold: float | None
    best_accuracy: float | None
    spearman: float | None


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span ([5, 1, 5] -> [2.5, 1, 2.5])."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation of the average ranks; None with fewer than 2 samples or a constant side."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return None if denom == 0 else float((da * db).sum()) / denom


def clears(score: float, minimum: float | None, maximum: float | None) -> bool:
    """The filter's rule for one score: at least its minimum and at most its maximum (unset: no check)."""
    return (minimum is None or score >= minimum) and (maximum is None or score <= maximum)


def best_threshold(scores: Sequence[float], passed: Sequence[bool],
                   higher_is_better: bool = True) -> tuple[float | None, float]:
    """(threshold, accuracy) of the single cut on the score that best reproduces the labels. Candidates are
    the score's own values (pass = score >= t, or <= t) and "nothing passes" (threshold None); ties go to
    the most permissive threshold."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(passed, dtype=bool)
    cuts = np.unique(s)
    if not higher_is_better:
        cuts = cuts[::-1]
    predicted = (s[None, :] >= cuts[:, None]) if higher_is_better else (s[None, :] <= cuts[:, None])
    accs = (predicted == y[None, :]).mean(axis=1) if len(cuts) else np.zeros(0)
    none_pass = float((~y).mean())
    if not len(accs) or none_pass > accs.max():
        return None, none_pass
    best = int(np.argmax(accs))  # first maximum: the most permissive cut
    return float(cuts[best]), float(accs[best])


def agreement(scores: Sequence[float], values: Sequence[float], passed: Sequence[bool],
              predicted: Sequence[bool] | None = None, higher_is_better: bool = True) -> Agreement:
    """A score against labels (`values`: the label as a number, `passed`: as pass/fail), over the samples
    whose score is finite; `predicted`: the configured rule's pass/fail per sample, when there is one."""
    keep = [i for i, v in enumerate(scores) if v is not None and math.isfinite(v)]
    s = [float(scores[i]) for i in keep]
    y = [bool(passed[i]) for i in keep]
    if not keep:
        return Agreement(0, None, None, None, None)
    acc = None
    if predicted is not None:
        acc = sum(bool(predicted[i]) == bool(passed[i]) for i in keep) / len(keep)
    cut, best = best_threshold(s, y, higher_is_better)
    return Agreement(len(keep), acc, cut, best, spearman(s, [float(values[i]) for i in keep]))
