"""The one interface every LLM backend implements: a batch of chat requests in, raw texts out.

Backends only generate; parsing, retries on unparseable output and validation live in the stage, so
vLLM, an OpenAI-compatible server and the rule-based template backend are judged identically.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from editgen.prompts.builder import LLMRequest

__all__ = ["REQUEST_FAILED", "GenerationSettings", "LLMBackend", "LLMRequest", "LLMResult"]

#: Drop reason of a row whose request failed for good (after the backend's own retries).
REQUEST_FAILED = "llm_request_failed"


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and output constraints shared by all backends."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass
class LLMResult:
    """One answer. `error` set means no text: the request failed after retries."""

    text: str | None
    generated_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    retries: int = 0


class LLMBackend(ABC):
    """A loaded backend; `generate` is called once per batch and returns one result per request."""

    #: Value of the `llm_backend` output column.
    name: str = "base"
    #: False for backends that work from the caption alone (skips building chat prompts).
    needs_messages: bool = True

    def __init__(self, model: str, gen: GenerationSettings) -> None:
        self.model = model
        self.gen = gen

    @abstractmethod
    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """Answer all requests (same order); must not raise for a single bad request."""

    def close(self) -> None:
        """Release engines, pools, sockets (nothing to release by default)."""
        return None
