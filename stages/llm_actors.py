"""How a stage that runs a model on vLLM is scheduled (instruct's LLM, judge's VLM): shared, so both place
their actors the same way.

vLLM pins its own torch, so it lives in its own venv (`.venv-llm`): a stage whose backend is vLLM runs its
Ray actors under that interpreter (runtime_env `py_executable`, the project on PYTHONPATH); an engine with
tensor parallelism reserves as many GPUs; the openai and template backends need none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from editgen.pipeline.settings.base import Resources
from editgen.pipeline.settings.instruct import VllmSettings

#: Env var naming the LLM venv's interpreter, used when `<stage>.vllm.python` is not set.
LLM_PYTHON_ENV = "EDITGEN_LLM_PYTHON"


def llm_resources(res: Resources, backend: str, vllm: VllmSettings) -> Resources:
    """The stage's resources: no GPU unless the backend is vLLM, then at least its TP degree."""
    if backend != "vllm":
        return res.model_copy(update={"num_gpus": 0.0})
    tp = vllm.tensor_parallel_size
    if 0 < res.num_gpus < tp:
        return res.model_copy(update={"num_gpus": float(tp)})
    return res


def llm_python(backend: str, vllm: VllmSettings) -> str | None:
    """Interpreter of the LLM venv for the vLLM actors, if one is configured."""
    if backend != "vllm":
        return None
    return vllm.python or os.environ.get(LLM_PYTHON_ENV) or None


def llm_ray_options(python: str | None) -> dict[str, Any]:
    """Ray actor options running under `python` with the project importable (none: the driver's venv)."""
    if not python:
        return {}
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"runtime_env": {"py_executable": python, "env_vars": {"PYTHONPATH": path}}}
