"""Whole-image consistency of a before/after pair: `ssim`, and the range checks of the consistency
metrics (`dinov2_sim`: filters.pairs.dino_score; `ssim`) with their drop reasons.

`ssim` is the mean SSIM of the input and edited images over every 11x11 window (Gaussian, sigma 1.5,
K1 0.01, K2 0.03, RGB channels averaged): the same computation as `outside_mask_ssim`
(filters.pairs.outside_mask.ssim_map), over the whole image instead of the windows clear of the mask,
so for a pair without a mask the two would agree. NaN where an image does not decode or the two sizes
differ. Each metric has a minimum (too low: the edit replaced the picture) and a maximum (too high:
nothing visible was edited, UltraEdit's `max_dinov2` cap); NaN (the metric off, or undefined) is never
checked.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from editgen.filters.pairs.outside_mask import ssim_map

if TYPE_CHECKING:
    import torch

SSIM_COLUMNS = ("ssim",)
#: Part of the score cache's key: bump when the same images would score differently.
SSIM_VERSION = 1
_WINDOW = 11
#: (score column, reason stem) in check order: below before above, DINOv2 before SSIM.
RANGE_CHECKS = (("dinov2_sim", "dinov2"), ("ssim", "ssim"))
#: The score columns the range checks read (present only where their metric is on).
CONSISTENCY_COLUMNS = tuple(column for column, _ in RANGE_CHECKS)


def ssim_key() -> str:
    """What the cached `ssim` scores depend on besides the render partition."""
    return f"ssim/{SSIM_VERSION}"


def _pixels(data: bytes) -> torch.Tensor:
    import torch  # here, not at the top: the driver and the CLI import this module for its column names

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]


def whole_ssim(input_image: bytes, edited_image: bytes) -> float:
    """Mean SSIM of the two images (module doc); NaN when either does not decode or their sizes differ."""
    try:
        a, b = _pixels(input_image), _pixels(edited_image)
    except (OSError, ValueError, SyntaxError):
        return math.nan
    if a.shape != b.shape:
        return math.nan
    return float(ssim_map(a, b, min(_WINDOW, a.shape[-1], a.shape[-2])).double().mean())


def ssim_scores(inputs: Sequence[bytes | None], edited: Sequence[bytes | None]) -> dict[str, np.ndarray]:
    """`ssim` per candidate (NaN where undefined)."""
    return {"ssim": np.array([whole_ssim(a, b) if a and b else math.nan for a, b in zip(inputs, edited, strict=True)],
                             np.float64)}


def range_reason(scores: Mapping[str, float], bounds: Mapping[str, tuple[float | None, float | None]]) -> str | None:
    """The first `below_<stem>` / `above_<stem>` in RANGE_CHECKS order whose bound (min, max) the candidate's
    score misses; None when every bound holds, is unset, or the score is NaN / absent (metric off)."""
    for column, stem in RANGE_CHECKS:
        lo, hi = bounds.get(stem, (None, None))
        v = float(scores.get(column, math.nan))
        if math.isnan(v):
            continue
        if lo is not None and v < lo:
            return f"below_{stem}"
        if hi is not None and v > hi:
            return f"above_{stem}"
    return None
