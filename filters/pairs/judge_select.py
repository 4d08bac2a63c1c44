"""Selection on the judge's scores: thresholds per score, then top-k by a weighted combined score.

Pure functions over stored scores (docs/judge.md): the order is InstructPix2Pix's CLIP rule first (the
filter stage already applied it), then the judge. A judged candidate is dropped by the first score under
its minimum (`judge_below_<score>`, rubric order), then, with `judge.top_k`, by rank within its pair (per
turn row: a session turn is its own pair) on `judge_score` = sum(w x s) / sum(w), the judge's 0-10 scores
scaled to 0-1 and CLIP's similarities as they are; ties: the lower candidate index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from editgen.pipeline.settings.judge import SCORES

#: A candidate beyond `judge.top_k` of its pair (it passed every threshold).
NOT_TOP_K = "judge_not_top_k"


def below_reason(scores: Mapping[str, int], minimum: Mapping[str, int]) -> str | None:
    """`judge_below_<score>` for the first score under its minimum, else None."""
    for name in SCORES:
        if scores[name] < minimum[name]:
            return f"judge_below_{name}"
    return None


def combined(values: Mapping[str, float | None], weights: Mapping[str, float]) -> float:
    """The weighted mean of the weighed scores (judge scores scaled from 0-10 to 0-1); NaN when a weighed
    score is missing."""
    total = sum(weights.values())
    acc = 0.0
    for name, w in weights.items():
        v = values.get(name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return math.nan
        acc += w * (float(v) / 10.0 if name in SCORES else float(v))
    return acc / total


def top_k(pairs: Sequence[str], candidates: Sequence[int], score: Sequence[float], passing: Sequence[bool],
          k: int | None) -> list[bool]:
    """Which passing candidates are within the best `k` of their pair by `score` (all of them without k)."""
    keep = list(passing)
    if k is None:
        return keep
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        if passing[i]:
            groups.setdefault(p, []).append(i)
    for rows in groups.values():
        rows.sort(key=lambda i: (-(score[i] if not math.isnan(score[i]) else -math.inf), int(candidates[i])))
        for rank, i in enumerate(rows):
            keep[i] = rank < k
    return keep
