"""A denoiser-shaped test bed for inversion: the tiny random UNet on top of the analytic Gaussian prior.

A random-weight UNet is no denoiser: its noise predictions (std ~0.26) barely depend on the latent, so
the reverse DDIM flow *expands* (by up to sqrt(a_0 / a_T): 8.4 at 10 steps, 13.2 at 50) and any
inversion residual is amplified up to ~70-170x in MSE; a trained SD contracts towards its data instead. Adding
``sqrt(1 - a_t) * x``, the exact MMSE noise predictor for unit-Gaussian latents, restores that
property while keeping all of the UNet's dependence on the latent, the timestep and the caption (and
the gradient null-text inversion follows). Used by tests/p2p/test_p2p_inversion.py and
bench/bench_inversion.py; never by production code.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from editgen.p2p.generate import P2PPipeline


class GaussianPriorUNet(torch.nn.Module):
    """``eps(x, t, c) = sqrt(1 - a_t) * x + unet(x, t, c)`` (``a_t`` the scheduler's alpha-bar)."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.inner = unet
        self.alphas_cumprod = alphas_cumprod

    @property
    def config(self) -> Any:
        return self.inner.config

    def forward(self, sample: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                return_dict: bool = False, **kw: Any) -> tuple[torch.Tensor]:
        a = self.alphas_cumprod[int(t)].to(sample.dtype)
        out = self.inner(sample, t, encoder_hidden_states=encoder_hidden_states, return_dict=False, **kw)[0]
        return ((1 - a) ** 0.5 * sample + out,)


def with_unet(p2p: P2PPipeline, unet: torch.nn.Module) -> P2PPipeline:
    """A shallow copy of ``p2p`` whose pipeline calls ``unet``; every other component is shared."""
    other = copy.copy(p2p)
    other.pipe = copy.copy(p2p.pipe)
    other.pipe.unet = unet
    return other


def with_gaussian_prior(p2p: P2PPipeline) -> P2PPipeline:
    return with_unet(p2p, GaussianPriorUNet(p2p.pipe.unet, p2p.pipe.scheduler.alphas_cumprod))
