"""What engines render with: the base diffusion pipeline, loaded once and shared by every engine.

A render actor holds one Runtime (the model `render.model` names, on its device and dtype, with the
closed-form `render.model_edits` applied right after loading); `editgen pair` builds one from its
flags; a regeneration loads one from the record's `ModelRef` (memoised, a tiny model rebuilt when its
folder is gone, the record's model edits re-applied and checked). `model` is what every record of this
runtime names; engines that load more (an inpainting UNet, an edit model) keep it beside, once per
runtime, through `shared`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from editgen.engines.record import ModelRef
from editgen.p2p.models import quiet_libraries, refuse_guidance_embedding, resolve_model
from editgen.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from editgen.p2p.generate import P2PPipeline
    from editgen.pipeline.settings.model_edits import EditSet
    from editgen.pipeline.settings.render import RenderConfig

log = logging.getLogger("editgen")
T = TypeVar("T")


class Runtime:
    """The loaded base pipeline (lazily, on first use), what records say of it, FLOPs per row-step."""

    def __init__(self, model: ModelRef, device: str, *, label: str | None = None, scheduler: str = "ddim",
                 compile: bool = False, size: tuple[int, int] | None = None, edits: EditSet | None = None,
                 edits_key: str | None = None, pipeline: P2PPipeline | None = None) -> None:
        self.model = model  # gains `model_edits` once they are applied
        self.device = device
        self.label = label or model.model  # the `render_model` column
        self.scheduler, self.compile, self.size = scheduler, compile, size
        self.edits, self.edits_key = edits, edits_key
        self._pipeline = pipeline
        self._flops: dict[tuple[int, int], int] = {}
        self._shared: dict[str, object] = {}

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    @property
    def pipeline(self) -> P2PPipeline:
        """The base pipeline, loaded on first use; its FLOPs per row-step are measured right after
        loading (cached on disk), then the model edits are applied."""
        if self._pipeline is None:
            from editgen.p2p.generate import load_pipeline

            self._pipeline = load_pipeline(self.model.model, self.device, self.model.dtype, self.scheduler,
                                           self.compile)
            if self.size is not None:
                self.flops_at(*self.size)
            if self.edits is not None:
                self.apply_edits(self.edits)
        return self._pipeline

    def apply_edits(self, edits: EditSet) -> None:
        """Model edits (closed form, then forget) on the loaded pipeline (a bad edit: ValueError, or ConfigError naming
        `edits_key`); what they did goes into `model`, so into every record drawn after."""
        from editgen.p2p.model_edit.solve import apply_edits

        try:
            report = apply_edits(self.pipeline, edits)
        except ValueError as exc:
            if self.edits_key is None:
                raise
            raise ConfigError(f"{self.edits_key}: {exc}") from None
        log.info("render: %d model edits on %d layers in %.2fs (checksum %s)", len(edits.edits),
                 report.layers, report.seconds, report.checksum)
        for f in report.forgets:
            log.info("render: forget %r: concept attention mass %s -> %s", f["concept"], f["mass_before"],
                     f["mass_after"])
        self.model = replace(self.model, model_edits=report.describe())

    def flops_at(self, height: int, width: int) -> int:
        """UNet FLOPs per row per step at this size (torch's FLOP counter on one step; p2p.compute)."""
        if (height, width) not in self._flops:
            from editgen.p2p.compute import pipeline_flops

            self._flops[(height, width)] = pipeline_flops(self.pipeline, height, width).total
        return self._flops[(height, width)]

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """One object per runtime under `key` (a second model an engine loads once per actor)."""
        if key not in self._shared:
            self._shared[key] = factory()
        return self._shared[key]  # type: ignore[return-value]

    # ---- ways to build one ----------------------------------------------------------------------
    @classmethod
    def for_stage(cls, settings: RenderConfig, num_cpus: float | None) -> Runtime:
        """A render actor's runtime: library chatter off, its thread count set, `render.model` resolved,
        device and dtype decided (auto: cuda and float16 when there is a GPU); the pipeline loads on first use."""
        import torch

        quiet_libraries()
        threads = settings.torch_threads or max(1, int(num_cpus or 1))
        torch.set_num_threads(threads)
        path, variant = resolve_model(settings.model)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if settings.device == "auto" else settings.device
        dtype = settings.dtype if settings.dtype != "auto" else ("float16" if device == "cuda" else "float32")
        model = ModelRef(path, dtype, profile="tiny" if variant else None, tiny_variant=variant,
                         torch_threads=threads, model_edits_in_model=baked_edits(path))
        label = settings.model if variant is None else f"{settings.model}:{variant}"
        return cls(model, device, label=label, scheduler=settings.scheduler, compile=settings.compile,
                   size=(settings.height, settings.width), edits=settings.edit_set(), edits_key="render.model_edits")

    @classmethod
    def wrap(cls, pipeline: P2PPipeline, model: ModelRef | None = None) -> Runtime:
        """A runtime around a pipeline already loaded (tests, tools)."""
        from editgen.p2p.generate import dtype_name

        ref = model or ModelRef(str(pipeline.model), dtype_name(pipeline.dtype))
        return cls(ref, str(pipeline.device), pipeline=pipeline)

    @classmethod
    def for_record(cls, model: ModelRef, device: str | None = None) -> Runtime:
        """The runtime a record names (memoised per model, device, dtype and model edits)."""
        import torch

        dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        edits = model.model_edits
        key = (model.model, dev, model.dtype, str(edits.get("checksum", "")) if edits else "")
        if key not in _RUNTIMES:
            _RUNTIMES[key] = cls(model, dev, pipeline=_load_for_record(model, dev))
        return _RUNTIMES[key]


_RUNTIMES: dict[tuple[str, str, str, str], Runtime] = {}


def _load_for_record(model: ModelRef, device: str) -> P2PPipeline:
    from editgen.p2p.generate import load_pipeline

    if model.profile == "tiny" and not os.path.exists(os.path.join(model.model, "model_index.json")):
        from editgen.tiny.sd import build_tiny_sd

        build_tiny_sd(model.model, variant=model.tiny_variant or "sd")
    pipeline = load_pipeline(model.model, device, model.dtype)
    if model.model_edits:
        from editgen.p2p.model_edit.solve import reapply

        reapply(pipeline, dict(model.model_edits))
    return pipeline


def prepare_models(settings: RenderConfig) -> None:
    """On the driver, before any actor starts: build a tiny test model once so actors only load it, and
    refuse a local model no engine can render with."""
    unet_config = Path(resolve_model(settings.model)[0]) / "unet" / "config.json"
    if unet_config.is_file():  # a local folder (a tiny one built now); a hub model is checked on load
        try:
            refuse_guidance_embedding(json.loads(unet_config.read_text()), settings.model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def baked_edits(model_path: str) -> Mapping[str, Any] | None:
    """What `editgen edit-model` wrote beside a local model folder (recorded, not re-applied)."""
    path = Path(model_path) / "model_edits.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
