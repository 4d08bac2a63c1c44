"""What a stage is: a name, its config section, its resources and a batch function.

The runner owns partitions, resume and Ray; a stage only turns a table of upstream rows into a table
of output rows. Every output row carries `id` (stable, from the source caption row), `status`
(`kept` / `dropped`) and `drop_reason`, so every input row is accounted for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.settings.base import Resources

if TYPE_CHECKING:
    from pipeline.config import EditgenConfig
    from pipeline.storage import Storage

KEPT = "kept"
DROPPED = "dropped"
#: Columns every stage output has; downstream stages replace status/drop_reason with their own.
BOOKKEEPING = ("status", "drop_reason")


def part_name(pid: int) -> str:
    return f"part-{pid:05d}.parquet"


@dataclass
class PartitionSpec:
    """One unit of work: which partition to produce and a fingerprint of exactly what it reads."""

    pid: int
    input_key: str
    rows_in: int = 0
    payload: Any = None  # stage-specific (e.g. an ObjectRef of raw rows for ingest)
    attempt: int = 0


@dataclass
class PlanContext:
    """What a stage sees while planning, on the driver."""

    config: EditgenConfig
    storage: Storage
    upstream_records: list[dict[str, Any]] = field(default_factory=list)
    upstream_dir: str | None = None


class Stage:
    """Base class. Subclasses set `name`, optionally `version` (bump when output logic changes)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    #: Directory (under the stage dir) the runner writes partitions to. Stages with a driver-side
    #: `finalize` write a working set there and publish final partitions themselves.
    work_subdir: ClassVar[str] = ""
    #: A global stage (e.g. shard) needs all upstream partitions at once: the runner calls
    #: `run_global` on the driver instead of mapping partitions over workers.
    is_global: ClassVar[bool] = False
    #: Config the stage reads besides its own section, as "section" or "section.key" entries: the
    #: runner hashes them into the stage hash, so changing one recomputes the stage.
    config_sections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: EditgenConfig) -> None:
        self.config = config
        self.metrics: dict[str, float] = {}
        #: Set by the worker per partition: call with the input rows done so far (live progress).
        self.progress: Callable[[float], None] = lambda _rows: None

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def config_reads(cls, config: EditgenConfig) -> tuple[str, ...]:
        """Config outside its own section this stage reads under `config` (override when it depends
        on the config, e.g. only with an option on); a resumed run then always equals a fresh one."""
        return cls.config_sections

    @property
    def settings(self) -> Any:
        return getattr(self.config, self.name)

    def resources(self) -> Resources:
        return self.settings.resources

    def ray_options(self) -> dict[str, Any]:
        """Extra actor options (e.g. a runtime_env with another interpreter for the LLM stack)."""
        return {}

    # ---- driver side ---------------------------------------------------------------------
    def bind(self, storage: Storage, replace: bool) -> None:
        """Called before preflight with OUT (read it, never write it, until preflight passed); `replace`
        says the user asked to recompute this stage (`--from`), e.g. from a different input."""

    def preflight(self) -> None:
        """Validate inputs before anything is written to OUT (raise pipeline.errors.InputError)."""

    def plan(self, ctx: PlanContext) -> list[PartitionSpec]:
        """Default: one partition per upstream partition, keyed by the upstream file's checksum."""
        return [
            PartitionSpec(pid=r["partition"], input_key=r["sha256"], rows_in=r["rows_out"])
            for r in ctx.upstream_records
        ]

    def finalize(self, ctx: PlanContext, records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Driver-side step after all partitions are done; returns the published records, if any."""
        return None

    # ---- worker side ---------------------------------------------------------------------
    def setup(self) -> None:
        """Load models and other heavy resources; called once per worker."""

    def load_input(self, spec: PartitionSpec, storage: Storage, upstream_dir: str | None) -> pa.Table:
        """Default: the upstream partition's kept rows, without upstream bookkeeping columns."""
        if upstream_dir is None:
            raise ValueError(f"{self.name}: no upstream to read from")
        table = storage.read_table(upstream_dir, part_name(spec.pid))
        return kept_rows(table)

    def content_key(self, table: pa.Table) -> str | None:
        """A fingerprint of what `load_input` returned, or None (default: no reuse). When a partition's
        planned key changed (e.g. its source file's mtime moved) but this fingerprint equals the one in
        its record, the worker keeps the output instead of recomputing it: a stage keyed on cheap
        metadata still recomputes only the partitions whose rows changed."""
        return None

    def can_reuse(self, storage: Storage, pid: int) -> bool:
        """Whether partition `pid`'s earlier output may be kept (side files it wrote still there)."""
        return True

    def process_partition(self, table: pa.Table) -> pa.Table:
        """Default: the batch function over slices of `resources.batch_size` rows. Override when rows
        must be seen together (e.g. top-k over all candidates of a pair)."""
        size = self.resources().batch_size
        if table.num_rows == 0:
            return self.process_batch(table)
        parts = []
        for i in range(0, table.num_rows, size):
            parts.append(self.process_batch(table.slice(i, size)))
            self.progress(min(table.num_rows, i + size))
        return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]

    def process_batch(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def run_global(self, ctx: PlanContext) -> dict[str, Any]:
        """Global stages only: produce the stage output from all upstream partitions."""
        raise NotImplementedError

    def global_output_valid(self, ctx: PlanContext, record: dict[str, Any]) -> bool:
        """Global stages only: is what `run_global` wrote (per `record`) still intact on disk?"""
        return True

    def teardown(self) -> None:
        """Release resources; called when a worker is retired."""


def kept_rows(table: pa.Table) -> pa.Table:
    if "status" in table.column_names:
        table = table.filter(pc.equal(table["status"], KEPT))
    drop = [c for c in BOOKKEEPING if c in table.column_names]
    return table.drop_columns(drop) if drop else table


def with_status(table: pa.Table, reasons: list[str | None]) -> pa.Table:
    """Append status/drop_reason columns from a per-row reason list (None = kept)."""
    status = pa.array([KEPT if r is None else DROPPED for r in reasons], pa.string())
    reason = pa.array(reasons, pa.string())
    for name in BOOKKEEPING:
        if name in table.column_names:
            table = table.drop_columns([name])
    return table.append_column("status", status).append_column("drop_reason", reason)


def count_reasons(table: pa.Table) -> tuple[int, dict[str, int]]:
    """(kept rows, {reason: dropped rows}) of a stage output table."""
    kept = 0
    dropped: dict[str, int] = {}
    for status, reason in zip(
        table["status"].to_pylist(), table["drop_reason"].to_pylist(), strict=True
    ):
        if status == KEPT:
            kept += 1
        else:
            key = reason or "unspecified"
            dropped[key] = dropped.get(key, 0) + 1
    return kept, dict(sorted(dropped.items()))
