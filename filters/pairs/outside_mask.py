"""Change outside the edit mask: how much an edit spilled beyond the region it was meant to change.

A pair whose engine gave an edit mask ("edits spill outside the mask" is the standing complaint about
region edits) is scored on the pixels outside the mask dilated by `filter.outside_mask.dilation` (a
fraction of the image's shorter side, rounded up to whole pixels; a square dilation), so the mask's
soft edge and the blur of a latent-resolution mask do not count as spill:

- `outside_mask_l1`: mean absolute difference of the input and edited images' RGB values (0..1,
  255 = 1) over the pixels outside the dilated mask; 0 when none of them changed;
- `outside_mask_ssim`: mean SSIM (11x11 Gaussian window, sigma 1.5, as filters.pairs.fidelity) over
  the windows lying wholly outside the dilated mask, so a change inside it never reaches the score;
  1 when nothing outside changed.

Both are null (NaN here) where the mask is the whole image (no mask: nothing is "outside"), where
nothing lies outside the dilated mask, or where an image or the mask does not decode or their sizes
differ. `filter.max_outside_mask_l1` / `filter.min_outside_mask_ssim` (default off) drop a pair as
`changed_outside_mask` (filters.pairs.select).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from editgen.filters.pairs.masks import decode_mask

if TYPE_CHECKING:
    import torch

OUTSIDE_MASK_COLUMNS = ("outside_mask_l1", "outside_mask_ssim")
CHANGED_OUTSIDE_MASK = "changed_outside_mask"
#: Part of the score cache's key: bump when the same images would score differently.
METRIC_VERSION = 1
_WINDOW, _SIGMA = 11, 1.5


def outside_mask_key(dilation: float) -> str:
    """What the cached scores depend on besides the render partition."""
    return f"outside_mask/{METRIC_VERSION}:dilation={dilation!r}"


def dilation_px(dilation: float, height: int, width: int) -> int:
    return math.ceil(dilation * min(height, width) - 1e-9) if dilation > 0 else 0


def _grow(mask: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """Max over a size x size square (separable: two 1-D passes), `pad` pixels of padding each side."""
    import torch.nn.functional as F  # deferred: the driver and the CLI import this module for its names only

    if size <= 1:
        return mask
    mask = F.max_pool2d(mask, (size, 1), stride=1, padding=(pad, 0))
    return F.max_pool2d(mask, (1, size), stride=1, padding=(0, pad))


def ssim_map(a: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
    """Per-window SSIM ('valid' windows, separable Gaussian), channels averaged: (H-size+1, W-size+1), of
    images (1, C, H, W) in [0, 1]. Also the whole-image `ssim` (filters.pairs.consistency): its mean."""
    import torch
    import torch.nn.functional as F
    x = torch.arange(size, dtype=a.dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * _SIGMA**2))
    g = g / g.sum()
    c = a.shape[1]
    stack = torch.cat([a, b, a * a, b * b, a * b], 1)
    n = stack.shape[1]
    stack = F.conv2d(stack, g.view(1, 1, size, 1).expand(n, 1, size, 1).contiguous(), groups=n)
    stack = F.conv2d(stack, g.view(1, 1, 1, size).expand(n, 1, 1, size).contiguous(), groups=n)
    mu_a, mu_b, aa, bb, ab = stack.split(c, 1)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * (ab - mu_a * mu_b) + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * ((aa - mu_a**2) + (bb - mu_b**2) + c2))
    return s.mean(1)[0]


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def outside_change(input_image: bytes, edited_image: bytes, mask: bytes | None,
                   dilation: float) -> tuple[float, float]:
    """(outside_mask_l1, outside_mask_ssim) of one pair (module doc); NaN, NaN where undefined."""
    import torch
    if not mask:
        return math.nan, math.nan
    try:
        region, before, after = decode_mask(mask), _rgb(input_image), _rgb(edited_image)
    except (OSError, ValueError, SyntaxError):
        return math.nan, math.nan
    h, w = region.shape
    if region.all() or before.shape != after.shape or before.shape[:2] != (h, w):
        return math.nan, math.nan
    r = dilation_px(dilation, h, w)
    grown = _grow(torch.from_numpy(region.astype(np.float32))[None, None], 2 * r + 1, r)[0, 0] > 0
    outside = ~grown.numpy()
    if not outside.any():
        return math.nan, math.nan
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16))[outside]
    l1 = float(diff.mean(dtype=np.float64) / 255.0)
    size = min(_WINDOW, h, w)
    windows = _grow(grown.float()[None, None], size, 0)[0, 0] == 0  # windows clear of the dilated mask
    if not bool(windows.any()):
        return l1, math.nan
    a, b = (torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1)[None] for x in (before, after))
    return l1, float(ssim_map(a, b, size)[windows].double().mean())


def outside_mask_scores(inputs: Sequence[bytes | None], edited: Sequence[bytes | None],
                        masks: Sequence[bytes | None], dilation: float) -> dict[str, np.ndarray]:
    """outside_mask_l1 / outside_mask_ssim per candidate (NaN where undefined)."""
    pairs = [outside_change(a, b, m, dilation) if a and b else (math.nan, math.nan)
             for a, b, m in zip(inputs, edited, masks, strict=True)]
    return {"outside_mask_l1": np.array([p[0] for p in pairs], np.float64),
            "outside_mask_ssim": np.array([p[1] for p in pairs], np.float64)}


def changed_outside(l1: float, ssim_v: float, max_l1: float | None, min_ssim: float | None) -> bool:
    """A pair whose change outside its mask passes a threshold (NaN = no mask: never)."""
    return bool((max_l1 is not None and l1 > max_l1) or (min_ssim is not None and ssim_v < min_ssim))
