"""Tiny random-weight Stable Diffusion (1.x-style) and SDXL pipelines for offline tests and benches.

There is no model hub here, so tests build miniature pipelines in code with the *real* CLIP tokenizer
(see ``tiny.clip_tokenizer``) and save them as ordinary diffusers pipeline folders. Loading them back
goes through ``from_pretrained(..., use_safetensors=True)``, the same path production uses with hub ids.
The architecture keeps SD's shape where it matters for Prompt-to-Prompt: 77-token CLIP conditioning,
cross-attention at several resolutions (latent/1 .. latent/4 for SD, latent/2 .. latent/4 for SDXL),
a VAE with an 8x downsampling factor, and SDXL's two text encoders with ``text_time`` conditioning.
Weights are a deterministic function of ``seed`` (and the library versions).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from editgen.pipeline.cache import cache_dir
from editgen.tiny.clip_tokenizer import EOS, write_clip_tokenizer
from editgen.tiny.folder import build_once

TINY_VERSION = 1  # bump when the architecture changes, so cached folders get rebuilt
VARIANTS = ("sd", "sdxl")


def default_cache_dir() -> Path:
    """Where tiny models and the tokenizer are cached (pipeline.cache.cache_dir)."""
    return cache_dir()


def _text_config(projection_dim: int | None = None, width: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=projection_dim or 32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def _vae(scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _sd_unet(text_width: int = 32, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=text_width,
        attention_head_dim=2,  # SD 1.x config semantics: number of heads
        norm_num_groups=16,
    )


def _sdxl_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    time_dim, proj_dim = 8, 32
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=64,  # concat of both encoders' hidden states (32 + 32)
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=proj_dim + 6 * time_dim,
        norm_num_groups=16,
    )


def _build_sd(tokenizer_dir: Path, text_width: int = 32):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = _sd_unet(text_width)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_vae(0.18215, force_upcast=True),
        text_encoder=CLIPTextModel(_text_config(width=text_width)),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(tokenizer_dir: Path, tokenizer2_dir: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    proj_dim = 32
    unet = _sdxl_unet()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=_vae(0.13025, force_upcast=True),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(proj_dim)),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tokenizer2_dir)),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def build_tiny_sd(
    path: str | os.PathLike[str] | None = None, variant: str = "sd", seed: int = 0, text_width: int = 32
) -> Path:
    """Build (once) a tiny pipeline folder loadable with ``DiffusionPipeline.from_pretrained``.

    `text_width` (SD only) widens the text encoder and the UNet's cross-attention: at 32 the random
    encoder's token embeddings are nearly collinear, which tests of embedding-space methods must avoid.

    Cached per directory: a marker records (version, variant, seed); a matching folder is reused, so
    repeated calls from tests, the CLI and the bench cost nothing. The folder is written to a temporary
    sibling and renamed into place, so concurrent builders never expose a half-written model.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    out = Path(path) if path is not None else default_cache_dir() / ("tiny-sd" if variant == "sd" else "tiny-sdxl")
    meta: dict[str, object] = {"version": TINY_VERSION, "variant": variant, "seed": seed}
    if text_width != 32:  # only then, so folders cached before the option are still reused
        meta["text_width"] = text_width

    def write(folder: Path) -> None:
        tok_dir = write_clip_tokenizer(folder.parent / "_tok")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if variant == "sd":
                pipe = _build_sd(tok_dir, text_width)
            else:
                pipe = _build_sdxl(tok_dir, write_clip_tokenizer(folder.parent / "_tok2", pad_token="!"))
        pipe.save_pretrained(str(folder), safe_serialization=True)

    return build_once(out, meta, write)


def build_tiny_inpaint(path: str | os.PathLike[str] | None = None, variant: str = "sd", seed: int = 1) -> Path:
    """Build (once) a tiny 9-channel inpainting UNet (4 latent + 1 mask + 4 masked-image latent channels,
    as `stable-diffusion-v1-5/stable-diffusion-inpainting`'s) for the tiny `variant`'s text encoder.

    Written as a model folder with the UNet in `unet/`, the layout of the hub's inpainting models, so it
    loads through the same `UNet2DConditionModel.from_pretrained(folder, subfolder="unet",
    use_safetensors=True)` call; cached and renamed into place like `build_tiny_sd`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    name = "tiny-sd-inpaint" if variant == "sd" else "tiny-sdxl-inpaint"
    out = Path(path) if path is not None else default_cache_dir() / name
    meta: dict[str, object] = {"version": TINY_VERSION, "variant": variant, "seed": seed, "inpaint": True}

    def write(folder: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = _sd_unet(in_channels=9) if variant == "sd" else _sdxl_unet(in_channels=9)
        unet.save_pretrained(str(folder / "unet"), safe_serialization=True)

    return build_once(out, meta, write)


__all__ = ["EOS", "VARIANTS", "build_tiny_inpaint", "build_tiny_sd", "default_cache_dir"]
