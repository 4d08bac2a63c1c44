"""The stage graph, found by name: `stages.REGISTRY` lists the stages in data-flow order.

The core never imports a stage statically (stages sit above it); it looks the graph up here, by module
name, so an environment without the diffusion stack (the vLLM one) still runs the runner and the LLM
stage, and a stage not built yet (its module absent) is simply not in the graph.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.stage import Stage

#: The module that holds the graph: REGISTRY = {stage name: "module:Class"} in data-flow order.
GRAPH_MODULE = "stages"


def registry() -> dict[str, str]:
    return importlib.import_module(GRAPH_MODULE).REGISTRY


def stage_names() -> list[str]:
    """Stages whose module exists, in order (a stage not built yet is not in the graph)."""
    return [n for n, target in registry().items() if importlib.util.find_spec(target.split(":")[0])]


def upstream_of(name: str) -> str | None:
    names = stage_names()
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def downstream_of(name: str) -> list[str]:
    names = stage_names()
    return names[names.index(name) + 1 :]


def load_stage_class(name: str) -> type[Stage]:
    target = registry().get(name)
    if target is None:
        raise KeyError(name)
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
