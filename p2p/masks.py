"""Edit-region masks: pure functions from attention maps or noise differences to a mask, and back to pixels.

A region mask starts on the latent grid as a bool `(h, w)` tensor: from the accumulated cross-attention
maps of the words an edit changes (`attention_region`: dilated, smoothed, normalised, thresholded; with
LocalBlend's settings it is exactly LocalBlend's mask) or from DiffEdit's noise-difference map
(`noise_region`). At image size (`image_mask`, nearest, as the mask PNGs always were) it is described
(`describe`: area fraction, bounding box, checksum, the words and the kind of map it came from), checked
(`area_check`), feathered (`feather_alpha`: 255 on the region, a ramp over `px` pixels around it, 0
beyond) and used to paste an edit back onto its source (`paste`): integer arithmetic, so wherever the
alpha is 0 the result's bytes are the source's, exactly. No model code here: the engines and the P2P
render loop call these, and tests feed them synthetic maps.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

NORMALIZE = ("max", "minmax")
#: Where a mask came from (the `source` of its description).
SOURCES = ("cross_attention", "diffedit", "local_blend")
#: Widest feather band in pixels: every ramp value stays >= 1, so alpha == 0 means "outside" exactly.
MAX_FEATHER = 254


def _gaussian(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (1, 1, h, w) map (edges replicated), weights computed in float64."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).to(m.dtype).to(m.device)
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def attention_region(grid: torch.Tensor, latent_hw: tuple[int, int], threshold: float, dilate: int = 3,
                     smooth: float = 0.0, normalize: str = "max") -> torch.Tensor:
    """The region a word's accumulated attention map marks, as a bool `(h, w)` mask on the latent grid.

    `grid` is the map on its attention grid (`(h', w')` or `(1, 1, h', w')`). It is max-pooled over
    `dilate` x `dilate` cells (dilation), blurred with a Gaussian of `smooth` cells (0: none), upsampled
    (nearest) to `latent_hw`, normalised (`max`: by its maximum; `minmax`: to [0, 1] between its minimum
    and maximum) and thresholded. `dilate=3, smooth=0, normalize="max"` is LocalBlend's mask, op for op.
    """
    if dilate < 1 or dilate % 2 == 0:
        raise ValueError(f"dilate must be an odd number >= 1, got {dilate}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    m = grid.reshape(1, 1, *grid.shape[-2:]).float()
    if dilate > 1:
        m = F.max_pool2d(m, kernel_size=dilate, stride=1, padding=dilate // 2)
    if smooth > 0:
        m = _gaussian(m, smooth)
    m = F.interpolate(m, size=latent_hw, mode="nearest")
    tiny = torch.finfo(m.dtype).tiny
    if normalize == "max":
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(tiny)
    else:
        lo = m.amin(dim=(2, 3), keepdim=True)
        m = (m - lo) / (m.amax(dim=(2, 3), keepdim=True) - lo).clamp_min(tiny)
    return m[0, 0] > threshold


def noise_region(heat: torch.Tensor, threshold: float) -> torch.Tensor:
    """DiffEdit's region: its normalised noise-difference map (`p2p.inversion.diffedit_mask`) above
    `threshold`, a bool `(h, w)` mask on the latent grid."""
    return heat > threshold


def union(masks: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The OR of the masks given (None entries skipped); None when there are none."""
    found = [m for m in masks if m is not None]
    if not found:
        return None
    out = found[0]
    for m in found[1:]:
        out = out | m
    return out


def image_mask(mask: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A latent-grid bool mask at image size `(H, W)` (nearest, as `p2p.candidates.encode_mask` writes it)."""
    pil = Image.fromarray(mask.cpu().numpy().astype("uint8") * 255)
    return np.asarray(pil.resize((size[1], size[0]), Image.NEAREST)) > 0


def feather_px(fraction: float, size: tuple[int, int]) -> int:
    """A feather width given as a fraction of the image's shorter side, in whole pixels."""
    return min(MAX_FEATHER, int(round(fraction * min(size))))


def feather_alpha(mask: np.ndarray, px: int) -> np.ndarray:
    """uint8 alpha of a bool image mask: 255 on it, `255 (px + 1 - d) / (px + 1)` (rounded, >= 1) at
    chessboard distance `d` = 1..px from it, 0 beyond. Max-pooling is exact, so it is deterministic."""
    if not 0 <= px <= MAX_FEATHER:
        raise ValueError(f"feather must be 0..{MAX_FEATHER} pixels, got {px}")
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    grown = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
    for d in range(1, px + 1):
        wider = F.max_pool2d(grown, kernel_size=3, stride=1, padding=1)
        ring = ((wider > 0) & ~(grown > 0))[0, 0].numpy()
        alpha[ring] = (255 * (px + 1 - d) + (px + 1) // 2) // (px + 1)
        grown = wider
    return alpha


def paste(source: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`alpha * edited + (1 - alpha) * source` on uint8 `(H, W, 3)` images with a uint8 alpha, in integers:
    where alpha is 0 the result is the source's bytes, where it is 255 the edit's."""
    if source.shape != edited.shape or source.shape[:2] != alpha.shape:
        raise ValueError(f"paste: shapes differ (source {source.shape}, edited {edited.shape}, alpha {alpha.shape})")
    a = alpha.astype(np.uint32)[..., None]
    out = (a * edited.astype(np.uint32) + (255 - a) * source.astype(np.uint32) + 127) // 255
    return out.astype(np.uint8)


def checksum(mask: np.ndarray) -> str:
    """SHA-256 of a bool image mask (its shape and packed bits): what a record stores to prove a
    recomputed mask is the one it was rendered with."""
    bits = np.packbits(np.ascontiguousarray(mask, dtype=bool))
    return hashlib.sha256(f"{mask.shape}".encode() + bits.tobytes()).hexdigest()


def bbox(mask: np.ndarray) -> list[int] | None:
    """`[x0, y0, x1, y1]` in pixels (x1, y1 exclusive) of a bool image mask; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def describe(mask: np.ndarray, source: str, words: Sequence[str], **settings: Any) -> dict[str, Any]:
    """A mask's description (a record's `mask`): where it came from, the words, its area fraction,
    bounding box, size and checksum, plus the settings it was made with."""
    if source not in SOURCES:
        raise ValueError(f"mask source must be one of {SOURCES}, got {source!r}")
    return {"source": source, "words": list(words), "area_fraction": float(mask.mean()), "bbox": bbox(mask),
            "size": [int(mask.shape[0]), int(mask.shape[1])], "sha256": checksum(mask), **settings}


def area_check(fraction: float, min_area: float, max_area: float) -> str | None:
    """`too_small` / `too_large` when the area fraction lies outside [min_area, max_area], else None."""
    if fraction < min_area:
        return "too_small"
    if fraction > max_area:
        return "too_large"
    return None


def encode_png(alpha: np.ndarray) -> bytes:
    """A uint8 (or bool) mask as an 8-bit grayscale PNG (255 = edited)."""
    arr = alpha.astype(np.uint8) * 255 if alpha.dtype == bool else alpha
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
