"""LLM backends of the instruct stage (vllm, openai, template), chosen by `instruct.backend`.

Backends are imported lazily: the template and openai backends must work where vLLM is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from editgen.llm.base import GenerationSettings, LLMBackend, LLMRequest, LLMResult

if TYPE_CHECKING:
    from editgen.pipeline.settings.instruct import InstructConfig

__all__ = ["GenerationSettings", "LLMBackend", "LLMRequest", "LLMResult", "generation_settings", "make_backend"]


def generation_settings(cfg: InstructConfig) -> GenerationSettings:
    from editgen.prompts.schema import edit_schema

    return GenerationSettings(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_tokens,
        schema=edit_schema(cfg.max_instruction_chars, cfg.max_caption_chars, cfg.inverse),
    )


def make_backend(cfg: InstructConfig) -> LLMBackend:
    """Build (and load) the backend named by `cfg.backend`."""
    gen = generation_settings(cfg)
    if cfg.backend == "template":
        from editgen.llm.template_backend import TemplateBackend

        return TemplateBackend(gen=gen)
    if cfg.backend == "openai":
        from editgen.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg.model, gen, cfg.openai)
    if cfg.backend == "vllm":
        from editgen.llm.vllm_backend import VllmBackend

        return VllmBackend(cfg.model, gen, cfg.vllm)
    raise ValueError(f"instruct.backend: unknown backend {cfg.backend!r}")
