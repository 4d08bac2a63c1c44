"""Selection of candidates from their scores: thresholds, then top-k per pair by direction (per
session over chains of turns when rows belong to sessions: filters.pairs.sessions).

Pure functions over stored scores, so changing a threshold or k re-runs this (seconds) and never
rendering or CLIP. Every candidate gets one named reason, checked in a fixed order, so drop counts
add up to the number of candidates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from editgen.filters.pairs.consistency import CONSISTENCY_COLUMNS, range_reason
from editgen.filters.pairs.fidelity import POOR_INVERSION, poor_inversion
from editgen.filters.pairs.outside_mask import CHANGED_OUTSIDE_MASK, OUTSIDE_MASK_COLUMNS, changed_outside
from editgen.filters.pairs.sessions import select_chains

if TYPE_CHECKING:
    from editgen.pipeline.settings.filter import FilterConfig

BAD_IMAGE = "bad_image"  # image missing or undecodable: no scores
NOT_TOP_K = "not_top_k"


@dataclass(frozen=True)
class Thresholds:
    """Minimum score per criterion; defaults are InstructPix2Pix's released-data settings."""

    sim_image: float = 0.75
    sim_direction: float = 0.2
    sim_0: float = 0.2
    sim_1: float = 0.2
    recon_psnr: float | None = None  # real-image pairs only (NaN scores = generated: not checked)
    recon_ssim: float | None = None
    outside_l1: float | None = None  # pairs with an edit mask only (NaN scores = whole image: not checked)
    outside_ssim: float | None = None
    #: Consistency bounds (min, max): checked where the metric was computed (NaN = off: not checked).
    dinov2: tuple[float | None, float | None] = (0.3, 0.9)
    ssim: tuple[float | None, float | None] = (None, None)

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> Thresholds:
        return cls(cfg.min_sim_image, cfg.min_sim_direction, cfg.min_sim_0, cfg.min_sim_1,
                   cfg.min_reconstruction_psnr, cfg.min_reconstruction_ssim,
                   cfg.max_outside_mask_l1, cfg.min_outside_mask_ssim,
                   (cfg.min_dinov2, cfg.max_dinov2), (cfg.min_ssim, cfg.max_ssim))

    def items(self) -> list[tuple[str, float]]:
        """Check order: the first failing criterion names the drop."""
        return [
            ("sim_image", self.sim_image),
            ("sim_direction", self.sim_direction),
            ("sim_0", self.sim_0),
            ("sim_1", self.sim_1),
        ]


def threshold_reason(scores: Mapping[str, float], th: Thresholds) -> str | None:
    """None if the candidate passes every threshold, else the first failing one in this order:
    `poor_inversion` (a real-image candidate whose reconstruction misses its threshold: the edit was made
    on another picture), `changed_outside_mask` (the edit spilled outside its mask:
    filters.pairs.outside_mask), bad_image, `below_<clip score>`, then the consistency bounds
    (filters.pairs.consistency): `below_dinov2`, `above_dinov2`, `below_ssim`, `above_ssim`. The
    consistency checks come last so that turning them on never renames a drop the CLIP rule already made:
    their counts are exactly what they add."""
    psnr_db, ssim_v = float(scores.get("recon_psnr", math.nan)), float(scores.get("recon_ssim", math.nan))
    if poor_inversion(psnr_db, ssim_v, th.recon_psnr, th.recon_ssim):
        return POOR_INVERSION
    l1, out_ssim = (float(scores.get(c, math.nan)) for c in OUTSIDE_MASK_COLUMNS)
    if changed_outside(l1, out_ssim, th.outside_l1, th.outside_ssim):
        return CHANGED_OUTSIDE_MASK
    values = [float(scores[name]) for name, _ in th.items()]
    if any(math.isnan(v) for v in values):
        return BAD_IMAGE
    for (name, minimum), v in zip(th.items(), values, strict=True):
        if v < minimum:
            return f"below_{name}"
    return range_reason(scores, {"dinov2": th.dinov2, "ssim": th.ssim})


def select(
    pair_ids: Sequence[str],
    candidates: Sequence[int],
    scores: Mapping[str, np.ndarray],
    th: Thresholds,
    top_k: int | None,
    sessions: Sequence[tuple[str, int] | None] | None = None,
) -> tuple[list[str | None], list[int | None]]:
    """(reason per candidate — None = kept —, rank by sim_direction among passing candidates). With
    `sessions` ((session id, turn) per candidate, None outside a session), session rows follow the prefix
    rule and top-k over chains (filters.pairs.sessions); the other rows are ranked per pair as always."""
    n = len(pair_ids)
    optional = ("recon_psnr", "recon_ssim", *OUTSIDE_MASK_COLUMNS, *CONSISTENCY_COLUMNS)
    keys = [k for k, _ in th.items()] + [k for k in optional if k in scores]
    reasons: list[str | None] = [threshold_reason({k: scores[k][i] for k in keys}, th) for i in range(n)]
    ranks: list[int | None] = [None] * n
    if sessions is not None:
        reasons, ranks = select_chains(sessions, candidates, reasons, scores["sim_direction"], top_k, NOT_TOP_K)
    passing: dict[str, list[int]] = defaultdict(list)
    for i in range(n):
        if reasons[i] is None and (sessions is None or sessions[i] is None):
            passing[pair_ids[i]].append(i)
    direction = scores["sim_direction"]
    for rows in passing.values():
        rows.sort(key=lambda i: (-float(direction[i]), int(candidates[i])))  # ties: lower candidate
        for rank, i in enumerate(rows):
            ranks[i] = rank
            if top_k is not None and rank >= top_k:
                reasons[i] = NOT_TOP_K
    return reasons, ranks
