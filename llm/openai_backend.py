"""OpenAI-compatible server backend (vLLM's server, TGI, hosted APIs) over plain HTTP.

Standard library only (urllib + a thread pool), so it runs in any venv. Concurrency is bounded per
actor; timeouts, connection errors, 408/429/5xx and unreadable bodies are retried with exponential
backoff; a request that still fails becomes one row dropped as `llm_request_failed`, never a failed
partition. The API key is read from the environment variable named in config and sent only as a
header: it is never stored in config, results or logs.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from editgen.llm.base import REQUEST_FAILED, GenerationSettings, LLMBackend, LLMRequest, LLMResult
from editgen.prompts.schema import response_format

if TYPE_CHECKING:
    from editgen.pipeline.settings.instruct import OpenAISettings

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RetryableError(Exception):
    """A failure worth another try (server overloaded, timed out, answered garbage)."""


class OpenAIBackend(LLMBackend):
    name = "openai"

    def __init__(self, model: str, gen: GenerationSettings, settings: OpenAISettings) -> None:
        super().__init__(model, gen)
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        key = os.environ.get(settings.api_key_env)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._response_format = response_format(gen.schema, settings.response_format) if gen.schema else None
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="openai")

    def __repr__(self) -> str:  # never show headers (the key)
        return f"OpenAIBackend(url={self.url!r}, model={self.model!r})"

    def body(self, req: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "temperature": self.gen.temperature,
            "top_p": self.gen.top_p,
            "max_tokens": self.gen.max_tokens,
            "seed": req.seed,
        }
        if self._response_format is not None:
            body["response_format"] = self._response_format
        body.update(self.settings.extra_body)
        return body

    def _post(self, payload: bytes) -> LLMResult:
        request = urllib.request.Request(self.url, data=payload, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code in RETRY_STATUS:
                raise RetryableError(f"HTTP {exc.code}") from None
            raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # timeouts, resets
            raise RetryableError(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError(f"unreadable response body: {raw[:80]!r}") from None
        return LLMResult(
            text=text if isinstance(text, str) else None,
            generated_tokens=int(usage.get("completion_tokens") or 0),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
        )

    def _one(self, req: LLMRequest) -> LLMResult:
        payload = json.dumps(self.body(req)).encode()
        s = self.settings
        jitter = random.Random(req.seed)
        for attempt in range(s.max_retries + 1):
            try:
                result = self._post(payload)
                result.retries = attempt
                return result
            except RetryableError as exc:
                if attempt == s.max_retries:
                    log.warning("openai: request %s failed after %d tries: %s", req.row_id, attempt + 1, exc)
                    return LLMResult(text=None, error=REQUEST_FAILED, retries=attempt)
                delay = min(s.backoff_max_s, s.backoff_s * 2**attempt) * (0.5 + jitter.random() / 2)
                time.sleep(delay)
            except Exception as exc:  # a non-retryable answer (4xx): this row only
                log.warning("openai: request %s rejected: %s", req.row_id, exc)
                return LLMResult(text=None, error=REQUEST_FAILED, retries=attempt)
        return LLMResult(text=None, error=REQUEST_FAILED)  # unreachable; keeps type checkers calm

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
