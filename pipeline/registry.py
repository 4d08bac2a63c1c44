"""The stage graph, found by name: `stages.REGISTRY` lists the stages in data-flow order.

The graph depends on the config: a stage whose `active(cfg)` is false (fetch without
render.source=real) is left out, and its neighbours link to each other as if it did not exist. Every
caller that walks the graph passes the run's config (status and validate: OUT/config.yaml's).

The core never imports a stage statically (stages sit above it); it looks the graph up here, by module
name, so an environment without the diffusion stack (the vLLM one) still runs the runner and the LLM
stage, and a stage not built yet (its module absent) is simply not in the graph.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig
    from editgen.pipeline.stage import Stage

#: The module that holds the graph: REGISTRY = {stage name: "module:Class"} in data-flow order.
GRAPH_MODULE = "editgen.stages"


def registry() -> dict[str, str]:
    return importlib.import_module(GRAPH_MODULE).REGISTRY


def built_stage_names() -> list[str]:
    """Every stage whose module exists, in order, whatever the config (a stage not built yet is not in
    the graph)."""
    return [n for n, target in registry().items() if importlib.util.find_spec(target.split(":")[0])]


def stage_names(cfg: EditgenConfig | None = None) -> list[str]:
    """The graph under `cfg` (None: the default config): built stages whose `Stage.active(cfg)` holds,
    in data-flow order. A conditional stage (fetch: only with render.source=real) is simply absent
    otherwise, so every hash and upstream link is what it would be without it."""
    if cfg is None:
        from editgen.pipeline.config import EditgenConfig

        cfg = EditgenConfig()
    return [n for n in built_stage_names() if load_stage_class(n).active(cfg)]


def upstream_of(name: str, cfg: EditgenConfig | None = None) -> str | None:
    names = stage_names(cfg)
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def downstream_of(name: str, cfg: EditgenConfig | None = None) -> list[str]:
    names = stage_names(cfg)
    return names[names.index(name) + 1 :]


def inactive_reason(name: str, cfg: EditgenConfig) -> str | None:
    """Why a built stage is not in the graph under `cfg` (one phrase naming the setting), else None."""
    if name not in built_stage_names():
        return None
    cls = load_stage_class(name)
    if cls.active(cfg):
        return None
    return f"stage {name!r} is only in the graph when {cls.active_when or 'its condition holds'}"


def load_stage_class(name: str) -> type[Stage]:
    target = registry().get(name)
    if target is None:
        raise KeyError(name)
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
