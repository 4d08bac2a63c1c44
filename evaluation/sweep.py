"""InstructPix2Pix's sweep: every eval sample edited at each image guidance of a grid, text guidance fixed.

Brooks et al. (2023, Fig. 6) fix text guidance at 7.5 and vary image guidance over 1.0..2.2: more image
guidance keeps more of the input (CLIP image similarity up), less follows the instruction more (CLIP
direction similarity up). Each sample's generator is seeded from (seed, key) alone and reseeded at every
grid point, so the points differ only in their guidance and a rerun gives the same images bit for bit (on
the same hardware and library versions, which the report records).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editgen.pipeline.errors import ConfigError, InputError

if TYPE_CHECKING:
    from PIL import Image

    from editgen.evaluation.data import EvalSample

TEXT_GUIDANCE = 7.5
#: InstructPix2Pix's grid (1.0:2.2:0.2) with the default image guidance, 1.5, where MagicBrush-style
#: numbers are usually quoted (`at_default`), added.
DEFAULT_GRID = "1.0,1.2,1.4,1.5,1.6,1.8,2.0,2.2"
DEFAULT_IMAGE_GUIDANCE = 1.5
#: Latent-space factor of SD's VAE: both sides of an input are floored to a multiple of it.
MULTIPLE = 8
PIPELINE_CLASS = "StableDiffusionInstructPix2PixPipeline"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
RESIZE_RULE = (f"RGB; shorter side resized to the resolution (default: the input's own size), aspect kept, both "
               f"sides floored to a multiple of {MULTIPLE}; PIL bicubic")


def parse_grid(text: str) -> list[float]:
    """`START:STOP:STEP` (inclusive of STOP) or a comma list; values rounded to 4 decimals, 1..50 points."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            values = [round(start + i * step, 4) for i in range(int(round((stop - start) / step)) + 1)]
        else:
            values = [round(float(x), 4) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or len(values) > 50 or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise InputError(f"--image-guidance {text!r}: expected START:STOP:STEP (e.g. 1.0:2.2:0.2) or a comma "
                         "list of distinct non-negative numbers (at most 50)")
    return values


def sample_seed(seed: int, key: str) -> int:
    """The sample's generator seed: the first 8 bytes of sha256(f"{seed}:{key}") (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") & (2**63 - 1)


def prepare(data: bytes, resolution: int | None) -> Image.Image:
    """The model's input image (RESIZE_RULE)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = 1.0 if resolution is None else resolution / min(w, h)
    size = (max(MULTIPLE, int(w * scale) // MULTIPLE * MULTIPLE), max(MULTIPLE, int(h * scale) // MULTIPLE * MULTIPLE))
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def check_model(model: str) -> None:
    """A diffusers folder (model_index.json) or a hub id, before anything loads."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            raise InputError(f"{model}: not a diffusers pipeline folder (no model_index.json)")
        return
    if os.path.exists(model) or not _HUB_ID.match(model):
        raise InputError(f"{model!r}: not a diffusers pipeline folder nor a hub id (org/name)")


def unet_sha256(unet: Any) -> str:
    """sha256 of the UNet's state dict (names, dtypes, shapes and bytes in name order): the same for a
    local folder and a hub download of the same weights."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class LoadedModel:
    pipe: Any
    info: dict[str, Any]


def load_model(model: str, device: str) -> LoadedModel:
    """The pipeline as diffusers loads it (safetensors only; no safety checker: a blacked-out output would
    score as a failed edit), on `device` in fp32 (CPU) or fp16 (CUDA), cast after the checksum."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from editgen.p2p.generate import resolve_dtype
    from editgen.p2p.models import quiet_libraries

    check_model(model)
    quiet_libraries()
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto"
                       else device)
    dtype = resolve_dtype("auto", dev)
    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            model, use_safetensors=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    except Exception as exc:  # noqa: BLE001 - missing weights, wrong class, no hub: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{model}: cannot load as {PIPELINE_CLASS}: {first}") from None
    info = {"id": model, "class": PIPELINE_CLASS, "unet_sha256": unet_sha256(pipe.unet),
            "scheduler": type(pipe.scheduler).__name__, "device": dev.type, "dtype": str(dtype).removeprefix("torch."),
            "safety_checker": "disabled"}
    pipe = pipe.to(dev, dtype)  # after the checksum, which is of the weights as stored
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe, info)


def edit(loaded: LoadedModel, sample: EvalSample, image: Image.Image, guidance: float, steps: int,
         seed: int) -> Image.Image:
    """One edit at one grid point, its generator seeded afresh (sample_seed)."""
    import torch

    gen = torch.Generator("cpu").manual_seed(sample_seed(seed, sample.key))
    out = loaded.pipe(prompt=sample.instruction, image=image, num_inference_steps=steps,
                      guidance_scale=TEXT_GUIDANCE, image_guidance_scale=guidance, generator=gen, output_type="pil")
    return out.images[0]


def sweep(loaded: LoadedModel, samples: Sequence[EvalSample], grid: Sequence[float], steps: int, seed: int,
          resolution: int | None) -> dict[float, list[Image.Image]]:
    """grid point -> the edited image of every sample (in sample order)."""
    inputs = [prepare(s.input_image, resolution) for s in samples]
    outputs: dict[float, list[Image.Image]] = {g: [] for g in grid}
    for sample, image in zip(samples, inputs, strict=True):
        for g in grid:
            outputs[g].append(edit(loaded, sample, image, g, steps, seed))
    return outputs
