"""Reconstruction fidelity of real-image pairs: PSNR and SSIM of the reconstruction vs the real image.

A real-image candidate's source row re-renders the photograph from its inversion; where that
reconstruction is poor, the edit was made on a different picture than the one the shard shows as its
input, so the filter drops the pair as ``poor_inversion`` (filters.pairs.select).

torch is imported inside the functions that compute: the driver and every CLI command import this module
(through filters.pairs.select) for its names alone, and torch costs them seconds.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

POOR_INVERSION = "poor_inversion"
FIDELITY_COLUMNS = ("recon_psnr", "recon_ssim")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images in ``[0, data_range]`` (inf when equal)."""
    import torch

    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering)
    of images ``(B, C, H, W)``, per channel then averaged. The window shrinks to fit images under 11 px."""
    import torch.nn.functional as F

    a, b = a.double(), b.double()
    size = min(window, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size, sigma, a.shape[1]).to(a.device)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=a.shape[1])

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def image_pixels(image: Image.Image, dtype: np.dtype | type = np.float64) -> torch.Tensor:
    """An image as (1, 3, H, W) RGB in [0, 1], the layout psnr/ssim take."""
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=dtype) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].contiguous()


def _pixels(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        return image_pixels(im)


def image_fidelity(real: bytes, reconstruction: bytes) -> tuple[float, float]:
    """(PSNR dB, SSIM) of the stored reconstruction vs the stored real image, as a training loader sees
    them; NaN, NaN when either does not decode or their sizes differ."""
    try:
        a, b = _pixels(real), _pixels(reconstruction)
    except (OSError, ValueError):
        return math.nan, math.nan
    if a.shape != b.shape:
        return math.nan, math.nan
    return psnr(b, a), ssim(b, a)


def fidelity_scores(reals: Sequence[bytes | None], recons: Sequence[bytes | None]) -> dict[str, np.ndarray]:
    """recon_psnr / recon_ssim per candidate; NaN where there is no reconstruction (generated pairs)."""
    pairs = [image_fidelity(a, b) if a and b else (math.nan, math.nan) for a, b in zip(reals, recons, strict=True)]
    return {"recon_psnr": np.array([p for p, _ in pairs], np.float64),
            "recon_ssim": np.array([s for _, s in pairs], np.float64)}


def poor_inversion(psnr_db: float, ssim_v: float, min_psnr: float | None, min_ssim: float | None) -> bool:
    """A real-image candidate whose reconstruction misses a threshold (NaN = generated: never poor)."""
    return bool((min_psnr is not None and psnr_db < min_psnr) or (min_ssim is not None and ssim_v < min_ssim))
