"""Re-generating a masked region under a new caption: GLIDE-style inpainting or Blended Latent Diffusion.

With an inpainting UNet (9 input channels: the latent, the mask and the masked source's latent, as
`stable-diffusion-v1-5/stable-diffusion-inpainting` and the SDXL inpainting model take them) each step's
input is `[latent, mask, masked-image latent]`; without one, the base UNet denoises the whole latent and
after every step the latent outside the mask is set to the source's latent noised to the next step's
level (Avrahami et al.'s blended latent diffusion; diffusers' inpainting pipeline does the same for a
4-channel UNet). Both follow the diffusers loop step for step (p2p.generate's helpers: prompts, seeded
CPU noise, scheduler), start from the candidate's seeded noise, and are deterministic on a device and
dtype. The decode is pasted onto the source through the feathered alpha (p2p.masks.paste), so every
pixel where the alpha is 0 is the source's, byte for byte.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from editgen.p2p.generate import (
    _DTYPE_KWARG,
    P2PPipeline,
    RenderRequest,
    check_inputs,
    decode,
    encode_prompts,
    initial_noise,
    prepare_timesteps,
)
from editgen.p2p.masks import image_mask, paste

#: Input channels of an inpainting UNet: latent (4) + mask (1) + masked-image latent (4).
INPAINT_CHANNELS = 9


@dataclass
class Region:
    """What a candidate re-generates, from one source: its latent, its pixels, the mask and the alpha."""

    latent: torch.Tensor  # (1, C, h, w): the generated source's final latent, or a photo's VAE mean
    pixels: np.ndarray  # (H, W, 3) uint8: what the edit is pasted onto
    mask: torch.Tensor  # (h, w) bool on the latent grid: the region re-generated
    alpha: np.ndarray  # (H, W) uint8: the paste-back alpha (255 on the region, feathered around it)


def load_unet(model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """An inpainting UNet from a hub id or a local folder (its `unet/` subfolder, or the folder itself
    when it is a UNet's), safetensors only: the path the base model loads through."""
    from diffusers import UNet2DConditionModel

    local = os.path.isdir(model)
    sub = "unet" if not local or os.path.isfile(os.path.join(model, "unet", "config.json")) else None
    unet = UNet2DConditionModel.from_pretrained(model, subfolder=sub, use_safetensors=True, **{_DTYPE_KWARG: dtype})
    unet.to(device)
    return unet.eval().requires_grad_(False)


def check_unet(p2p: P2PPipeline, unet: Any, name: str) -> None:
    """ValueError (one line) when the inpainting UNet cannot run with the base model's text encoder."""
    cfg, base = unet.config, p2p.pipe.unet.config
    if cfg.in_channels != INPAINT_CHANNELS:
        raise ValueError(f"{name}: an inpainting UNet takes {INPAINT_CHANNELS} input channels, this one "
                         f"{cfg.in_channels}")
    if cfg.cross_attention_dim != base.cross_attention_dim:
        raise ValueError(f"{name}: its UNet reads {cfg.cross_attention_dim}-dim text states, the base model's "
                         f"encoder gives {base.cross_attention_dim} (pick the inpainting model of the same family)")
    if cfg.addition_embed_type != base.addition_embed_type:
        raise ValueError(f"{name}: its added conditioning ({cfg.addition_embed_type}) is not the base model's "
                         f"({base.addition_embed_type}): SDXL base needs an SDXL inpainting UNet and vice versa")


def normalized(pixels: np.ndarray) -> torch.Tensor:
    """uint8 `(H, W, 3)` pixels as the VAE's `(1, 3, H, W)` input in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def encode_pixels(p2p: P2PPipeline, x: torch.Tensor) -> torch.Tensor:
    """The VAE latent (posterior mean, so deterministic) of a `(1, 3, H, W)` image in [-1, 1], scaled as
    the UNet reads it (the inverse of p2p.generate.decode's scaling)."""
    vae = p2p.pipe.vae
    dtype = next(vae.post_quant_conv.parameters()).dtype
    with torch.inference_mode():
        mean = vae.encode(x.to(p2p.device, dtype)).latent_dist.mean
    cfg = vae.config
    lm, ls = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if lm is not None and ls is not None:
        m = torch.tensor(lm).view(1, -1, 1, 1).to(mean.device, mean.dtype)
        s = torch.tensor(ls).view(1, -1, 1, 1).to(mean.device, mean.dtype)
        return ((mean - m) * cfg.scaling_factor / s).to(p2p.dtype)
    return (mean * cfg.scaling_factor).to(p2p.dtype)


def _conditioning(p2p: P2PPipeline, region: Region, cfg: bool) -> torch.Tensor:
    """The inpainting UNet's extra channels: the mask and the latent of the source with the region
    blanked (diffusers' `image * (mask < 0.5)`), doubled for CFG."""
    keep = torch.from_numpy(~image_mask(region.mask, region.pixels.shape[:2]))
    masked = encode_pixels(p2p, normalized(region.pixels) * keep[None, None])
    mask = region.mask.to(p2p.device, p2p.dtype)[None, None]
    extra = torch.cat([mask, masked.to(p2p.device, p2p.dtype)], dim=1)
    return torch.cat([extra] * 2) if cfg else extra


def regenerate_region(p2p: P2PPipeline, request: RenderRequest, region: Region, unet: Any | None = None,
                      ) -> np.ndarray:
    """The region re-generated under `request.source` (the edited caption), pasted onto the source:
    uint8 `(H, W, 3)`. `unet`: an inpainting UNet, or None for latent blending with the base UNet."""
    check_inputs(p2p, [request])
    cfg = request.guidance > 1.0
    scheduler = prepare_timesteps(p2p, request)
    noise, gen = initial_noise(request.seed, tuple(region.latent.shape))
    latents = noise.to(p2p.device, p2p.dtype) * scheduler.init_noise_sigma
    params = inspect.signature(scheduler.step).parameters
    step_kwargs: dict[str, Any] = {"eta": 0.0} if "eta" in params else {}
    if "generator" in params:
        step_kwargs["generator"] = gen
    keep = region.mask.to(p2p.device)[None, None]
    source = region.latent.to(p2p.device, p2p.dtype)
    with torch.inference_mode():
        embeds, added = encode_prompts(p2p, [request.source], request.negative_prompt, cfg, request.height,
                                       request.width)
        extra = _conditioning(p2p, region, cfg) if unet is not None else None
        model = unet if unet is not None else p2p.pipe.unet
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
            if extra is not None:
                model_in = torch.cat([model_in, extra], dim=1)
            pred = model(model_in, t, encoder_hidden_states=embeds, timestep_cond=None, added_cond_kwargs=added,
                         return_dict=False)[0]
            if cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + request.guidance * (cond - uncond)
            latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            if unet is None:  # blended latent diffusion: outside the mask, the source at the next level
                level = source if i == len(timesteps) - 1 else scheduler.add_noise(
                    source, noise.to(p2p.device, p2p.dtype), timesteps[i + 1 : i + 2])
                latents = torch.where(keep, latents, level)
        image = decode(p2p, latents)[0]
    edited = (image * 255).round().astype(np.uint8)
    return paste(region.pixels, edited, region.alpha)
