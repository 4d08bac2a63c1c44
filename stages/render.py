"""Render: Prompt-to-Prompt before/after candidates for every (caption, edited caption) pair.

One Ray actor per GPU (or CPU slot) loads the diffusers pipeline once; each partition's pairs become
N candidates, each with its own seed and P2P parameters drawn as InstructPix2Pix did, from a
per-(pair, candidate) RNG, so a redone partition reproduces the same candidates. Every parameter is
stored in `params` (JSON), from which `p2p.regenerate.regenerate` re-renders the images bit for bit.
With early stop, candidates are CLIP-scored as they finish and a pair stops once filter.top_k pass
(so the filter keys early stop reads are part of render's stage hash). Edits whose prompts differ
only past the text encoder's 77-token truncation are dropped as `render_edit_truncated` before
rendering: they would publish byte-identical before/after images. `render.model_edits` (closed-form
TIME / erase / debias edits, docs/model_edits.md) are applied once per actor right after loading;
the edits, λ and a checksum of the edited weights go into every record's `params`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from editgen.p2p.models import TINY_MODELS, quiet_libraries, resolve_model
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.settings.render import RenderConfig
from editgen.pipeline.stage import Partition, Stage, with_status

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


def blend_words(row: dict[str, Any]) -> list[str]:
    """Words whose cross-attention marks the edited region: the swapped words, else the added ones."""
    words = list(row.get("source_words") or []) + list(row.get("target_words") or [])
    if not words:
        words = list(row.get("changed_words") or [])
    seen: list[str] = []
    for w in words:
        if w and w not in seen:
            seen.append(w)
    return seen


#: What early stop reads from the filter section (its CLIP scorer and EarlyStop): part of render's hash
#: when early stop is on, so a changed threshold or model never reuses counts decided under the old one.
EARLY_STOP_READS = (
    "filter.top_k", "filter.min_sim_image", "filter.min_sim_direction", "filter.min_sim_0", "filter.min_sim_1",
    "filter.clip_model", "filter.clip_pretrained", "filter.precision", "filter.device", "filter.clip_batch_size",
)


class RenderStage(Stage[RenderConfig]):
    name = "render"
    version = "2"  # 2: P2P rules as the reference implementations (issue 11), render_edit_truncated
    input_columns = ("caption", "edited_caption")
    output_columns = tuple(name for name, _ in OUTPUT_FIELDS)

    @classmethod
    def config_reads(cls, config: EditgenConfig) -> tuple[str, ...]:
        reads = EARLY_STOP_READS if config.render.early_stop else ()
        if config.render.early_stop and config.render.source == "real":
            reads = (*reads, "filter.min_reconstruction_psnr", "filter.min_reconstruction_ssim")
        return (*super().config_reads(config), *reads)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.p2p: Any = None
        self.model_path = ""
        self.variant: str | None = None
        self.scorer: Any = None
        self.threads = 1
        self.model_edits: dict[str, Any] | None = None
        self.baked_edits: dict[str, Any] | None = None
        self.real = RealImages(self.settings) if self.settings.source == "real" else None
        self.on_gpu = False
        self._flops: dict[tuple[int, int], int] = {}

    def preflight(self) -> None:
        s = self.settings
        if s.early_stop and self.config.filter.top_k is None:
            raise ConfigError("render.early_stop needs filter.top_k (how many passing candidates end a pair)")
        if s.model in TINY_MODELS:
            resolve_model(s.model)  # build once on the driver so actors only load it

    def setup(self) -> None:
        import torch

        from editgen.p2p.generate import load_pipeline

        quiet_libraries()
        s = self.settings
        threads = s.torch_threads or max(1, int(self.resources().num_cpus or 1))
        torch.set_num_threads(threads)
        self.threads = threads
        self.model_path, self.variant = resolve_model(s.model)
        if s.device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = s.device
        dtype = s.dtype if s.dtype != "auto" else ("float16" if device == "cuda" else "float32")
        self.p2p = load_pipeline(self.model_path, device, dtype, s.scheduler, s.compile)
        self.dtype = dtype
        self.on_gpu = device == "cuda"
        self.flops_at(s.height, s.width)  # measured once per model and size (cached on disk), at load
        self.model_edits = self._apply_model_edits()
        if self.real is not None and self.p2p.is_sdxl:
            raise ConfigError("render.source=real: inversion supports SD 1.x/2.x models only, not SDXL")
        if s.early_stop:
            from editgen.filters.pairs.clip_score import ClipScorer

            self.scorer = ClipScorer.from_config(self.config.filter)

    def _apply_model_edits(self) -> dict[str, Any] | None:
        """Closed-form edits once per actor, right after loading; what they did goes into every record."""
        self.baked_edits = _baked_edits(self.model_path)
        edits = self.settings.edit_set()
        if edits is None:
            return None
        from editgen.p2p.model_edit.solve import apply_edits
        from editgen.p2p.model_edit.targets import EditError

        try:
            report = apply_edits(self.p2p, edits)
        except EditError as exc:
            raise ConfigError(f"render.model_edits: {exc}") from None
        log.info("render: %d model edits on %d layers in %.2fs (checksum %s)", len(edits.edits),
                 report.layers, report.seconds, report.checksum)
        return report.describe()

    def flops_at(self, height: int, width: int) -> int:
        """UNet FLOPs per row per step at this size (torch's FLOP counter on one step; p2p.compute)."""
        if (height, width) not in self._flops:
            from editgen.p2p.compute import pipeline_flops

            self._flops[(height, width)] = pipeline_flops(self.p2p, height, width).total
        return self._flops[(height, width)]

    def _account(self, rec: dict[str, Any]) -> None:
        """The candidate's UNet work into its record (`compute`) and the partition's metrics; a real
        image's inversion is charged to the first candidate that used it."""
        from editgen.p2p.compute import record_compute

        inv_rows = float(rec.pop("_inversion_row_steps", 0.0))
        share = int((rec.get("shared_source") or {}).get("size", 1))
        c = record_compute(rec, self.flops_at(int(rec["height"]), int(rec["width"])), share=share,
                           inversion_row_steps=inv_rows)
        rec["compute"] = {"unet_row_steps": c.unet_row_steps, "unet_flops": c.unet_flops,
                          "flops_per_row_step": c.flops_per_row}
        for key, value in (("unet_row_steps", c.unet_row_steps), ("unet_flops", c.unet_flops)):
            self.metrics[key] = self.metrics.get(key, 0.0) + value

    # ---------------------------------------------------------------------------------------
    def _records(self, row: dict[str, Any], n: int, start: int = 0) -> list[dict[str, Any]]:
        from editgen.p2p.candidates import CandidateSpace, sample_candidates
        from editgen.p2p.shared import share_sources

        s = self.settings
        space = CandidateSpace(
            p_range=tuple(s.p_range), guidance_range=tuple(s.guidance_range), steps=s.steps,
            scheduler=s.scheduler, mode=s.mode, tie_windows=s.tie_windows, self_max_res=s.self_max_res,
            height=s.height, width=s.width, negative_prompt=s.negative_prompt,
        )
        if self.real is not None:
            self.real.shape_space(space, row)
        blend = None
        if s.local_blend or (self.real is not None and s.inversion.mask == "local_blend"):
            words = blend_words(row)
            if words:
                blend = {"words": words, "threshold": s.blend_threshold, "start": s.blend_start}
        pair_id = row["id"] if s.seed == 0 else f"{row['id']}/{s.seed}"
        kind = row.get("edit_kind")
        k = s.shared_sources
        upto = -(-(start + n) // k) * k  # whole shared-source groups (candidates is a multiple of k)
        recs = share_sources(sample_candidates(
            pair_id, row["caption"], row["edited_caption"], upto, model=self.model_path,
            dtype=self.dtype, space=space, edit_kind=kind if kind in ("replace", "refine") else None, blend=blend,
            profile="tiny" if self.variant else None,
        ), k)[start:upto]
        for r in recs:
            # CPU float reductions depend on the thread count: part of what makes a re-render exact.
            r["torch_threads"] = self.threads
            if self.variant:
                r["tiny_variant"] = self.variant
            if self.model_edits:
                r["model_edits"] = self.model_edits
            if self.baked_edits:
                r["model_edits_in_model"] = self.baked_edits
        if self.real is not None:
            self.real.attach(recs, row, pair_id)
        return recs

    def _render(self, records: list[dict[str, Any]]) -> list[Any]:
        from editgen.p2p.candidates import render_records

        injected = os.environ.get(FAULT_RENDER_ERROR, "")
        if injected:  # test hook (docs/faults.md): the errors a real GPU job meets
            raise (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)") if injected == "oom"
                   else ValueError("injected per-pair render failure"))
        s = self.settings
        if self.real is not None:
            return self.real.render(self.p2p, records)
        if s.shared_sources > 1:
            from editgen.p2p.shared import render_shared

            return render_shared(self.p2p, records, s.image_format, s.jpeg_quality)
        return render_records(self.p2p, records, image_format=s.image_format, max_rows=s.max_rows_per_batch,
                              jpeg_quality=s.jpeg_quality)

    def _check(self, records: list[dict[str, Any]]) -> None:
        from editgen.p2p.candidates import record_to_request
        from editgen.p2p.generate import check_request

        check_request(self.p2p, record_to_request(records[0]))

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        from editgen.p2p.seq_align import TruncatedWord

        s = self.settings
        if self.real is not None:
            self.real.begin(table)
        rows = table.to_pylist()
        t0 = time.perf_counter()
        take: list[int] = []
        cols: dict[str, list[Any]] = {name: [] for name, _ in OUTPUT_FIELDS}
        reasons: list[str | None] = []
        pairs: list[tuple[int, list[dict[str, Any]]]] = []
        for i, row in enumerate(rows):
            try:
                recs = self._records(row, s.candidates if not s.early_stop else 0)
                self._check(recs or self._records(row, 1))
                pairs.append((i, recs))
            except TruncatedWord as exc:  # a no-op edit: dropped before any GPU time is spent
                log.warning("render: pair %s dropped: %s", row.get("id"), exc)
                self._drop(i, "render_edit_truncated", take, cols, reasons)
            except (ValueError, KeyError) as exc:
                log.warning("render: pair %s dropped: %s", row.get("id"), exc)
                self._drop(i, "render_invalid_pair", take, cols, reasons)
        if s.early_stop:
            outputs = self._render_early_stop(rows, [i for i, _ in pairs])
        else:
            outputs = self._render_all(pairs)
        check_failures(s.max_failed_fraction, len(rows), [o for _, o, _ in outputs if isinstance(o, Exception)])
        for i, outs, drawn in outputs:
            if isinstance(outs, Exception):
                self._drop(i, "render_failed", take, cols, reasons)
                continue
            for o in outs:
                rec = o.record
                self._account(rec)
                take.append(i)
                cols["candidate"].append(int(rec["candidate"]))
                cols["input_image"].append(o.input_image)
                cols["edited_image"].append(o.edited_image)
                cols["mask"].append(o.mask)
                cols["reconstruction"].append(o.reconstruction)
                cols["image_format"].append(o.image_format)
                cols["seed"].append(int(rec["seed"]))
                cols["params"].append(json.dumps(rec, sort_keys=True))
                cols["render_model"].append(s.model if self.variant is None else f"{s.model}:{self.variant}")
                cols["render_mode"].append(rec["edits"][0]["mode"])
                cols["candidates_drawn"].append(drawn)
                reasons.append(None)
        order = sorted(range(len(take)), key=lambda j: (take[j], cols["candidate"][j]))
        # real sources: the fetched bytes are not copied onto every candidate (input_image has its pixels)
        out = table.drop_columns([c for c in ("image",) if c in table.column_names])
        out = out.take(pa.array([take[j] for j in order], pa.int64()))
        for name, typ in OUTPUT_FIELDS:
            out = out.append_column(name, pa.array([cols[name][j] for j in order], typ))
        self._finish_metrics(time.perf_counter() - t0, sum(1 for r in reasons if r is None))
        return with_status(out, [reasons[j] for j in order])

    def _chunk_size(self) -> int:
        """Records per render call: `resources.batch_size`, whole shared-source groups."""
        k = self.settings.shared_sources
        size = max(1, self.resources().batch_size)
        return max(k, size - size % k)

    def _finish_metrics(self, seconds: float, candidates: int) -> None:
        self.metrics["render_seconds"] = self.metrics.get("render_seconds", 0.0) + seconds
        if self.on_gpu:
            self.metrics["gpu_seconds"] = self.metrics["render_seconds"]
        self.metrics["candidates"] = self.metrics.get("candidates", 0.0) + candidates
        if self.real is not None:
            self.metrics.update(self.real.metrics())

    @staticmethod
    def _drop(i: int, reason: str, take: list[int], cols: dict[str, list[Any]], reasons: list[str | None]) -> None:
        take.append(i)
        for name, _ in OUTPUT_FIELDS:
            cols[name].append(-1 if name in ("candidate", "candidates_drawn") else None)
        reasons.append(reason)

    def _render_all(self, pairs: list[tuple[int, list[dict[str, Any]]]]) -> list[tuple[int, Any, int]]:
        """All candidates of all pairs, in chunks of `resources.batch_size` records."""
        size = self._chunk_size()
        flat = [(i, r) for i, recs in pairs for r in recs]
        by_pair: dict[int, list[Any]] = {i: [] for i, _ in pairs}
        failed: dict[int, Exception] = {}
        for start in range(0, len(flat), size):
            chunk = [(i, r) for i, r in flat[start:start + size] if i not in failed]
            try:
                outs = self._render([r for _, r in chunk])
            except Exception as exc:  # noqa: BLE001 - a bad pair must not kill the partition
                raise_if_systemic(exc)
                outs = self._render_one_by_one(chunk, failed, exc)
            for (i, _), o in zip(chunk, outs, strict=True):
                if o is not None:
                    by_pair[i].append(o)
            self.progress(len(pairs) * min(len(flat), start + size) / max(1, len(flat)))  # per candidate
        return [(i, failed.get(i) or by_pair[i], len(recs)) for i, recs in pairs]

    def _render_one_by_one(self, chunk: list[tuple[int, dict[str, Any]]], failed: dict[int, Exception],
                           first: Exception) -> list[Any]:
        log.warning("render: batch failed (%s); retrying its pairs one by one", first)
        outs: list[Any] = []
        for i, r in chunk:
            if i in failed:
                outs.append(None)
                continue
            try:
                outs.append(self._render([r])[0])
            except Exception as exc:  # noqa: BLE001
                raise_if_systemic(exc)
                log.warning("render: candidate %s/%s failed: %s", r.get("pair_id"), r.get("candidate"), exc)
                failed[i] = exc
                outs.append(None)
        return outs

    def _render_early_stop(self, rows: list[dict[str, Any]], idx: list[int]) -> list[tuple[int, Any, int]]:
        """Draw candidates in rounds; score each round with CLIP; stop a pair once k pass."""
        from editgen.filters.pairs.early_stop import EarlyStop
        from editgen.filters.pairs.fidelity import fidelity_scores

        s = self.settings
        es = EarlyStop.from_config(self.config.filter, max_candidates=s.candidates,
                                   min_candidates=s.early_stop_min_candidates)
        size = self._chunk_size()
        done: dict[int, list[Any]] = {i: [] for i in idx}
        failed: dict[int, Exception] = {}
        drawn = {i: 0 for i in idx}
        active = list(idx)
        while active:
            plan: list[tuple[int, dict[str, Any]]] = []
            for i in active:
                n = es.remaining(rows[i]["id"])
                plan += [(i, r) for r in self._records(rows[i], n, start=drawn[i])]
            for start in range(0, len(plan), size):
                chunk = plan[start:start + size]
                try:
                    outs = self._render([r for _, r in chunk])
                except Exception as exc:  # noqa: BLE001
                    raise_if_systemic(exc)
                    outs = self._render_one_by_one(chunk, failed, exc)
                ok = [(i, o) for (i, _), o in zip(chunk, outs, strict=True) if o is not None]
                if ok:
                    scores = self.scorer.score([o.input_image for _, o in ok], [o.edited_image for _, o in ok],
                                               [rows[i]["caption"] for i, _ in ok],
                                               [rows[i]["edited_caption"] for i, _ in ok])
                    if self.real is not None:  # a poor inversion does not count towards top_k either
                        scores.update(fidelity_scores([o.input_image for _, o in ok],
                                                      [o.reconstruction for _, o in ok]))
                    for j, (i, o) in enumerate(ok):
                        done[i].append(o)
                        es.add(rows[i]["id"], {k: float(v[j]) for k, v in scores.items()})
                for i, _ in chunk:
                    drawn[i] += 1
                self.progress(sum(min(1.0, drawn[i] / max(1, s.candidates)) for i in idx))
            active = [i for i in active if i not in failed and not es.done(rows[i]["id"])]
        return [(i, failed.get(i) or done[i], drawn[i]) for i in idx]


class RealImages:
    """render.source=real: each pair's fetched image (fetch stage's `image` column), inverted once per
    (pair, guidance) and shared by its candidates (p2p.real); the records name the image by SHA-256."""

    def __init__(self, settings: RenderConfig) -> None:
        self.settings = settings
        self.images: dict[str, Any] = {}  # pair id -> decoded PIL image
        self.sources: dict[tuple[str, float], Any] = {}
        self.forward_rows = 0
        self.backward_rows = 0

    def begin(self, table: pa.Table) -> None:
        if "image" not in table.column_names:
            raise ConfigError("render.source=real needs the fetch stage's `image` column (run with --from fetch)")
        self.images, self.sources = {}, {}
        self.forward_rows = self.backward_rows = 0

    def shape_space(self, space: Any, row: dict[str, Any]) -> None:
        """The image's own size (fetch's keep_ratio may differ from render.height/width); one guidance."""
        if not row.get("image"):
            raise ValueError("row has no fetched image")
        space.height = int(row.get("image_height") or space.height)
        space.width = int(row.get("image_width") or space.width)
        g = self.settings.inversion.guidance
        if g is not None:
            space.guidance_range = (g, g)

    def attach(self, recs: list[dict[str, Any]], row: dict[str, Any], pair_id: str) -> None:
        from editgen.p2p.real import SOURCE_KEY, decode_image, pixels_sha256, source_settings

        if pair_id not in self.images:
            self.images[pair_id] = decode_image(row["image"])
        meta = source_settings(self.settings.inversion, pixels_sha256(self.images[pair_id]), self.settings.blend_start)
        for r in recs:
            r[SOURCE_KEY] = meta

    def render(self, p2p: Any, records: list[dict[str, Any]]) -> list[Any]:
        from editgen.p2p.real import prepare_source, render_real

        s, outs = self.settings, []
        for rec in records:
            key = (rec["pair_id"], float(rec["guidance"]))
            if key not in self.sources:
                self.sources[key] = prepare_source(p2p, self.images[rec["pair_id"]],
                                                   rec["source_prompt"], int(rec["steps"]), key[1], s.inversion)
                cost = self.sources[key].cost
                self.forward_rows += cost.forward_rows
                self.backward_rows += cost.backward_rows
                rec = dict(rec, _inversion_row_steps=cost.forward_rows + 2 * cost.backward_rows)  # bwd ~ 2 fwd
            outs += render_real(p2p, [rec], self.sources[key], s.image_format, s.jpeg_quality)
        return outs

    def metrics(self) -> dict[str, float]:
        """This partition's inversion work in UNet rows (a CFG call on B prompts is 2B rows)."""
        return {"inversion_forward_rows": float(self.forward_rows),
                "inversion_backward_rows": float(self.backward_rows)}


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


def _baked_edits(model_path: str) -> dict[str, Any] | None:
    """What `editgen edit-model` wrote beside a local model folder (recorded, not re-applied)."""
    path = Path(model_path) / "model_edits.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
