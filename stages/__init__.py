"""The stage graph: ingest -> instruct -> render -> filter -> shard.

Stages are imported lazily by name so an environment without the diffusion stack (the vLLM one) can
still run the runner and the LLM stage. A stage not yet built is simply absent from REGISTRY.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.stage import Stage

#: Stage name -> "module:Class", in data-flow order.
REGISTRY: dict[str, str] = {
    "ingest": "stages.ingest:IngestStage",
    "instruct": "stages.instruct:InstructStage",
    "render": "stages.render:RenderStage",
    "filter": "stages.filter:FilterStage",
    "shard": "stages.shard:ShardStage",
}


def stage_names() -> list[str]:
    """Stages whose module exists, in order (a stage not built yet is not in the graph)."""
    return [n for n, target in REGISTRY.items() if importlib.util.find_spec(target.split(":")[0])]


def upstream_of(name: str) -> str | None:
    names = stage_names()
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def downstream_of(name: str) -> list[str]:
    names = stage_names()
    return names[names.index(name) + 1 :]


def load_stage_class(name: str) -> type[Stage]:
    if name not in REGISTRY:
        raise KeyError(name)
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
