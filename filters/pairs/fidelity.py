"""Reconstruction fidelity of real-image pairs: PSNR and SSIM of the reconstruction vs the real image.

A real-image candidate's source row re-renders the photograph from its inversion; where that
reconstruction is poor, the edit was made on a different picture than the one the shard shows as its
input, so the filter drops the pair as ``poor_inversion`` (filters.pairs.select).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images in ``[0, data_range]`` (inf when equal)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering)
    of images ``(B, C, H, W)``, per channel then averaged. The window shrinks to fit images under 11 px."""
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
