"""Instruct stage: per caption, an LLM writes an edit instruction and the edited caption.

Per batch: build every row's seeded prompt, make ONE backend call for all of them, parse tolerantly,
re-ask only the unparseable rows with a new seed (up to `max_attempts` calls per batch), validate,
then derive what Prompt-to-Prompt needs (edit kind, changed words). Exactly one output row per input
row (per emitted turn with sessions); a dropped row carries a named reason and nulls in the edit columns.

Every kept answer has an `edit_type` (prompts/taxonomy.py). With `instruct.type_weights`, each row is
first assigned the type it is asked for (`type_requested`, by a hash of its id and the seed); an answer
of another type is kept and flagged `type_fallback`. The per-type counts (`type_requested:<t>`,
`type_kept:<t>`, `type_fallback`) go into the partition's metrics, which status sums (docs/edit_types.md).

With `instruct.inverse` the same request also asks for the instruction that undoes the edit, validated with
it, and the output gains the column `inverse_instruction` (docs/inverse_edits.md); without it the output
is exactly as before (no such column), so the stage version and every hash stay.

With `instruct.turns` = k > 1 each row starts a session (docs/sessions.md): turn 1 is asked as above, then
turn t+1, on turn t's edited caption, for the sessions whose turn t was kept, one backend round per turn.
Each turn is a row of its own (id `turn_id(session, t)`, its own type, seed and validation, plus a drop of a
turn that repeats an earlier caption of its session), emitted up to and including the first dropped turn,
with the columns `session_id` and `turn` (llm/turns.py). With turns = 1 none of this exists.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from editgen.llm.base import LLMBackend, LLMRequest, LLMResult
from editgen.llm.parse import ParsedEdit, parse_edit
from editgen.llm.reask import Round, ask_until_parsed
from editgen.llm.turns import repeats_caption, turn_rows
from editgen.llm.validate import MISSING_CAPTION, SESSION_REPEATS, UNPARSEABLE, Validator
from editgen.p2p.edit_diff import EditDiff, diff_captions
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.sessions import turn_id
from editgen.pipeline.settings.base import Resources
from editgen.pipeline.settings.instruct import InstructConfig
from editgen.pipeline.stage import Stage, with_status
from editgen.prompts.builder import PromptBuilder
from editgen.prompts.taxonomy import assign_type, canonical
from editgen.stages.llm_actors import llm_python, llm_ray_options, llm_resources

log = logging.getLogger(__name__)

_LIST = pa.list_(pa.string())
#: The columns this stage adds, in order, with fixed types (stable schema even for all-null batches).
OUTPUT_FIELDS = [
    pa.field("instruction", pa.string()),
    pa.field("edited_caption", pa.string()),
    pa.field("edit_type", pa.string()),
    pa.field("type_requested", pa.string()),
    pa.field("type_fallback", pa.bool_()),
    pa.field("edit_kind", pa.string()),
    pa.field("changed_words", _LIST),
    pa.field("source_words", _LIST),
    pa.field("target_words", _LIST),
    pa.field("llm_backend", pa.string()),
    pa.field("llm_model", pa.string()),
    pa.field("llm_seed", pa.int64()),
    pa.field("attempts", pa.int64()),
]
#: The column `instruct.inverse` adds after those (kept rows only).
INVERSE_FIELD = pa.field("inverse_instruction", pa.string())
#: Metric: the rows a partition wrote for turns 2.. of its sessions (its rows out beyond its rows in).
LATER_TURNS = "session_later_turns"
METRIC_KEYS = ("requests", "generated_tokens", "prompt_tokens", "llm_seconds", "retries", "request_retries")
#: Metric-key prefixes of the per-type counts (rows asked for a type; answers kept, by their type).
TYPE_REQUESTED, TYPE_KEPT, TYPE_FALLBACK = "type_requested:", "type_kept:", "type_fallback"


@dataclass
class RowState:
    """What is known about one row while its batch is processed."""

    caption: str | None
    requested: str | None = None
    seed: int | None = None
    attempts: int = 0
    edit: ParsedEdit | None = None
    reason: str | None = None
    diff: EditDiff | None = None
    edit_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        """Validated and diffed, with no drop reason."""
        return self.reason is None and self.edit is not None and self.diff is not None

    @property
    def edited_caption(self) -> str | None:
        return self.edit.edited_caption if self.edit is not None else None

    @property
    def fallback(self) -> bool | None:
        """Whether a kept answer is of another type than the one asked for (None: none was asked for)."""
        return None if self.requested is None else self.edit_type != self.requested


def _drop_repeat(chain: list[RowState]) -> None:
    """Drop a session's last turn (`SESSION_REPEATS`) when its edited caption is one the session already had:
    its input caption or an earlier turn's (an LLM undoing the previous turn, or going in a circle)."""
    last = chain[-1]
    if last.kept and repeats_caption(last.edited_caption or "", [r.caption for r in chain]):
        last.reason = SESSION_REPEATS


class InstructStage(Stage[InstructConfig]):
    name = "instruct"
    # 3: answers carry an edit type (schema, prompts, validation, type columns; issue 22);
    # 2: blocklist wildcards (porn*) now match in LLM outputs, as in ingest
    version = "3"
    input_columns = ("caption",)
    output_columns = tuple(f.name for f in OUTPUT_FIELDS)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.backend: LLMBackend | None = None
        self.builder: PromptBuilder | None = None
        self.validator: Validator | None = None

    # ---- scheduling ------------------------------------------------------------------------
    def resources(self) -> Resources:
        """The template and openai backends never need a GPU; a vLLM engine needs its TP degree. With
        GPUs, the generation time times their number is the partition's `gpu_seconds` (an openai
        server's GPUs are someone else's: its partitions report CPU time only)."""
        return llm_resources(self.settings.resources, self.settings.backend, self.settings.vllm)

    def llm_python(self) -> str | None:
        """Interpreter of the LLM venv for the vLLM actors, if one is configured."""
        return llm_python(self.settings.backend, self.settings.vllm)

    def ray_options(self) -> dict[str, Any]:
        """vLLM pins its own torch: this stage's actors run under the LLM venv (stages/llm_actors.py)."""
        return llm_ray_options(self.llm_python())

    def preflight(self) -> None:
        """The prompt files load (and, with `inverse`, hold inverse examples) before OUT is written."""
        s = self.settings
        try:
            PromptBuilder(s.seed, s.fewshot_k, s.system_prompt_file, s.fewshot_file, s.inverse)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"instruct: {exc}") from None

    # ---- worker side -----------------------------------------------------------------------
    def setup(self, backend: LLMBackend | None = None, blocked_terms: list[str] | None = None) -> None:
        """Load prompts, blocklist and the backend once per worker (tests may inject both)."""
        from editgen.llm import make_backend

        s = self.settings
        self.builder = PromptBuilder(s.seed, s.fewshot_k, s.system_prompt_file, s.fewshot_file, s.inverse)
        self.validator = Validator.from_config(s, blocked_terms)
        t0 = time.perf_counter()
        self.backend = backend or make_backend(s)
        log.info("instruct: %s backend ready (%s) in %.1fs", self.backend.name, s.model, time.perf_counter() - t0)

    def teardown(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _add(self, key: str, value: float) -> None:
        self.metrics[key] = self.metrics.get(key, 0.0) + float(value)

    def _generate(self, rows: list[RowState], ids: list[str]) -> None:
        """Ask the backend for all rows; re-ask only unparseable ones, one call per round (llm.reask)."""
        backend, builder = self.backend, self.builder
        assert backend is not None and builder is not None

        def request(i: int, attempt: int) -> LLMRequest:
            return builder.request(ids[i], rows[i].caption or "", attempt, backend.needs_messages, rows[i].requested)

        def accept(i: int, req: LLMRequest, res: LLMResult, attempt: int) -> bool:
            row = rows[i]
            row.seed, row.attempts = req.seed, attempt + 1
            self._add("generated_tokens", res.generated_tokens)
            self._add("prompt_tokens", res.prompt_tokens)
            self._add("request_retries", res.retries)
            if res.error:
                row.reason = res.error
                return True
            row.edit = parse_edit(res.text)
            return row.edit is not None

        pending = [i for i, r in enumerate(rows) if r.reason is None]
        for i in ask_until_parsed(backend, pending, request, accept, self.settings.max_attempts, self._count_round):
            rows[i].reason = UNPARSEABLE

    def _count_round(self, done: Round) -> None:
        self._add("llm_seconds", done.seconds)
        if self.resources().num_gpus > 0:  # a vLLM engine on this actor's GPUs (output/survival.py)
            self._add("gpu_seconds", done.seconds * self.resources().num_gpus)
        self._add("requests", len(done.requests))
        if done.attempt:
            self._add("retries", len(done.requests))

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.backend is None:
            self.setup()
        for key in METRIC_KEYS:
            self.metrics.setdefault(key, 0.0)
        ids = [str(x) for x in batch.column("id").to_pylist()]
        captions = batch.column("caption").to_pylist()
        if self.settings.turns > 1:
            return self._sessions(batch, ids, captions)
        rows = [RowState(caption=c) for c in captions]
        self._ask(rows, ids)
        self._count_types(rows)
        return self._output(batch, rows)

    def _ask(self, rows: list[RowState], ids: list[str]) -> None:
        """One edit per row (a single edit, or one turn of every live session): the requested types, the
        backend calls, validation and the diff. Types and seeds follow from `ids` alone."""
        assert self.validator is not None
        weights = self.settings.type_weights
        for row, row_id in zip(rows, ids, strict=True):
            if not isinstance(row.caption, str) or not row.caption.strip():
                row.reason = MISSING_CAPTION
            elif weights:
                row.requested = assign_type(row_id, self.settings.seed, weights)
        self._generate(rows, ids)
        for row in rows:
            if row.reason is None and row.edit is not None and row.caption is not None:
                row.reason = self.validator.check(row.caption, row.edit)
                if row.reason is None:
                    row.diff = diff_captions(row.caption, row.edit.edited_caption)
                    row.edit_type = canonical(row.edit.edit_type or "")

    def _sessions(self, batch: pa.Table, ids: list[str], captions: list[Any]) -> pa.Table:
        """`instruct.turns` > 1: turn 1 for every row, then turn t+1 for the sessions whose turn t was kept,
        on its edited caption; one backend round per turn (docs/sessions.md). A session's turns are asked
        exactly as single edits with the turn's row id, so turn 1 is the single-turn answer."""
        chains = [[RowState(caption=c)] for c in captions]
        live = list(range(len(chains)))
        for t in range(1, self.settings.turns + 1):
            if t > 1:
                live = [s for s in live if chains[s][-1].kept]
                for s in live:
                    chains[s].append(RowState(caption=chains[s][-1].edited_caption))
            if not live:
                break
            self._ask([chains[s][-1] for s in live], [turn_id(ids[s], t) for s in live])
            for s in live if t > 1 else ():
                _drop_repeat(chains[s])
        flat = [row for chain in chains for row in chain]
        self._add(LATER_TURNS, len(flat) - len(chains))  # rows out = rows in + this (validate's accounting)
        self._count_types(flat)
        return self._output(turn_rows(batch, [len(c) for c in chains], [r.caption for r in flat]), flat)

    def _count_types(self, rows: list[RowState]) -> None:
        """Rows asked per type, answers kept per type and fallbacks, into the partition's metrics (status
        sums them over partitions: requested vs achieved shares)."""
        for row in rows:
            if row.requested is not None:
                self._add(TYPE_REQUESTED + row.requested, 1)
            if row.reason is None and row.edit_type is not None:
                self._add(TYPE_KEPT + row.edit_type, 1)
                if row.fallback:
                    self._add(TYPE_FALLBACK, 1)

    def _output(self, batch: pa.Table, rows: list[RowState]) -> pa.Table:
        kept = [r.kept for r in rows]

        def col(values: list[Any]) -> list[Any]:
            return [v if k else None for v, k in zip(values, kept, strict=True)]

        cols: dict[str, list[Any]] = {
            "instruction": col([r.edit.instruction if r.edit else None for r in rows]),
            "edited_caption": col([r.edit.edited_caption if r.edit else None for r in rows]),
            "edit_type": col([r.edit_type for r in rows]),
            # The type asked for is known before the LLM answers: kept on dropped rows too (the funnel by type).
            "type_requested": [r.requested for r in rows],
            "type_fallback": col([r.fallback for r in rows]),
            "edit_kind": col([r.diff.kind if r.diff else None for r in rows]),
            "changed_words": col([r.diff.changed_words if r.diff else None for r in rows]),
            "source_words": col([r.diff.source_words if r.diff else None for r in rows]),
            "target_words": col([r.diff.target_words if r.diff else None for r in rows]),
            # Provenance stays on dropped rows that reached the LLM: it tells how a drop came about.
            "llm_backend": [self.backend.name if r.attempts else None for r in rows],  # type: ignore[union-attr]
            "llm_model": [self.backend.model if r.attempts else None for r in rows],  # type: ignore[union-attr]
            "llm_seed": [r.seed for r in rows],
            "attempts": [r.attempts for r in rows],
        }
        fields = list(OUTPUT_FIELDS)
        if self.settings.inverse:
            fields.append(INVERSE_FIELD)
            cols[INVERSE_FIELD.name] = col([r.edit.inverse_instruction if r.edit else None for r in rows])
        table = batch
        for f in fields:
            if f.name in table.column_names:
                table = table.drop_columns([f.name])
            table = table.append_column(f, pa.array(cols[f.name], type=f.type))
        return with_status(table, [None if k else (r.reason or UNPARSEABLE) for r, k in zip(rows, kept, strict=True)])
