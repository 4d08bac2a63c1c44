"""A tiny random-weight InstructPix2Pix pipeline for offline tests of the `instruct_model` engine.

InstructPix2Pix is Stable Diffusion whose UNet also reads the input image's latent: its first convolution
takes 8 channels (4 noisy latent + 4 image latent), initialised from SD's with the extra channels added
(Brooks et al. 2023, section 3.2). The tiny one is built the same way from the tiny SD (tiny.sd): the
same VAE, text encoder, tokenizer and scheduler, and the same UNet weights, with `conv_in` widened to 8
channels whose image half is seeded random (not zero, so the input image does steer a test's edit;
`widen_conv_in`, which `editgen train-probe` shares, zero-initialises it as the paper does). It is
saved as an ordinary diffusers folder (`StableDiffusionInstructPix2PixPipeline`) and loaded back through
``from_pretrained(..., use_safetensors=True)``, the path a hub id takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from editgen.tiny.folder import build_once
from editgen.tiny.sd import build_tiny_sd, default_cache_dir

TINY_IP2P_VERSION = 1  # bump when the construction changes, so cached folders get rebuilt
PIPELINE_CLASS = "StableDiffusionInstructPix2PixPipeline"


def widen_conv_in(unet: torch.nn.Module, extra: torch.Tensor | None = None) -> torch.nn.Module:
    """InstructPix2Pix's UNet from an SD UNet, in place: `conv_in` also reads the input image's latent
    (as many channels again). Its latent half keeps SD's weights and bias; the image half is `extra`, or
    zeros (Brooks et al. 2023, sec. 3.2: so the widened UNet starts out exactly as SD). Shared by the tiny
    IP2P test model and `editgen train-probe` (probe/base.py)."""
    old = unet.conv_in
    weight = old.weight.detach()
    added = torch.zeros_like(weight) if extra is None else extra.to(weight)
    wide = torch.nn.Conv2d(2 * old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                           device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([weight, added], dim=1))
        wide.bias.copy_(old.bias.detach())
    unet.conv_in = wide
    unet.register_to_config(in_channels=wide.in_channels)
    return unet


def _widened_unet(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The tiny IP2P's UNet: the image half seeded random, not zero, so the input image steers a test's edit."""
    weight = unet.conv_in.weight.detach()
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    return widen_conv_in(unet, torch.randn(weight.shape, generator=gen) * weight.std())


def _build(sd_folder: Path, seed: int):
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(str(sd_folder), use_safetensors=True, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    return StableDiffusionInstructPix2PixPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=_widened_unet(sd.unet, seed),
        scheduler=sd.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_ip2p(path: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Build (once) the tiny IP2P folder; a folder whose marker matches (version, seed) is reused. Written to
    a temporary sibling and renamed into place, so concurrent builders never expose a half-written model."""
    out = Path(path) if path is not None else default_cache_dir() / "tiny-ip2p"
    meta: dict[str, object] = {"version": TINY_IP2P_VERSION, "variant": "ip2p", "seed": seed}

    def write(folder: Path) -> None:
        _build(build_tiny_sd(folder.parent / "sd", "sd", seed=seed), seed).save_pretrained(
            str(folder), safe_serialization=True)

    return build_once(out, meta, write)


__all__ = ["PIPELINE_CLASS", "build_tiny_ip2p", "widen_conv_in"]
