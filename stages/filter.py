"""Filter stage: CLIP-score every rendered candidate, then keep the top k passing ones per pair (with
sessions: each chain's passing prefix of turns, top k chains per session: filters.pairs.sessions).

Scores are cached per render partition in OUT/filter/_scores/part-NNNNN.parquet, keyed by the render
partition's checksum and the CLIP config: when only thresholds or top_k change, the runner recomputes
filter partitions but this stage re-runs selection alone and never loads CLIP. The change outside each
pair's edit mask (filters.pairs.outside_mask) is cached in the same file under a key of its own (its
dilation and metric version) and digest: a cache written before it existed still gives its CLIP scores,
and only the outside-mask scores are computed and added. The consistency metrics (DINOv2 similarity
`dinov2_sim` with `filter.dino_model`, whole-image `ssim` with `filter.ssim` or an SSIM bound:
filters.pairs.dino_score, filters.pairs.consistency) are cached the same way, each under its own key and
digest, so turning one on computes it alone and a bound change loads no model. Output keeps every
candidate with its scores and a status, so rejected candidates stay available (shard.export_rejected).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from editgen.engines.base import reconstructs
from editgen.filters.pairs.clip_score import SCORE_COLUMNS, ClipScorer, ClipSpec, check_weights_dir, check_weights_file
from editgen.filters.pairs.consistency import SSIM_COLUMNS, ssim_key, ssim_scores
from editgen.filters.pairs.dino_score import DINO_COLUMNS, DinoScorer, DinoSpec, check_dino_model
from editgen.filters.pairs.fidelity import FIDELITY_COLUMNS, fidelity_scores
from editgen.filters.pairs.outside_mask import OUTSIDE_MASK_COLUMNS, outside_mask_key, outside_mask_scores
from editgen.filters.pairs.select import Thresholds, select
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.sessions import SESSION_ID, TURN, session_of
from editgen.pipeline.settings.filter import FilterConfig
from editgen.pipeline.stage import Partition, Stage, part_name, with_status

if TYPE_CHECKING:
    from editgen.pipeline.storage import Storage

log = logging.getLogger("editgen")

SCORES_DIR = "_scores"
META_INPUT = b"editgen.render_sha256"
META_CLIP = b"editgen.clip_key"
#: A digest of the cached scores: a flipped bit in a score is a cache miss, never a different score.
META_SCORES = b"editgen.scores_sha256"


@dataclass(frozen=True)
class ScoreGroup:
    """Scores cached beside CLIP's under a key of their own (what they depend on besides the render
    partition) and a digest: schema metadata `editgen.<name>_key` / `editgen.<name>_sha256`."""

    name: str
    columns: tuple[str, ...]
    key: str

    @property
    def meta_key(self) -> bytes:
        return f"editgen.{self.name}_key".encode()

    @property
    def meta_digest(self) -> bytes:
        return f"editgen.{self.name}_sha256".encode()


def score_groups(cfg: FilterConfig) -> list[ScoreGroup]:
    """The cached score groups a config asks for: the outside-mask change always, the consistency
    metrics when on (off: no group, no column, the output as before they existed)."""
    groups = [ScoreGroup("outside_mask", OUTSIDE_MASK_COLUMNS, outside_mask_key(cfg.outside_mask.dilation))]
    if cfg.dino_model:
        groups.append(ScoreGroup("dinov2", DINO_COLUMNS, DinoSpec.from_config(cfg).cache_key()))
    if cfg.ssim_on:
        groups.append(ScoreGroup("ssim", SSIM_COLUMNS, ssim_key()))
    return groups


def consistency_columns(cfg: FilterConfig) -> tuple[str, ...]:
    """The consistency score columns of the filter output under this config."""
    return (*(DINO_COLUMNS if cfg.dino_model else ()), *(SSIM_COLUMNS if cfg.ssim_on else ()))


def _scores_digest(scores: dict[str, np.ndarray], columns: tuple[str, ...] = SCORE_COLUMNS) -> bytes:
    data = b"".join(np.asarray(scores[c], dtype=np.float32).tobytes() for c in columns)
    return hashlib.sha256(data).hexdigest().encode()


def outside_scores(table: pa.Table, cfg: FilterConfig) -> dict[str, np.ndarray]:
    """The change outside each candidate's edit mask (NaN where it has none: no `mask` column or null)."""
    masks = table["mask"].to_pylist() if "mask" in table.column_names else [None] * table.num_rows
    return outside_mask_scores(table["input_image"].to_pylist(), table["edited_image"].to_pylist(), masks,
                               cfg.outside_mask.dilation)


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array([None if np.isnan(v) else float(v) for v in values], pa.float32())


def session_turns(table: pa.Table) -> list[tuple[str, int] | None] | None:
    """(session id, turn) per row when the render rows belong to sessions (pipeline.sessions), else None:
    rows of a run without sessions are selected exactly as before."""
    if SESSION_ID not in table.column_names or TURN not in table.column_names:
        return None
    return [session_of(row) for row in table.select([SESSION_ID, TURN]).to_pylist()]


def apply_selection(table: pa.Table, scores: dict[str, np.ndarray], cfg: FilterConfig,
                    clip_model_id: str, real: bool = False) -> pa.Table:
    """Render rows + scores -> filter output rows (scores, reconstruction fidelity, change outside the
    edit mask, rank, clip model id, status). Fidelity is computed here, not cached: only where the render
    engines give reconstructions of real images (`real`: engines.base.reconstructs, whose every partition
    then has the fidelity columns), and cheap next to CLIP. The outside-mask scores come with `scores`
    (cached with them) and are computed here when missing; every partition has their columns. So do the
    consistency columns that the config turns on (`ssim` computed here when missing; `dinov2_sim` needs
    its model, so it must come with `scores`), and no partition when it is off."""
    scores = dict(scores)
    if any(c not in scores for c in OUTSIDE_MASK_COLUMNS):
        scores.update(outside_scores(table, cfg))
    if cfg.ssim_on and any(c not in scores for c in SSIM_COLUMNS):
        scores.update(ssim_scores(table["input_image"].to_pylist(), table["edited_image"].to_pylist()))
    if cfg.dino_model and any(c not in scores for c in DINO_COLUMNS):
        raise ValueError("filter: dino_model is set but the scores have no dinov2_sim (FilterStage.partition_scores)")
    if real:
        if "reconstruction" not in table.column_names:
            raise ConfigError("render: the engine gives reconstructions but the render output has no "
                              "reconstruction column")
        scores.update(fidelity_scores(table["input_image"].to_pylist(), table["reconstruction"].to_pylist()))
    reasons, ranks = select(
        table["id"].to_pylist(),
        table["candidate"].to_pylist(),
        scores,
        Thresholds.from_config(cfg),
        cfg.top_k,
        session_turns(table),
    )
    own = (*SCORE_COLUMNS, *FIDELITY_COLUMNS, *OUTSIDE_MASK_COLUMNS, *DINO_COLUMNS, *SSIM_COLUMNS, "filter_rank",
           "clip_model")
    drop = [c for c in own if c in table.column_names]
    out = table.drop_columns(drop) if drop else table
    for name in SCORE_COLUMNS:
        out = out.append_column(name, pa.array(np.asarray(scores[name], dtype=np.float32), pa.float32()))
    for name in FIDELITY_COLUMNS:
        if name in scores:
            out = out.append_column(name, _nullable(scores[name]))
    for name in (*OUTSIDE_MASK_COLUMNS, *consistency_columns(cfg)):
        out = out.append_column(name, _nullable(scores[name]))
    out = out.append_column("filter_rank", pa.array(ranks, pa.int32()))
    out = out.append_column("clip_model", pa.array([clip_model_id] * table.num_rows, pa.string()))
    return with_status(out, reasons)


def check_clip_config(cfg: FilterConfig) -> None:
    """Fail before any work on an unknown model name or pretrained tag (one clear line)."""
    from editgen.tiny.clip import TINY_CLIP_NAME

    model, pretrained = cfg.clip_model, cfg.clip_pretrained
    for key, check, value in (("clip_pretrained", check_weights_file, pretrained),
                              ("clip_model", check_weights_dir, model[10:] if model.startswith("local-dir:") else "")):
        try:
            check(value)
        except ValueError as exc:
            raise ConfigError(f"filter.{key}: {exc}") from None
    if model.startswith(("hf-hub:", "local-dir:")):
        return
    if model == TINY_CLIP_NAME:
        ok = (pretrained.startswith("seed:") and pretrained[5:].isdigit()) or os.path.isfile(pretrained)
        if not ok:
            raise ConfigError(f"filter.clip_pretrained: {pretrained!r}: tiny-clip needs 'seed:N' or a file")
        return
    import open_clip  # only now: importing it costs seconds on the driver

    if model not in open_clip.list_models():
        raise ConfigError(f"filter.clip_model: {model!r} is not an open_clip model (open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained and pretrained not in tags and not os.path.isfile(pretrained):
        raise ConfigError(
            f"filter.clip_pretrained: {pretrained!r}: not a file nor a tag of {model} ({', '.join(tags)})"
        )


class FilterStage(Stage[FilterConfig]):
    name = "filter"
    version = "1"
    input_columns = ("candidate", "input_image", "edited_image", "caption", "edited_caption")
    output_columns = (*SCORE_COLUMNS, *OUTSIDE_MASK_COLUMNS, "filter_rank", "clip_model")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._scorer: ClipScorer | None = None
        self._dino: DinoScorer | None = None

    def preflight(self) -> None:
        check_clip_config(self.settings)
        check_dino_config(self.settings)

    @property
    def spec(self) -> ClipSpec:
        return ClipSpec.from_config(self.settings)

    def scorer(self) -> ClipScorer:
        """Loaded on the first cache miss only: a selection-only rerun never touches the GPU."""
        if self._scorer is None:
            self._scorer = ClipScorer.from_config(self.settings)
        return self._scorer

    def dino_scorer(self) -> DinoScorer:
        """Loaded on the first partition whose cache lacks `dinov2_sim` only, as CLIP."""
        if self._dino is None:
            self._dino = DinoScorer.from_config(self.settings)
        return self._dino

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        """All candidates of a pair are in one partition, so top-k runs over the whole partition; scores
        are cached per render partition (`part`: its id and checksum)."""
        scores = self.partition_scores(table, part)
        real = reconstructs(self.config.render)  # already in the hash chain through render's hash
        return apply_selection(table, scores, self.settings, self.spec.model_id(), real)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return self.process_partition(batch)

    # ---- score cache ---------------------------------------------------------------------
    def partition_scores(self, table: pa.Table, part: Partition | None = None) -> dict[str, np.ndarray]:
        """CLIP scores and each score group's (score_groups: the outside-mask change, the consistency
        metrics that are on), each from the cache when it holds them for this render partition and key,
        else computed (and the cache rewritten with all of them)."""
        groups = score_groups(self.settings)
        scores: dict[str, np.ndarray] = {}
        if part is not None and self.settings.cache_scores:
            cached = read_cached_scores(part.storage, self.name, part.spec.pid, part.spec.input_key,
                                        self.spec.cache_key(), table, groups)
            if cached is not None:
                self.metrics["score_cache_hits"] = 1.0
                scores = cached
        computed = not scores
        if not scores:
            t0 = time.perf_counter()
            scores = self.scorer().score_table(table) if table.num_rows else _empty_scores()
            self.metrics["clip_seconds"] = time.perf_counter() - t0
            self.metrics["clip_scored"] = float(table.num_rows)
        for group in groups:
            if not all(c in scores for c in group.columns):
                scores.update(self.group_scores(group, table))
                computed = True
        if part is not None and self.settings.cache_scores and computed:
            write_cached_scores(part.storage, self.name, part.spec.pid, part.spec.input_key, self.spec.cache_key(),
                                table, scores, groups)
        return scores

    def group_scores(self, group: ScoreGroup, table: pa.Table) -> dict[str, np.ndarray]:
        """Compute one score group (metrics `<group>_seconds`, `<group>_scored`: rows with a score)."""
        pairs = (table["input_image"].to_pylist(), table["edited_image"].to_pylist())
        compute: dict[str, Callable[[], dict[str, np.ndarray]]] = {
            "outside_mask": lambda: outside_scores(table, self.settings),
            "dinov2": lambda: self.dino_scorer().score(*pairs) if table.num_rows else {"dinov2_sim": np.zeros(0)},
            "ssim": lambda: ssim_scores(*pairs),
        }
        t0 = time.perf_counter()
        scores = compute[group.name]()
        self.metrics[f"{group.name}_seconds"] = time.perf_counter() - t0
        self.metrics[f"{group.name}_scored"] = float(np.count_nonzero(~np.isnan(scores[group.columns[0]])))
        return scores

    def teardown(self) -> None:
        self._scorer = None
        self._dino = None


def check_dino_config(cfg: FilterConfig) -> None:
    """Fail before any work on a DINOv2 that is neither tiny-dino, a folder with safetensors weights nor a
    hub id (one clear line); build the tiny one now, once, so workers only load it."""
    if not cfg.dino_model:
        return
    try:
        check_dino_model(cfg.dino_model)
    except ValueError as exc:
        raise ConfigError(f"filter.dino_model: {exc}") from None
    from editgen.tiny.dino import TINY_DINO_NAME, build_tiny_dino

    if cfg.dino_model == TINY_DINO_NAME:
        build_tiny_dino()


def _empty_scores() -> dict[str, np.ndarray]:
    return {c: np.zeros(0, dtype=np.float32) for c in SCORE_COLUMNS}


def read_cached_scores(
    storage: Storage, stage_dir: str, pid: int, input_key: str, clip_key: str, table: pa.Table,
    groups: Sequence[ScoreGroup] = (),
) -> dict[str, np.ndarray] | None:
    """Scores cached for exactly this render partition and CLIP config, or None; with each of `groups`
    whose scores were cached under its key and pass their digest (a cache of before a group has CLIP
    scores only; a damaged group is computed again)."""
    if not storage.exists(stage_dir, SCORES_DIR, part_name(pid)):
        return None
    try:
        cached = storage.read_table(stage_dir, SCORES_DIR, part_name(pid))
    except Exception:  # noqa: BLE001 - a corrupt cache is just a miss
        return None
    meta = cached.schema.metadata or {}
    if meta.get(META_INPUT) != input_key.encode() or meta.get(META_CLIP) != clip_key.encode():
        return None
    same_rows = (
        cached.num_rows == table.num_rows
        and cached["id"].equals(table["id"])
        and cached["candidate"].cast(pa.int64()).equals(table["candidate"].cast(pa.int64()))
    )
    if not same_rows:
        return None
    scores = _cached_columns(cached, SCORE_COLUMNS)
    if meta.get(META_SCORES) != _scores_digest(scores):
        log.warning("%s/%s/%s: cached scores damaged (or unchecked); scoring again", stage_dir, SCORES_DIR,
                    part_name(pid))
        return None
    for group in groups:
        if meta.get(group.meta_key) != group.key.encode():
            continue
        values = _cached_columns(cached, group.columns)
        if meta.get(group.meta_digest) == _scores_digest(values, group.columns):
            scores.update(values)
        else:
            log.warning("%s/%s/%s: cached %s scores damaged; computing them again", stage_dir, SCORES_DIR,
                        part_name(pid), group.name)
    return scores


def _cached_columns(cached: pa.Table, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Those columns as float arrays (NaN for null); an absent one is all NaN (its digest then fails)."""
    nan = np.full(cached.num_rows, np.nan, np.float32)
    return {c: cached[c].to_numpy(zero_copy_only=False).astype(np.float32) if c in cached.column_names else nan
            for c in columns}


def write_cached_scores(
    storage: Storage,
    stage_dir: str,
    pid: int,
    input_key: str,
    clip_key: str,
    table: pa.Table,
    scores: dict[str, np.ndarray],
    groups: Sequence[ScoreGroup] = (),
) -> None:
    """CLIP's scores and every group of `groups` that `scores` holds, each with its key and digest."""
    cols = {"id": table["id"], "candidate": table["candidate"]}
    cols.update({c: pa.array(np.asarray(scores[c], dtype=np.float32), pa.float32()) for c in SCORE_COLUMNS})
    meta = {META_INPUT: input_key.encode(), META_CLIP: clip_key.encode(), META_SCORES: _scores_digest(scores)}
    for group in groups:
        if all(c in scores for c in group.columns):
            cols.update({c: pa.array(np.asarray(scores[c], dtype=np.float32), pa.float32(), from_pandas=True)
                         for c in group.columns})  # NaN stored as null (NaN != NaN would upset table checks)
            meta.update({group.meta_key: group.key.encode(),
                         group.meta_digest: _scores_digest(scores, group.columns)})
    out = pa.table(cols).replace_schema_metadata(meta)
    storage.write_table(out, stage_dir, SCORES_DIR, part_name(pid))
