"""Reading a judge's answer: three scores 0-10, each with a one-sentence reason (prompts/judge.py's schema).

Tolerant where a model's JSON habits are harmless (a code fence, a trailing comma, 7.0 for 7, "7" for 7,
surrounding prose), strict where the answer is not a judgement: a missing or out-of-range score, a missing
or empty reason. Such an answer is re-asked (judge.max_attempts) and then dropped as `judge_unparseable`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from editgen.llm.parse import _candidates, _objects, clean_text
from editgen.prompts.judge import SCORES

#: Drop reason of a pair whose answers stayed malformed through every attempt.
UNPARSEABLE = "judge_unparseable"


@dataclass(frozen=True)
class JudgeAnswer:
    """One judgement: score and reason per criterion (SCORES order)."""

    scores: dict[str, int]
    reasons: dict[str, str]


def _score(value: object) -> int | None:
    """An integer 0-10 (an integral float or a numeric string too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and float(value).is_integer() and 0 <= value <= 10:
        return int(value)
    return None


def parse_judgement(text: str | None, max_reason_chars: int = 240) -> JudgeAnswer | None:
    """The first object in `text` with every score and reason valid; None when there is none."""
    if not text or not text.strip():
        return None
    for candidate in _candidates(text):
        for obj in _objects(candidate):
            if not isinstance(obj, dict):
                continue
            scores = {name: _score(obj.get(name)) for name in SCORES}
            reasons = {name: clean_text(obj.get(f"{name}_reason") or "")[:max_reason_chars] for name in SCORES}
            if all(v is not None for v in scores.values()) and all(reasons.values()):
                return JudgeAnswer({k: int(v) for k, v in scores.items() if v is not None}, reasons)
    return None
