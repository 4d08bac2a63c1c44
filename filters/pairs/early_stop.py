"""Early stop for rendering: stop drawing candidates for a pair once k of them pass the filter.

InstructPix2Pix drew a fixed number of candidates per pair and kept the top k; most pairs reach k
passing candidates long before that. Render scores candidates as they finish (filters.pairs.clip_score),
feeds them here, and stops a pair when `add` returns True; `drawn(pair)` is recorded per pair
(column `candidates_drawn`). The filter stage still applies thresholds and top-k afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from editgen.filters.pairs.select import Thresholds, threshold_reason

if TYPE_CHECKING:
    from editgen.pipeline.settings.filter import FilterConfig


def pair_done(passed: int, drawn: int, k: int | None, max_candidates: int, min_candidates: int = 0) -> bool:
    """A pair is done when it has drawn `max_candidates`, or k passed and at least `min_candidates` drawn."""
    if drawn >= max_candidates:
        return True
    return k is not None and passed >= k and drawn >= min_candidates


@dataclass
class EarlyStop:
    """Per-pair counters of drawn and passing candidates.

    `min_candidates` > k buys some top-k choice by sim_direction at the cost of extra draws.
    """

    k: int | None = 4
    max_candidates: int = 100
    thresholds: Thresholds = field(default_factory=Thresholds)
    min_candidates: int = 0
    _drawn: dict[str, int] = field(default_factory=dict, repr=False)
    _passed: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg: FilterConfig, max_candidates: int, min_candidates: int = 0) -> EarlyStop:
        return cls(cfg.top_k, max_candidates, Thresholds.from_config(cfg), min_candidates)

    def add(self, pair_id: str, scores: Mapping[str, float]) -> bool:
        """Record one finished candidate (its four CLIP scores); True when the pair should stop."""
        self._drawn[pair_id] = self._drawn.get(pair_id, 0) + 1
        if threshold_reason(scores, self.thresholds) is None:
            self._passed[pair_id] = self._passed.get(pair_id, 0) + 1
        return self.done(pair_id)

    def done(self, pair_id: str) -> bool:
        return pair_done(
            self.passed(pair_id), self.drawn(pair_id), self.k, self.max_candidates, self.min_candidates
        )

    def drawn(self, pair_id: str) -> int:
        return self._drawn.get(pair_id, 0)

    def passed(self, pair_id: str) -> int:
        return self._passed.get(pair_id, 0)

    def remaining(self, pair_id: str) -> int:
        """Most candidates still worth drawing for this pair now (size the next render batch with it)."""
        if self.done(pair_id):
            return 0
        need = self.max_candidates - self.drawn(pair_id)
        if self.k is None:
            return need
        return min(need, max(self.k - self.passed(pair_id), self.min_candidates - self.drawn(pair_id), 1))
