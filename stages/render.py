"""Render: before/after candidates for every (caption, edited caption) pair, by the chosen edit engine.

One Ray actor per GPU (or CPU slot) loads the base diffusion pipeline once (engines.runtime, with
`render.model_edits` applied right after loading) and the engines `render.engine` names (engines/; one, or
a weighted mix with each pair's engine drawn from a hash of its id). Each pair's engine draws its N
candidates, each with its own seed and parameters from a per-(pair, candidate) RNG, so a redone
partition reproduces the same candidates; every parameter is stored in `params` (the typed candidate
record, engines.record), from which `engines.regenerate.regenerate` re-renders the images bit for bit.
With early stop, candidates are CLIP-scored as they finish and a pair stops once filter.top_k pass (so
the filter keys early stop reads are part of render's stage hash). A pair an engine refuses before any
UNet work (an edit past the text encoder's 77 tokens: `render_edit_truncated`) is dropped with the
engine's reason. Multi-turn sessions (docs/sessions.md): a GROUP engine draws a session's turns at once;
a CHAIN engine's turn t is rendered, a round per turn, from turn t-1's output by the engine's twin whose
source is a picture. This module holds no engine-specific code: it asks the engines.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from editgen.engines.base import (
    CHAIN,
    EditEngine,
    PairRejected,
    RenderedCandidate,
    chain_row,
    chained_settings,
    check_sessions,
    chosen_engines,
    engine_class,
    engine_names,
    pair_candidates,
    pair_engine,
    reconstructs,
    with_compute,
)
from editgen.engines.record import CandidateRecord
from editgen.engines.runtime import Runtime, prepare_models
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.sessions import AFTER_FAILURE, session_of, session_units
from editgen.pipeline.settings.render import RenderConfig
from editgen.pipeline.stage import Partition, Stage, count_types, with_status

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig

log = logging.getLogger("editgen")

OUTPUT_FIELDS = [
    ("candidate", pa.int32()),
    ("input_image", pa.binary()),
    ("edited_image", pa.binary()),
    ("mask", pa.binary()),
    ("reconstruction", pa.binary()),
    ("image_format", pa.string()),
    ("seed", pa.int64()),
    ("params", pa.string()),
    ("render_model", pa.string()),
    ("render_mode", pa.string()),
    ("candidates_drawn", pa.int32()),
]

#: What early stop reads from the filter section (its CLIP scorer and EarlyStop): part of render's hash
#: when early stop is on, so a changed threshold or model never reuses counts decided under the old one.
EARLY_STOP_READS = (
    "filter.top_k", "filter.min_sim_image", "filter.min_sim_direction", "filter.min_sim_0", "filter.min_sim_1",
    "filter.clip_model", "filter.clip_pretrained", "filter.precision", "filter.device", "filter.clip_batch_size",
)
#: ... and, when an engine gives reconstructions, the fidelity thresholds (a poor one does not count).
FIDELITY_READS = ("filter.min_reconstruction_psnr", "filter.min_reconstruction_ssim")

Planned = list[tuple[int, CandidateRecord]]  # (row index, record) in render order


class RenderStage(Stage[RenderConfig]):
    name = "render"
    version = "3"  # 3: every P2P candidate carries its edit mask (issue 21); 2: P2P rules as the reference (issue 11)
    input_columns = ("caption", "edited_caption")
    output_columns = tuple(name for name, _ in OUTPUT_FIELDS)

    @classmethod
    def config_reads(cls, config: EditgenConfig) -> tuple[str, ...]:
        reads = EARLY_STOP_READS if config.render.early_stop else ()
        if config.render.early_stop and reconstructs(config.render):
            reads = (*reads, *FIDELITY_READS)
        return (*super().config_reads(config), *reads)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.runtime: Runtime | None = None
        self.engines: dict[str, EditEngine] = {}
        self.chained: dict[str, EditEngine] = {}  # CHAIN engines' twins whose source is a picture
        self.scorer: Any = None

    def preflight(self) -> None:
        s = self.settings
        if s.early_stop and self.config.filter.top_k is None:
            raise ConfigError("render.early_stop needs filter.top_k (how many passing candidates end a pair)")
        check_sessions(self.config.instruct.turns, s)
        prepare_models(s)
        for cls in chosen_engines(s):
            cls.preflight(s)

    def setup(self) -> None:
        self.runtime = Runtime.for_stage(self.settings, self.resources().num_cpus)
        for name in engine_names(self.settings):  # render.engine's and the routes'
            engine = engine_class(name)(self.runtime, self.settings)
            engine.setup()
            self.engines[name] = engine
            if engine.sessions == CHAIN and self.config.instruct.turns > 1:  # its twin for turns 2..
                twin = engine_class(name)(self.runtime, chained_settings(self.settings))
                twin.setup()
                self.chained[name] = twin
        if self.settings.early_stop:
            from editgen.filters.pairs.clip_score import ClipScorer

            self.scorer = ClipScorer.from_config(self.config.filter)

    def engine_for(self, row: dict[str, Any]) -> EditEngine:
        """The pair's engine: its edit type's route (`render.routes`), else the one `render.engine` names
        or a weighted draw from the pair's key."""
        return self.engines[pair_engine(self.settings, row)[0]]

    def type_metrics(self, out: pa.Table) -> dict[str, float]:
        """Per-type counts plus each type's UNet FLOPs (from every candidate's record, kept or not), so the
        funnel can say what a kept sample of each type cost."""
        flops = [(json.loads(p).get("compute") or {}).get("unet_flops", 0.0) if p else 0.0
                 for p in out["params"].to_pylist()]
        return count_types(out, flops)

    def candidates_for(self, row: dict[str, Any]) -> int:
        """Candidates of the pair: `render.type_candidates` of its edit type, else `render.candidates`."""
        return pair_candidates(self.settings, row)

    def _account(self, out: RenderedCandidate, row: dict[str, Any]) -> RenderedCandidate:
        """The candidate's UNet work (its engine says) into its record and the partition's metrics, and
        the route that chose its engine (the pair's edit type; none when `render.engine` did)."""
        c = self.engines[out.record.engine].compute(out)
        for key, value in (("unet_row_steps", c.unet_row_steps), ("unet_flops", c.unet_flops)):
            self.metrics[key] = self.metrics.get(key, 0.0) + value
        out = with_compute(out, c)
        route = pair_engine(self.settings, row)[1]
        return out if route is None else replace(out, record=replace(out.record, route=route))

    def _render(self, records: list[CandidateRecord],
                engines: dict[str, EditEngine] | None = None) -> list[RenderedCandidate]:
        injected = os.environ.get(FAULT_RENDER_ERROR, "")
        if injected:  # test hook (docs/faults.md): the errors a real GPU job meets
            raise (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)") if injected == "oom"
                   else ValueError("injected per-pair render failure"))
        return (engines or self.engines)[records[0].engine].render(records)

    def _draw(self, i: int, row: dict[str, Any], n: int) -> tuple[int, list[CandidateRecord]]:
        """A pair's first `n` records (none with early stop: rounds draw them), checked against the model."""
        engine = self.engine_for(row)
        recs = engine.draw(row, n)
        engine.check((recs or engine.draw(row, 1))[0])
        return i, recs

    def _draw_unit(self, unit: list[int], rows: list[dict[str, Any]], take: list[int], cols: dict[str, list[Any]],
                   reasons: list[str | None], chains: list[list[int]]) -> list[tuple[int, list[CandidateRecord]]]:
        """A lone pair's records, or a session's (pipeline/sessions.py): a GROUP engine draws every turn
        that renders (the first turn it refuses is dropped with its reason, later ones after it); a CHAIN
        engine's turn 1 is drawn as a pair and the session goes to `chains` for its later turns."""
        first = rows[unit[0]]
        if session_of(first) is None:
            return [self._draw(unit[0], first, self.candidates_for(first) if not self.settings.early_stop else 0)]
        engine = self.engine_for(first)
        if engine.sessions == CHAIN:
            pair = self._draw(unit[0], first, self.candidates_for(first))
            chains.append(unit)
            return [pair]
        drawn = engine.draw_session([rows[i] for i in unit], self.candidates_for(first))
        done = len(drawn.turns)
        if drawn.rejected is not None:
            log.warning("render: session %s turn %d dropped: %s", first.get("id"), done + 1, drawn.rejected)
            self._drop(unit[done], drawn.rejected.reason, take, cols, reasons)
            for i in unit[done + 1:]:
                self._drop(i, AFTER_FAILURE, take, cols, reasons)
        return [(unit[t], recs) for t, recs in enumerate(drawn.turns)]

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        s = self.settings
        for engine in self.engines.values():
            engine.begin(table)
        for twin in self.chained.values():  # its pictures are the previous turns' outputs, not fetched ones
            twin.begin(pa.table({"image": pa.array([], pa.binary())}))
        rows = table.to_pylist()
        t0 = time.perf_counter()
        take: list[int] = []
        cols: dict[str, list[Any]] = {name: [] for name, _ in OUTPUT_FIELDS}
        reasons: list[str | None] = []
        pairs, chains = self._draw_all(rows, take, cols, reasons)
        if s.early_stop:
            outputs = self._render_early_stop(rows, [i for i, _ in pairs])
        else:
            outputs = self._render_all(pairs)
        outputs += self._render_chains(rows, chains, outputs)
        check_failures(s.max_failed_fraction, len(rows), [o for _, o, _ in outputs if isinstance(o, Exception)
                                                           and not isinstance(o, PairRejected)])
        for i, outs, drawn in outputs:
            if isinstance(outs, Exception):
                self._drop(i, outs.reason if isinstance(outs, PairRejected) else "render_failed", take, cols, reasons)
                continue
            for o in outs:
                self._keep(i, self._account(o, rows[i]), drawn, take, cols, reasons)
        order = sorted(range(len(take)), key=lambda j: (take[j], cols["candidate"][j]))
        # real sources: the fetched bytes are not copied onto every candidate (input_image has its pixels)
        out = table.drop_columns([c for c in ("image",) if c in table.column_names])
        out = out.take(pa.array([take[j] for j in order], pa.int64()))
        for name, typ in OUTPUT_FIELDS:
            out = out.append_column(name, pa.array([cols[name][j] for j in order], typ))
        self._finish_metrics(time.perf_counter() - t0, sum(1 for r in reasons if r is None))
        return with_status(out, [reasons[j] for j in order])

    def _draw_all(self, rows: list[dict[str, Any]], take: list[int], cols: dict[str, list[Any]],
                  reasons: list[str | None]) -> tuple[list[tuple[int, list[CandidateRecord]]], list[list[int]]]:
        """Every unit's records (a lone pair, a GROUP engine's whole session, a CHAIN engine's turn 1), and
        the CHAIN sessions whose later turns `_render_chains` renders; refused units dropped here."""
        pairs: list[tuple[int, list[CandidateRecord]]] = []
        chains: list[list[int]] = []
        units, orphans = session_units(rows)
        for i in orphans:  # a turn whose predecessor is not here: nothing to edit
            self._drop(i, AFTER_FAILURE, take, cols, reasons)
        for unit in units:
            try:
                pairs += self._draw_unit(unit, rows, take, cols, reasons, chains)
            except PairRejected as exc:  # refused before any GPU time is spent (e.g. a no-op edit)
                log.warning("render: pair %s dropped: %s", rows[unit[0]].get("id"), exc)
                for j, i in enumerate(unit):
                    self._drop(i, exc.reason if j == 0 else AFTER_FAILURE, take, cols, reasons)
            except (ValueError, KeyError) as exc:
                log.warning("render: pair %s dropped: %s", rows[unit[0]].get("id"), exc)
                for j, i in enumerate(unit):
                    self._drop(i, "render_invalid_pair" if j == 0 else AFTER_FAILURE, take, cols, reasons)
        return pairs, chains

    def _render_chains(self, rows: list[dict[str, Any]], chains: list[list[int]],
                       outputs: list[tuple[int, Any, int]]) -> list[tuple[int, Any, int]]:
        """Turns 2.. of CHAIN engines' sessions, one round per turn: candidate c of turn t is a pair whose
        photograph is candidate c of turn t-1's edited image, rendered by the engine's chained twin; its
        published input is those very bytes. A turn after a failed or refused one: AFTER_FAILURE."""
        done: dict[int, Any] = {i: outs for i, outs, _ in outputs}
        found: list[tuple[int, Any, int]] = []
        for t in range(1, max((len(u) for u in chains), default=0)):
            planned: list[tuple[int, list[CandidateRecord]]] = []
            prev: dict[int, dict[int, RenderedCandidate]] = {}
            for unit in (u for u in chains if len(u) > t):
                i, before = unit[t], done.get(unit[t - 1])
                if isinstance(before, Exception) or not before:
                    done[i] = PairRejected(AFTER_FAILURE, "the turn before failed")
                    found.append((i, done[i], 0))
                    continue
                prev[i] = {int(o.record.candidate or 0): o for o in before}
                drawn = self._draw_chained(rows[i], list(prev[i].values()))
                if isinstance(drawn, PairRejected):
                    done[i] = drawn
                    found.append((i, drawn, 0))
                else:
                    planned.append((i, drawn))
            for i, outs, n in self._render_all(planned, self.chained):
                if not isinstance(outs, Exception):
                    outs = [replace(o, input_image=prev[i][int(o.record.candidate or 0)].edited_image) for o in outs]
                done[i] = outs
                found.append((i, outs, n))
        return found

    def _draw_chained(self, row: dict[str, Any], prev: list[RenderedCandidate]) -> list[CandidateRecord] | PairRejected:
        """Turn t's records, one per candidate whose turn t-1 rendered, from that candidate's edited image
        (engines.base.chain_row); the first refusal when none can be drawn."""
        engine = self.chained[prev[0].record.engine]
        records: list[CandidateRecord] = []
        refused: PairRejected | None = None
        for o in prev:
            c = int(o.record.candidate or 0)
            try:
                records += engine.draw(chain_row(row, c, o.edited_image), 1, start=c)
            except PairRejected as exc:
                refused = refused or exc
            except (ValueError, KeyError) as exc:
                refused = refused or PairRejected("render_invalid_pair", str(exc))
        if records:
            try:
                engine.check(records[0])
            except PairRejected as exc:
                return exc
            except (ValueError, KeyError) as exc:
                return PairRejected("render_invalid_pair", str(exc))
        return records or refused or PairRejected("render_invalid_pair", "no candidate of the turn before")

    def _keep(self, i: int, o: RenderedCandidate, drawn: int, take: list[int], cols: dict[str, list[Any]],
              reasons: list[str | None]) -> None:
        rec = o.record
        take.append(i)
        cols["candidate"].append(int(rec.candidate or 0))
        cols["input_image"].append(o.input_image)
        cols["edited_image"].append(o.edited_image)
        cols["mask"].append(o.mask)
        cols["reconstruction"].append(o.reconstruction)
        cols["image_format"].append(o.image_format)
        cols["seed"].append(int(rec.seed))
        cols["params"].append(rec.to_json())
        engine = self.engines[rec.engine]
        cols["render_model"].append(engine.model_label())
        cols["render_mode"].append(engine.mode(rec))
        cols["candidates_drawn"].append(drawn)
        reasons.append(None)

    def _chunks(self, plan: Planned, engines: dict[str, EditEngine] | None = None) -> Iterator[Planned]:
        """Render calls: `resources.batch_size` records of one engine each, in plan order per engine
        (an engine's whole groups: its `group_size`)."""
        by_engine: dict[str, Planned] = {}
        for i, r in plan:
            by_engine.setdefault(r.engine, []).append((i, r))
        for name, mine in by_engine.items():
            engine = (engines or self.engines)[name]
            k = engine.group_size()
            size = max(1, self.resources().batch_size)
            units: dict[object, Planned] = {}  # a session candidate's turns render as one unit
            for i, r in mine:
                units.setdefault(engine.session_group(r), []).append((i, r))
            plain = units.pop(None, [])
            size = max(k, size - size % k)
            for start in range(0, len(plain), size):
                yield plain[start:start + size]
            yield from pack_units(list(units.values()), size)

    def _finish_metrics(self, seconds: float, candidates: int) -> None:
        self.metrics["render_seconds"] = self.metrics.get("render_seconds", 0.0) + seconds
        if self.runtime is not None and self.runtime.on_gpu:
            self.metrics["gpu_seconds"] = self.metrics["render_seconds"]
        self.metrics["candidates"] = self.metrics.get("candidates", 0.0) + candidates
        # summed in: an engine's work no kept candidate carries (a dropped pair's) adds to unet_row_steps
        for engine in [*self.engines.values(), *self.chained.values()]:
            for key, value in engine.partition_metrics().items():
                self.metrics[key] = self.metrics.get(key, 0.0) + value

    @staticmethod
    def _drop(i: int, reason: str, take: list[int], cols: dict[str, list[Any]], reasons: list[str | None]) -> None:
        take.append(i)
        for name, _ in OUTPUT_FIELDS:
            cols[name].append(-1 if name in ("candidate", "candidates_drawn") else None)
        reasons.append(reason)

    def _render_chunk(self, chunk: Planned, failed: dict[int, Exception],
                      engines: dict[str, EditEngine] | None = None) -> list[RenderedCandidate | None]:
        if not chunk:  # every pair of it failed already
            return []
        try:
            return list(self._render([r for _, r in chunk], engines))
        except Exception as exc:  # noqa: BLE001 - a bad pair must not kill the partition
            raise_if_systemic(exc)
            return self._render_one_by_one(chunk, failed, exc, engines)

    def _render_all(self, pairs: list[tuple[int, list[CandidateRecord]]],
                    engines: dict[str, EditEngine] | None = None) -> list[tuple[int, Any, int]]:
        """All candidates of all pairs, in chunks of `resources.batch_size` records."""
        flat = [(i, r) for i, recs in pairs for r in recs]
        by_pair: dict[int, list[RenderedCandidate]] = {i: [] for i, _ in pairs}
        failed: dict[int, Exception] = {}
        done = 0
        for planned in self._chunks(flat, engines):
            chunk = [(i, r) for i, r in planned if i not in failed]
            for (i, _), o in zip(chunk, self._render_chunk(chunk, failed, engines), strict=True):
                if o is not None:
                    by_pair[i].append(o)
            done += len(planned)
            self.progress(len(pairs) * done / max(1, len(flat)))  # per candidate
        return [(i, failed.get(i) or by_pair[i], len(recs)) for i, recs in pairs]

    def _render_one_by_one(self, chunk: Planned, failed: dict[int, Exception], first: Exception,
                           engines: dict[str, EditEngine] | None = None) -> list[RenderedCandidate | None]:
        log.warning("render: batch failed (%s); retrying its pairs one by one", first)
        outs: list[RenderedCandidate | None] = []
        for i, r in chunk:
            if i in failed:
                outs.append(None)
                continue
            try:
                outs.append(self._render([r], engines)[0])
            except Exception as exc:  # noqa: BLE001
                raise_if_systemic(exc)
                log.warning("render: candidate %s/%s failed: %s", r.pair_id, r.candidate, exc)
                failed[i] = exc
                outs.append(None)
        return outs

    def _render_early_stop(self, rows: list[dict[str, Any]], idx: list[int]) -> list[tuple[int, Any, int]]:
        """Draw candidates in rounds; score each round with CLIP; stop a pair once k pass."""
        from editgen.filters.pairs.early_stop import EarlyStop

        most = {i: self.candidates_for(rows[i]) for i in idx}  # per pair: render.type_candidates
        stops = {n: EarlyStop.from_config(self.config.filter, max_candidates=n,
                                          min_candidates=self.settings.early_stop_min_candidates)
                 for n in set(most.values())}
        es = {i: stops[most[i]] for i in idx}
        done: dict[int, list[RenderedCandidate]] = {i: [] for i in idx}
        failed: dict[int, Exception] = {}
        drawn = {i: 0 for i in idx}
        active = list(idx)
        while active:
            plan: Planned = []
            for i in active:
                n = es[i].remaining(rows[i]["id"])
                plan += [(i, r) for r in self.engine_for(rows[i]).draw(rows[i], n, start=drawn[i])]
            for chunk in self._chunks(plan):
                outs = self._render_chunk(chunk, failed)
                self._score_round(rows, [(i, o) for (i, _), o in zip(chunk, outs, strict=True) if o is not None],
                                  es.__getitem__, done)
                for i, _ in chunk:
                    drawn[i] += 1
                self.progress(sum(min(1.0, drawn[i] / max(1, most[i])) for i in idx))
            active = [i for i in active if i not in failed and not es[i].done(rows[i]["id"])]
        return [(i, failed.get(i) or done[i], drawn[i]) for i in idx]

    def _score_round(self, rows: list[dict[str, Any]], ok: list[tuple[int, RenderedCandidate]],
                     es: Callable[[int], Any], done: dict[int, list[RenderedCandidate]]) -> None:
        """CLIP scores (and, for reconstructions, their fidelity: a poor inversion does not count towards
        top_k either) of a round's rendered candidates, into early stop."""
        from editgen.filters.pairs.fidelity import fidelity_scores

        if not ok:
            return
        scores = self.scorer.score([o.input_image for _, o in ok], [o.edited_image for _, o in ok],
                                   [rows[i]["caption"] for i, _ in ok], [rows[i]["edited_caption"] for i, _ in ok])
        if any(o.reconstruction is not None for _, o in ok):
            scores.update(fidelity_scores([o.input_image for _, o in ok], [o.reconstruction for _, o in ok]))
        for j, (i, o) in enumerate(ok):
            done[i].append(o)
            es(i).add(rows[i]["id"], {k: float(v[j]) for k, v in scores.items()})


def pack_units(units: list[Planned], size: int) -> Iterator[Planned]:
    """Whole units, in order, into chunks of at most `size` records (a larger unit is a chunk alone)."""
    chunk: Planned = []
    for unit in units:
        if chunk and len(chunk) + len(unit) > size:
            yield chunk
            chunk = []
        chunk += unit
    if chunk:
        yield chunk


#: Test hook: "oom" makes every UNet batch raise CUDA's out-of-memory error, "pair" a per-pair ValueError.
FAULT_RENDER_ERROR = "EDITGEN_FAULT_RENDER_ERROR"


class SystemicRenderError(RuntimeError):
    """A failure that is not the pair's fault and would hit every pair (out of memory, a CUDA error, a
    size the model cannot take): the partition fails (retried, then the stage fails, exit 1, resumable)
    instead of every pair being dropped as render_failed and the stage marked complete."""


#: Exception types and message fragments that mean the machine or the model, not the pair, failed.
_SYSTEMIC_TYPES = ("OutOfMemoryError", "MemoryError", "AcceleratorError", "CudaError")
_SYSTEMIC_TEXT = ("out of memory", "cuda error", "cublas", "cudnn", "cuda kernel", "no kernel image",
                  "can't allocate memory", "not enough memory", "illegal memory access", "device-side assert",
                  "nccl", "hip error", "mps backend out of memory")


def is_systemic(exc: BaseException) -> bool:
    names = {t.__name__ for t in type(exc).__mro__}
    text = str(exc).lower()
    return bool(names & set(_SYSTEMIC_TYPES)) or any(frag in text for frag in _SYSTEMIC_TEXT)


def raise_if_systemic(exc: BaseException) -> None:
    if is_systemic(exc):
        raise SystemicRenderError(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                                  ) from exc


def check_failures(max_fraction: float, pairs: int, failures: list[Exception]) -> None:
    """More failed pairs than `render.max_failed_fraction` of the partition is a systemic problem too."""
    if failures and len(failures) > max_fraction * pairs:
        first = failures[0]
        raise SystemicRenderError(
            f"{len(failures)} of {pairs} pairs failed to render (render.max_failed_fraction={max_fraction:g}); "
            f"first: {type(first).__name__}: {str(first).splitlines()[0][:300] if str(first) else ''}"
        )
