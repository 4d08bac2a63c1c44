"""What the `instruct_model` engine knows of each instruction-edit pipeline, and what a record means to it.

One entry per `render.instruct_model.pipeline` value: the diffusers class, the reference model and its
licence, the default guidance draws, which __call__ argument the text guidance goes to, true CFG, the
denoiser, the output size multiple, the tokenizer an instruction must fit. From a record's parameters:
the pipeline call it stands for (`edit_call`) and its UNet rows per evaluation (`edit_rows`, `source_rows`).
Pure and torch-free: the engine, its loader and its renderer all read it (docs/engines/instruct_model.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: `render.instruct_model.model` value that builds the tiny IP2P test model (tiny.ip2p).
TINY = "tiny"


@dataclass(frozen=True)
class PipelineKind:
    """What the engine knows of one instruction-edit pipeline class (`render.instruct_model.pipeline`)."""

    name: str
    class_name: str  # the diffusers class
    reference_model: str  # what `render.instruct_model.model: None` loads
    licence: str
    guidance_range: tuple[float, float]  # default text-guidance draw
    image_guidance_range: tuple[float, float] | None  # default image-guidance draw; None: no image guidance
    guidance_kwarg: str  # the __call__ argument the text guidance goes to
    true_cfg: bool  # a second (negative-prompt) row per step when guidance > 1 and a negative prompt is set
    negative_prompt: str | None  # default negative prompt (qwen_image_edit needs one for true CFG)
    takes_negative_prompt: bool
    denoiser: str  # the pipeline attribute holding its UNet / transformer
    size_multiple: int  # output sides are floored to multiples of this
    prompt_tokens: tuple[str, int | None] | None  # (tokenizer attribute, limit or None = its max) checked per pair
    wide_dtype_on_gpu: bool  # bfloat16 on GPU (float16 overflows it)
    size_kwargs: tuple[str, ...] = ()  # __call__ arguments that pin the output to the source's size


PIPELINES: dict[str, PipelineKind] = {
    "ip2p": PipelineKind(
        "ip2p", "StableDiffusionInstructPix2PixPipeline", "timbrooks/instruct-pix2pix", "MIT", (5.0, 10.0),
        (1.2, 1.8), "guidance_scale", False, None, True, "unet", 8, ("tokenizer", None), False),
    "flux_kontext": PipelineKind(
        "flux_kontext", "FluxKontextPipeline", "black-forest-labs/FLUX.1-Kontext-dev",
        "FLUX.1 [dev] Non-Commercial License", (2.5, 2.5), None, "guidance_scale", False, None, False,
        "transformer", 16, ("tokenizer_2", 512), True, ("height", "width", "max_area")),
    "qwen_image_edit": PipelineKind(
        "qwen_image_edit", "QwenImageEditPipeline", "Qwen/Qwen-Image-Edit", "Apache-2.0", (4.0, 4.0), None,
        "true_cfg_scale", True, " ", True, "transformer", 16, None, True, ("height", "width")),
}


def edit_call(params: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's __call__ arguments a record stands for (besides the image, the generator and the
    output type): the recorded instruction, steps, guidances, negative prompt and output size."""
    kind = PIPELINES[params["pipeline"]]
    call: dict[str, Any] = {"prompt": params["instruction"], "num_inference_steps": int(params["steps"]),
                            kind.guidance_kwarg: float(params["guidance_scale"])}
    if kind.image_guidance_range is not None:
        call["image_guidance_scale"] = float(params["image_guidance_scale"])
    if kind.takes_negative_prompt:
        call["negative_prompt"] = params["negative_prompt"]
    h, w = int(params["height"]), int(params["width"])
    sizes = {"height": h, "width": w, "max_area": h * w}  # else they pick ~1 MP (Kontext rescales to max_area)
    call.update({k: sizes[k] for k in kind.size_kwargs})
    return call


def edit_rows(params: Mapping[str, Any]) -> int:
    """Denoiser rows per evaluation of the edit: IP2P's three (text-conditioned, image-only, unconditioned)
    when both guidances are on (its rule: guidance > 1 and image guidance >= 1), true CFG's two, else one."""
    kind = PIPELINES[params["pipeline"]]
    g = float(params["guidance_scale"])
    if kind.image_guidance_range is not None:
        return 3 if g > 1.0 and float(params["image_guidance_scale"]) >= 1.0 else 1
    if kind.true_cfg:
        return 2 if g > 1.0 and params.get("negative_prompt") is not None else 1
    return 1


def source_rows(source: Mapping[str, Any]) -> float:
    """UNet row-steps of a generated source: 1 prompt, x2 with CFG, per evaluation of its sampler."""
    if source.get("kind") != "generated":
        return 0.0
    from editgen.p2p.compute import unet_evals

    rows = 2.0 if float(source["guidance"]) > 1.0 else 1.0
    return rows * unet_evals(str(source["scheduler"]), int(source["steps"]))
