"""Which diffusion model a name means: a hub id, a local diffusers folder, or a tiny random test model.

One place for the render stage and the hand-run tools (`editgen pair`, `editgen edit-model`), so the
same `render.model` value loads the same weights everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

#: `render.model` names that build a random-weight test model in code (tiny.sd) instead of loading one.
TINY_MODELS = {"tiny": "sd", "tiny-sdxl": "sdxl"}


def resolve_model(model: str) -> tuple[str, str | None]:
    """(loadable path or hub id, tiny variant or None). Tiny models are built once into the cache."""
    variant = TINY_MODELS.get(model)
    if variant is None:
        return model, None
    from editgen.tiny.sd import build_tiny_sd

    return str(build_tiny_sd(variant=variant)), variant


def refuse_guidance_embedding(unet_config: Mapping[str, object], model: str) -> None:
    """LCM-distilled UNets (`time_cond_proj_dim`) take the guidance scale as an embedding and no CFG
    half; every engine here guides with CFG rows, so such a model would render without the input it was
    trained with. Refused in one line rather than rendered wrong (docs/fewstep.md: fuse an LCM-LoRA)."""
    if unet_config.get("time_cond_proj_dim") is not None:
        raise ValueError(f"render.model {model}: an LCM-distilled UNet with a guidance embedding "
                         f"(time_cond_proj_dim={unet_config['time_cond_proj_dim']}) is not supported; fuse an "
                         "LCM-LoRA into the base model instead (docs/fewstep.md)")


#: `render.inpaint.model` names that build a tiny random 9-channel inpainting UNet in code (tiny.sd).
TINY_INPAINT_MODELS = {"tiny-inpaint": "sd", "tiny-sdxl-inpaint": "sdxl"}
#: The inpainting model `render.inpaint.model: auto` picks for a base model family.
INPAINT_MODELS = {"sd": "stable-diffusion-v1-5/stable-diffusion-inpainting",
                  "sdxl": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"}


def auto_inpaint_model(tiny_variant: str | None, is_sdxl: bool) -> str:
    """The inpainting model of the base model's family: the tiny one for a tiny base model."""
    if tiny_variant is not None:
        return "tiny-inpaint" if tiny_variant == "sd" else "tiny-sdxl-inpaint"
    return INPAINT_MODELS["sdxl" if is_sdxl else "sd"]


def resolve_inpaint_model(model: str) -> tuple[str, str | None]:
    """(loadable path or hub id, tiny variant or None) of an inpainting model name; a tiny one is built
    once into the cache (and again from its variant when a record names a folder that is gone)."""
    variant = TINY_INPAINT_MODELS.get(model)
    if variant is None:
        return model, None
    from editgen.tiny.sd import build_tiny_inpaint

    return str(build_tiny_inpaint(variant=variant)), variant


def quiet_libraries() -> None:
    """No per-component loading bars or library chatter from diffusers/transformers: they would flood
    worker logs and bury a tool's own one-line errors."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
