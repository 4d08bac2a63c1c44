"""Judge stage: an open vision-language model scores every pair the filter kept (docs/judge.md).

Per batch: build each candidate's request (the rubric, the input image, the edited image, the instruction:
prompts/judge.py), make ONE backend call for all of them (vLLM's engine, or an OpenAI-compatible server;
both take the same chat messages), parse tolerantly, re-ask only the malformed answers with a new seed (up
to `judge.max_attempts` calls per batch) and drop the rest as `judge_unparseable`. Then, over the whole
partition (a pair's candidates are in one partition), the thresholds and top-k on the combined score
(filters/pairs/judge_select.py). Every row keeps its scores and reasons, so the rejected export carries
the judge's reasons as preference negatives. Off unless `judge.enabled`: then the stage is not in the graph.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from editgen.filters.pairs.judge_select import NOT_TOP_K, SCORES, below_reason, combined, top_k
from editgen.llm.judge_parse import UNPARSEABLE, JudgeAnswer, parse_judgement
from editgen.llm.reask import Round, ask_until_parsed
from editgen.llm.vlm_request import JudgeInput, judge_request, judge_schema
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.settings.base import Resources
from editgen.pipeline.settings.judge import JudgeConfig
from editgen.pipeline.stage import Stage, with_status
from editgen.prompts.builder import row_seed
from editgen.prompts.judge import load_rubric, shrink
from editgen.stages.llm_actors import llm_python, llm_ray_options, llm_resources

if TYPE_CHECKING:
    from editgen.llm.base import LLMBackend, LLMRequest, LLMResult
    from editgen.pipeline.config import EditgenConfig
    from editgen.pipeline.stage import Partition

log = logging.getLogger(__name__)

#: Drop reason of a candidate whose images cannot be sent (missing or undecodable).
BAD_IMAGE = "judge_bad_image"
#: The columns this stage adds, in order, with fixed types (stable schema even for all-dropped partitions).
OUTPUT_FIELDS = [
    *(f for name in SCORES for f in (pa.field(f"judge_{name}", pa.int32()), pa.field(f"judge_{name}_reason",
                                                                                      pa.string()))),
    pa.field("judge_score", pa.float64()),
    pa.field("judge_model", pa.string()),
    pa.field("judge_attempts", pa.int32()),
]
METRIC_KEYS = ("requests", "generated_tokens", "prompt_tokens", "judge_seconds", "retries")


class JudgeStage(Stage[JudgeConfig]):
    name = "judge"
    version = "1"
    active_when = "judge.enabled=true"
    input_columns = ("input_image", "edited_image", "instruction")
    output_columns = tuple(f.name for f in OUTPUT_FIELDS)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.backend: LLMBackend | None = None
        self.rubric = ""

    @classmethod
    def active(cls, config: EditgenConfig) -> bool:
        return config.judge.enabled

    def resources(self) -> Resources:
        return llm_resources(self.settings.resources, self.settings.backend, self.settings.vllm)

    def ray_options(self) -> dict[str, Any]:
        return llm_ray_options(llm_python(self.settings.backend, self.settings.vllm))

    def preflight(self) -> None:
        """The rubric loads, and a vLLM judge has an interpreter with vLLM, before OUT is written."""
        try:
            load_rubric(self.settings.rubric_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"judge: {exc}") from None
        s = self.settings
        if s.backend == "vllm" and llm_python(s.backend, s.vllm) is None and importlib.util.find_spec("vllm") is None:
            raise ConfigError("judge.backend=vllm: this Python has no vLLM; point EDITGEN_LLM_PYTHON (or "
                              "judge.vllm.python) at the LLM venv's interpreter (`make venv-llm` builds "
                              ".venv-llm), or use judge.backend=openai with a server")

    def setup(self, backend: LLMBackend | None = None) -> None:
        """The rubric and the backend, once per worker (tests may inject a backend)."""
        self.rubric = load_rubric(self.settings.rubric_file)
        t0 = time.perf_counter()
        self.backend = backend or make_judge_backend(self.settings)
        log.info("judge: %s backend ready (%s) in %.1fs", self.backend.name, self.settings.model,
                 time.perf_counter() - t0)

    def teardown(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        if self.backend is None:
            self.setup()
        for key in METRIC_KEYS:
            self.metrics.setdefault(key, 0.0)
        rows = table.to_pylist()
        answers: list[JudgeAnswer | str] = []
        size = self.resources().batch_size
        for i in range(0, len(rows), size):
            answers += self._judge(rows[i:i + size])
            self.progress(min(len(rows), i + size))
        return self._output(table, rows, answers)

    def _request(self, row: dict[str, Any], attempt: int) -> LLMRequest:
        s, key = self.settings, sample_id(row)
        inp = JudgeInput(row_id=key, instruction=str(row.get("instruction") or ""),
                         input_image=shrink(row["input_image"], s.image_side),
                         edited_image=shrink(row["edited_image"], s.image_side), seed=row_seed(key, s.seed, attempt))
        return judge_request(inp, self.rubric)

    def _judge(self, rows: list[dict[str, Any]]) -> list[JudgeAnswer | str]:
        """Each row's judgement, or its drop reason; malformed answers re-asked, one call per round (llm.reask)."""
        assert self.backend is not None
        found: list[JudgeAnswer | str] = [UNPARSEABLE] * len(rows)
        first: dict[int, LLMRequest] = {}  # attempt 0's requests; building one is the images' decode check
        for i, row in enumerate(rows):
            try:
                first[i] = self._request(row, 0)
            except (ValueError, KeyError, TypeError):
                found[i] = BAD_IMAGE

        def accept(i: int, _req: LLMRequest, res: LLMResult, attempt: int) -> bool:
            rows[i]["_attempts"] = attempt + 1
            answer = None if res.error else parse_judgement(res.text, self.settings.max_reason_chars)
            if answer is not None or res.error:
                found[i] = answer if answer is not None else str(res.error)
                return True
            return False

        ask_until_parsed(self.backend, list(first),
                         lambda i, attempt: first[i] if attempt == 0 else self._request(rows[i], attempt),
                         accept, self.settings.max_attempts, self._count)
        return found

    def _count(self, done: Round) -> None:
        m, n = self.metrics, len(done.requests)
        m["requests"] += n
        m["retries"] += n if done.attempt else 0
        m["judge_seconds"] += done.seconds
        gpus = self.resources().num_gpus  # a vLLM engine on this actor's GPUs (an openai server's are not ours)
        if gpus and self.settings.backend == "vllm":
            m["gpu_seconds"] = m.get("gpu_seconds", 0.0) + done.seconds * gpus
        m["generated_tokens"] += sum(r.generated_tokens for r in done.results)
        m["prompt_tokens"] += sum(r.prompt_tokens for r in done.results)

    def _output(self, table: pa.Table, rows: list[dict[str, Any]], answers: list[JudgeAnswer | str]) -> pa.Table:
        """Scores, reasons and the combined score per row; thresholds, then top-k (judge_select)."""
        s = self.settings
        cols: dict[str, list[Any]] = {f.name: [] for f in OUTPUT_FIELDS}
        reasons: list[str | None] = []
        minimum = {"instruction": s.min_instruction, "preservation": s.min_preservation, "quality": s.min_quality}
        for row, ans in zip(rows, answers, strict=True):
            judged = isinstance(ans, JudgeAnswer)
            for name in SCORES:
                cols[f"judge_{name}"].append(ans.scores[name] if judged else None)
                cols[f"judge_{name}_reason"].append(ans.reasons[name] if judged else None)
            values = {**{k: row.get(k) for k in ("sim_direction", "sim_image")}, **(ans.scores if judged else {})}
            cols["judge_score"].append(combined(values, s.weights) if judged else math.nan)
            cols["judge_model"].append(s.model if row.get("_attempts") else None)
            cols["judge_attempts"].append(int(row.get("_attempts") or 0))
            reasons.append(below_reason(ans.scores, minimum) if judged else str(ans))
        passing = [r is None for r in reasons]
        kept = top_k([str(r["id"]) for r in rows], [int(r.get("candidate") or 0) for r in rows],
                     cols["judge_score"], passing, s.top_k)
        reasons = [NOT_TOP_K if p and not k else r for r, p, k in zip(reasons, passing, kept, strict=True)]
        out = table
        for f in OUTPUT_FIELDS:
            out = out.drop_columns([f.name]) if f.name in out.column_names else out
            out = out.append_column(f, pa.array(cols[f.name], type=f.type))
        return with_status(out, reasons)


def sample_id(row: dict[str, Any]) -> str:
    """The key a judge request is seeded from: the candidate's sample (row id and candidate index)."""
    return f"{row.get('id')}#{int(row.get('candidate') or 0)}"


def make_judge_backend(cfg: JudgeConfig) -> LLMBackend:
    """The judge's backend: the same vLLM and OpenAI-compatible backends as instruct, with the judge's
    sampling and answer schema."""
    from editgen.llm.base import GenerationSettings

    gen = GenerationSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                             schema=judge_schema(max_reason_chars=cfg.max_reason_chars))
    if cfg.backend == "openai":
        from editgen.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg.model, gen, cfg.openai)
    from editgen.llm.vllm_backend import VllmBackend

    return VllmBackend(judge_model(cfg.model), gen, cfg.vllm)


#: `judge.model` of the tiny profile: the random Idefics3 tiny/vlm.py builds (once, into the cache).
TINY_VLM = "tiny-vlm"


def judge_model(model: str) -> str:
    """The model vLLM loads: a hub id or local path as given; `tiny-vlm` built on first use."""
    if model != TINY_VLM:
        return model
    from editgen.tiny.vlm import build_tiny_vlm, default_dir

    return str(build_tiny_vlm(default_dir()))
