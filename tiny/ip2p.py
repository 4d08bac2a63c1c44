"""A tiny random-weight InstructPix2Pix pipeline for offline tests of the `instruct_model` engine.

InstructPix2Pix is Stable Diffusion whose UNet also reads the input image's latent: its first convolution
takes 8 channels (4 noisy latent + 4 image latent), initialised from SD's with the extra channels added
(Brooks et al. 2023, section 3.2). The tiny one is built the same way from the tiny SD (tiny.sd): the
same VAE, text encoder, tokenizer and scheduler, and the same UNet weights, with `conv_in` widened to 8
channels whose image half is seeded random (not zero, so the input image does steer a test's edit). It is
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


def _widened_unet(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The SD UNet with an 8-channel `conv_in`: latent half SD's weights, image half seeded random."""
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel.from_config({**dict(unet.config), "in_channels": 8})
    state = unet.state_dict()
    old = state.pop("conv_in.weight")
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    extra = torch.randn(old.shape, generator=gen) * old.std()
    state["conv_in.weight"] = torch.cat([old, extra], dim=1)
    wide.load_state_dict(state)
    return wide


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


__all__ = ["PIPELINE_CLASS", "build_tiny_ip2p"]
