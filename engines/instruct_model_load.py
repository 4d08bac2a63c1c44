"""The `instruct_model` engine's edit model: checked on the driver before a run, loaded once per actor.

Before any stage runs (`preflight`), the configured pipeline class must exist in the installed diffusers
and the model must be loadable as that class: a local diffusers folder whose `model_index.json` names it,
or a hub id found in the Hugging Face cache or on a reachable hub. Each failure is one line naming the
setting, the model and why (exit 2): no hub here means a hub id fails at once, not after a run's first
stages. The tiny IP2P test model (`model: tiny`) is built here once, so actors only load it.
A loaded model is shared per runtime (`Runtime.shared`): one copy per render actor and per regeneration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editgen.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from editgen.engines.instruct_model_kinds import PipelineKind
    from editgen.engines.instruct_model_render import EditModel
    from editgen.engines.runtime import Runtime

SETTING = "render.instruct_model"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def pipeline_class(kind: PipelineKind) -> type:
    """The diffusers class of `kind`; ConfigError (one line) when the installed diffusers lacks it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(f"{SETTING}.pipeline: {kind.name} needs diffusers, which is not installed") from None
    try:
        cls = getattr(diffusers, kind.class_name, None)
    except Exception as exc:  # noqa: BLE001 - a class whose own imports fail is missing too
        raise ConfigError(f"{SETTING}.pipeline: {kind.name} needs diffusers.{kind.class_name}, which cannot be "
                          f"imported here ({_first_line(exc)})") from None
    if cls is None or type(cls).__name__ == "DummyObject":  # DummyObject: a class whose backend is absent
        raise ConfigError(f"{SETTING}.pipeline: {kind.name} needs diffusers.{kind.class_name}, which the installed "
                          f"diffusers {diffusers.__version__} lacks (upgrade diffusers or choose another pipeline)")
    return cls


def _check_index(index: Path, model: str, kind: PipelineKind) -> None:
    try:
        found = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{SETTING}.model: {model}: unreadable model_index.json ({_first_line(exc)})") from None
    if found != kind.class_name:
        raise ConfigError(f"{SETTING}.model: {model} holds a {found}, not the {kind.class_name} that "
                          f"{SETTING}.pipeline={kind.name} loads")


def _hub_index(model: str, kind: PipelineKind) -> Path:
    """model_index.json of a hub id: from the cache, else from the hub (one request fails fast offline)."""
    import huggingface_hub as hub
    from huggingface_hub.errors import HFValidationError

    try:
        cached = hub.try_to_load_from_cache(model, "model_index.json")
    except HFValidationError:
        raise ConfigError(f"{SETTING}.model: {model!r} is neither a local folder nor a hub id") from None
    if isinstance(cached, str):
        return Path(cached)
    try:
        hub.model_info(model, timeout=10)
        return Path(hub.hf_hub_download(model, "model_index.json"))
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated, ...: one line whichever
        raise ConfigError(f"{SETTING}.model: cannot load {model!r} ({SETTING}.pipeline={kind.name}): not a local "
                          "folder, not in the Hugging Face cache, and not fetched from the hub "
                          f"({_first_line(exc)})") from None


def check_model(model: str, kind: PipelineKind) -> None:
    """The model is loadable as `kind`'s class (the checks a from_pretrained would fail late on)."""
    if os.path.isdir(model):
        index = Path(model) / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"{SETTING}.model: {model} is not a diffusers pipeline folder (no model_index.json)")
        _check_index(index, model, kind)
        return
    _check_index(_hub_index(model, kind), model, kind)


def resolve(model: str) -> tuple[str, bool]:
    """(loadable path or hub id, built tiny test model?)."""
    from editgen.engines.instruct_model_kinds import TINY

    if model != TINY:
        return model, False
    from editgen.tiny.ip2p import build_tiny_ip2p

    return str(build_tiny_ip2p()), True


def preflight(kind: PipelineKind, model: str) -> None:
    """On the driver before any stage runs: the class exists, the model can be loaded as it (the tiny one
    built now, once, so actors only load it)."""
    from editgen.p2p.models import quiet_libraries

    quiet_libraries()
    pipeline_class(kind)
    path, _ = resolve(model)
    check_model(path, kind)


def edit_model_ref(kind: PipelineKind, model: str, dtype: str) -> dict[str, Any]:
    """What a record says of its edit model (`edit_model`): class, loadable path or hub id, dtype, and
    `tiny` when it is the tiny test model (rebuilt from code when its folder is gone)."""
    path, tiny = resolve(model)
    ref: dict[str, Any] = {"class": kind.class_name, "model": path, "dtype": dtype}
    if tiny:
        ref["tiny"] = True
    return ref


def shared_edit_model(runtime: Runtime, ref: Mapping[str, Any]) -> EditModel:
    """The edit model `ref` names, loaded once per runtime (its device), the tiny one rebuilt if gone."""
    key = f"instruct_model:{ref['class']}:{ref['model']}:{ref['dtype']}"
    return runtime.shared(key, lambda: load_edit_model(ref, runtime.device))


def load_edit_model(ref: Mapping[str, Any], device: str) -> EditModel:
    """Load with the pipeline's own class (safetensors only); any failure is one ConfigError line."""
    from editgen.engines.instruct_model_kinds import PIPELINES
    from editgen.engines.instruct_model_render import EditModel
    from editgen.p2p.generate import _DTYPE_KWARG, resolve_dtype

    kind = next((k for k in PIPELINES.values() if k.class_name == ref["class"]), None)
    if kind is None:
        raise ValueError(f"record edit_model class {ref['class']!r}: this code loads "
                         f"{', '.join(k.class_name for k in PIPELINES.values())}")
    model = str(ref["model"])
    if ref.get("tiny") and not (Path(model) / "model_index.json").is_file():
        from editgen.tiny.ip2p import build_tiny_ip2p

        build_tiny_ip2p(model)
    cls = pipeline_class(kind)
    import torch

    kwargs: dict[str, Any] = {_DTYPE_KWARG: resolve_dtype(str(ref["dtype"]), torch.device(device)),
                              "use_safetensors": True}
    if kind.denoiser == "unet":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(model, **kwargs)
    except Exception as exc:  # noqa: BLE001 - missing weights, wrong class, no hub: one line
        raise ConfigError(f"{SETTING}.model: cannot load {model!r} as {kind.class_name}: {_first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return EditModel(pipe, dict(ref), kind, device)
