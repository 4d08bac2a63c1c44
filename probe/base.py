"""The probe's starting point: the run's own render model, its UNet widened as InstructPix2Pix's was.

`render.model` of OUT/config.yaml (a hub id, a local folder, or `tiny`, built in code) is loaded the way
the render stage loads it (p2p.generate.load_pipeline, safetensors only) in float32, with the run's
closed-form model edits (`render.model_edits`) applied as the render actors apply them, so the probe
starts from the weights that rendered the data. Its `conv_in` then gains 4 zero-initialised input channels
for the input image's latent (tiny.ip2p.widen_conv_in; Brooks et al. 2023, sec. 3.2), so step 0 predicts
exactly what the base model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editgen.pipeline.errors import InputError

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig


@dataclass
class BaseModel:
    """The parts of the run's render model that training uses (frozen VAE and text encoder, trained UNet)."""

    model: str  # what render.model names (the label in probe.json)
    path: str  # what was loaded (hub id or folder)
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any  # 8 input channels
    scheduler: Any  # the model's own sampler, saved with the probe
    model_edits: dict[str, Any] | None


def load_base(cfg: EditgenConfig) -> BaseModel:
    """Load and widen `render.model`; an SDXL model is one line (train-probe trains SD 1.x/2.x IP2P)."""
    from editgen.p2p.generate import load_pipeline
    from editgen.p2p.models import quiet_libraries, resolve_model
    from editgen.tiny.ip2p import widen_conv_in

    quiet_libraries()
    path, _variant = resolve_model(cfg.render.model)
    try:
        loaded = load_pipeline(path, "cpu", "float32")
    except (OSError, ValueError) as exc:
        raise InputError(f"render.model {cfg.render.model!r}: cannot load it ({exc})") from None
    if loaded.is_sdxl:
        raise InputError(f"render.model {cfg.render.model!r} is SDXL: train-probe fine-tunes Stable Diffusion "
                         "1.x/2.x InstructPix2Pix only")
    edits = cfg.render.edit_set()
    described = None
    if edits is not None:
        from editgen.p2p.model_edit.solve import apply_edits

        described = apply_edits(loaded, edits).describe()
    pipe = loaded.pipe
    if pipe.unet.config.in_channels != 4:
        raise InputError(f"render.model {cfg.render.model!r}: its UNet reads {pipe.unet.config.in_channels} "
                         "channels, not a text-to-image model's 4")
    unet = widen_conv_in(pipe.unet)
    return BaseModel(cfg.render.model, str(path), pipe.vae, pipe.text_encoder, pipe.tokenizer, unet,
                     pipe.scheduler, described)


def default_resolution(cfg: EditgenConfig) -> int:
    """The run's render size (the shorter side when it rendered non-square images)."""
    return min(cfg.render.height, cfg.render.width)
