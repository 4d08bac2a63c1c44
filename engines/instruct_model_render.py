"""Rendering `instruct_model` records: the source, the edit model's call, the images; regeneration; FLOPs.

A generated source is P2P's source: the base pipeline renders the record's source request (the caption
alone, P2P's seed and CFG scale) on P2P's generation path (p2p.generate.render). A real source is the
pair's photograph, checked against the record's pixel hash when regenerating. The edit model is called
with exactly the arguments the record stands for (engines.instruct_model.edit_call), a fresh sampler of
the recorded kind and CPU noise seeded from the record's seed (device-independent draws), so the same
record gives the same bytes on the same device and dtype. The edit sees the source's 8-bit pixels (what a
PNG input member stores), so a shard's input plus its record says everything the edit read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from editgen.engines.base import PairRejected, RenderedCandidate
from editgen.engines.instruct_model_kinds import PipelineKind, edit_call
from editgen.engines.record import CandidateRecord
from editgen.engines.runtime import Runtime
from editgen.p2p.candidates import encode_image, image_format_name, params_request
from editgen.p2p.generate import check_request, make_scheduler, render


class EditModel:
    """A loaded instruction-edit pipeline, what records say of it, and its denoiser's FLOPs per row."""

    def __init__(self, pipe: Any, ref: Mapping[str, Any], kind: PipelineKind, device: str) -> None:
        self.pipe, self.ref, self.kind, self.device = pipe, dict(ref), kind, device
        self.label = "tiny-ip2p" if ref.get("tiny") else str(ref["model"])
        self.scheduler_class = type(pipe.scheduler)
        self.scheduler_config = dict(pipe.scheduler.config)
        self._flops: dict[tuple[int, int], int] = {}

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.kind.denoiser)

    def scheduler(self, name: str) -> Any:
        """A fresh sampler per call (no state carried between calls): the model's own, or a named one."""
        if name == "model":
            return self.scheduler_class.from_config(self.scheduler_config)
        return make_scheduler(name, self.scheduler_config)

    def evals(self, scheduler: str, steps: int) -> int:
        """Denoiser evaluations of a `steps`-step edit: the UNet pipelines call it once per timestep of the
        sampler (PNDM's warm-up and Heun's second evaluations included); flow-matching Euler once per step."""
        if self.kind.denoiser != "unet":
            return int(steps)
        sched = self.scheduler(scheduler)
        sched.set_timesteps(int(steps))
        return len(sched.timesteps)

    def flops_at(self, height: int, width: int) -> int:
        """FLOPs of one denoiser row-step at this output size: a UNet's counted on its weightless twin
        (p2p.compute, cached on disk), a transformer's measured on its first call at this size (0 before)."""
        key = (int(height), int(width))
        if key not in self._flops and self.kind.denoiser == "unet":
            from editgen.p2p.compute import unet_flops

            text_len = int(getattr(self.pipe.tokenizer, "model_max_length", 77) or 77)
            self._flops[key] = unet_flops(self.pipe.unet, *key, text_len if text_len < 10_000 else 77, None,
                                          int(self.pipe.vae_scale_factor), cache_file=True).total
        return self._flops.get(key, 0)

    def edit(self, params: Mapping[str, Any], seed: int, image: Image.Image) -> np.ndarray:
        """The edited image (H, W, 3) floats in [0, 1]: the pipeline called with the record's arguments."""
        call = edit_call(params)
        self.pipe.scheduler = self.scheduler(str(params["scheduler"]))
        generator = torch.Generator("cpu").manual_seed(int(seed))
        key = (int(params["height"]), int(params["width"]))
        measure = nullcontext() if self.kind.denoiser == "unet" or key in self._flops else \
            first_call_flops(self.denoiser, self._flops, key)
        with torch.inference_mode(), measure:
            out = self.pipe(image=image, generator=generator, output_type="np", **call)
        return np.asarray(out.images[0], dtype=np.float32)


@contextmanager
def first_call_flops(module: torch.nn.Module, sink: dict[tuple[int, int], int], key: tuple[int, int]) -> Iterator[None]:
    """FLOPs per batch row of `module`'s first forward call in this block, into `sink[key]` (torch's
    counter, p2p.compute.flop_counter: it only counts the ops it runs, so the output is unchanged)."""
    from editgen.p2p.compute import flop_counter

    state: dict[str, Any] = {}

    def before(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if "counter" not in state:
            x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
            state["rows"] = int(x.shape[0]) if isinstance(x, torch.Tensor) else 1
            state["counter"] = flop_counter()
            state["counter"].__enter__()

    def after(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        counter = state.get("counter")
        if counter is not None and "done" not in state:
            state["done"] = True
            counter.__exit__(None, None, None)
            sink[key] = int(counter.get_total_flops()) // max(1, state["rows"])

    hooks = [module.register_forward_pre_hook(before, with_kwargs=True),
             module.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        if "counter" in state and "done" not in state:  # the call raised inside the denoiser
            state["counter"].__exit__(None, None, None)


@dataclass
class InstructResult:
    """The raw pixels of one render (tests and tools): source and edit, (H, W, 3) floats in [0, 1]."""

    source: np.ndarray
    edited: np.ndarray


def source_pixels(runtime: Runtime, record: CandidateRecord) -> np.ndarray:
    """A generated source: the base pipeline on P2P's path, the record's source request (no edit rows)."""
    p2p = runtime.pipeline
    if record.model.model != p2p.model:
        raise ValueError(f"record for base model {record.model.model!r} given to a pipeline for {p2p.model!r}")
    return render(p2p, [params_request(record.params["source"], record.seed)])[0].images[0]


def render_record(runtime: Runtime, model: EditModel, record: CandidateRecord, picture: Image.Image | None,
                  fmt: str = "png", quality: int = 95) -> RenderedCandidate:
    """Render one record: its source (generated, or `picture`, the decoded photograph), then the edit."""
    if record.params["source"]["kind"] == "generated":
        pixels = source_pixels(runtime, record)
        picture = Image.fromarray((pixels * 255).round().astype("uint8"))
    elif picture is None:
        raise ValueError(f"pair {record.pair_id}: no decoded photograph for a real-source record")
    else:
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    edited = model.edit(record.params, record.seed, picture)
    return RenderedCandidate(record=record, input_image=encode_image(pixels, fmt, quality),
                             edited_image=encode_image(edited, fmt, quality), image_format=image_format_name(fmt),
                             result=InstructResult(pixels, edited))


def regenerate_record(runtime: Runtime, model: EditModel, record: CandidateRecord, image: bytes | None,
                      image_format: str = "png") -> RenderedCandidate:
    """Render a stored record again; a real source needs its photograph (any lossless copy: the pixel hash
    is checked)."""
    from editgen.p2p.real import decode_image, pixels_sha256

    source = record.params["source"]
    picture = None
    if source["kind"] == "real":
        if image is None:
            raise ValueError("a real-image record regenerates only with its source image (image=...)")
        picture = decode_image(image)
        got = pixels_sha256(picture)
        if got != source["pixels_sha256"]:
            raise ValueError(f"image pixels sha256 {got[:12]} are not the record's {source['pixels_sha256'][:12]}")
    return render_record(runtime, model, record, picture, image_format)


def check_record(runtime: Runtime, model: EditModel, record: CandidateRecord) -> None:
    """Before any UNet work: the instruction fits the edit model's text encoder (a truncated instruction
    would edit by another instruction: `render_edit_truncated`); a generated source's request fits the base model."""
    p = record.params
    spec = model.kind.prompt_tokens
    tokenizer = getattr(model.pipe, spec[0], None) if spec else None
    if spec and tokenizer is not None:
        limit = int(spec[1] or tokenizer.model_max_length)
        n = len(tokenizer(p["instruction"], truncation=False).input_ids)
        if n > limit:
            raise PairRejected("render_edit_truncated", f"instruction is {n} tokens, past the edit model's {limit}")
    if p["source"]["kind"] == "generated":
        check_request(runtime.pipeline, params_request(p["source"], record.seed))
