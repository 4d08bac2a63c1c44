"""The Stage contract: what a stage declares, and the one or more steps (map or global bodies) it runs.

A stage declares its config section and the config it reads besides (`config_sections` /
`config_reads`: the stage hash follows from them), the columns it needs from upstream and the ones it
adds (`input_columns` / `output_columns`: the runner checks both and names the stage and column), its
resources, and its body: a map over partitions (`process_partition`, by default `process_batch` over
slices) or a global body on the driver (`run_global`). The runner owns everything else: partitions,
completion records, stage metadata, resume and scheduling.

Every output row carries `id` (stable, from the source caption row), `status` (`kept` / `dropped`) and
`drop_reason`, so every input row is accounted for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from editgen.pipeline.records import (
    GlobalSummary,
    PartitionRecord,
    part_name,
    read_record,
    read_verified_table,
    record_name,
)
from editgen.pipeline.settings.base import Resources, Strict

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig
    from editgen.pipeline.storage import Storage

KEPT = "kept"
DROPPED = "dropped"
#: Columns every stage output has; downstream stages replace status/drop_reason with their own.
BOOKKEEPING = ("status", "drop_reason")

SettingsT = TypeVar("SettingsT", bound=Strict)


@dataclass
class PartitionSpec:
    """One unit of work: which partition to produce and a fingerprint of exactly what it reads."""

    pid: int
    input_key: str
    rows_in: int = 0
    payload: Any = None  # step-specific, e.g. the source segments an ingest worker reads
    attempt: int = 0
    #: sha256 of the finished upstream partition it reads (from that partition's record, at planning):
    #: the worker checks the bytes it reads against it. None: the worker reads the record itself.
    input_sha: str | None = None


@dataclass
class Partition:
    """What a map body sees of the partition it computes (worker side)."""

    spec: PartitionSpec
    storage: Storage
    stage_dir: str  # where the runner writes this step's partitions, e.g. "ingest/_pre"

    def read_upstream(self, upstream_dir: str, columns: list[str] | None = None) -> pa.Table:
        """The same-numbered finished partition of `upstream_dir`, read once and checked against its
        record's sha256 before it is parsed: a flipped byte fails this partition with one line naming
        the damaged file (pipeline.errors.DamagedInput), whose record is removed so a rerun recomputes it."""
        pid, sha = self.spec.pid, self.spec.input_sha
        if sha is None:
            rec = read_record(self.storage, upstream_dir, record_name(pid))
            sha = rec.get("sha256") if rec else None
        reader = self.stage_dir.split("/")[0]
        return read_verified_table(self.storage, upstream_dir, part_name(pid), sha, reader, columns)


class TaskRunner:
    """Runs plain functions as parallel tasks on the cluster (pipeline.executor implements it)."""

    def map_tasks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
        """fn(*args) for every call."""
        return [fn(*args) for args in calls]

    def map_reduce(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], reduce: Callable[..., Any],
                   args: tuple[Any, ...] = ()) -> Any:
        """reduce(*args, *[fn(*c) for c in calls]); on a cluster the mapped results never pass the driver."""
        return reduce(*args, *[fn(*c) for c in calls])


@dataclass
class PlanContext:
    """What a stage sees on the driver: config, OUT, its upstream's records and its own earlier steps'."""

    config: EditgenConfig
    storage: Storage
    upstream_records: list[PartitionRecord] = field(default_factory=list)
    upstream_dir: str | None = None
    stage_hash: str = ""
    #: Records of this stage's earlier steps, by step name (a global step: one summary record).
    steps: dict[str, list[Any]] = field(default_factory=dict)
    tasks: TaskRunner = field(default_factory=TaskRunner)


@dataclass(frozen=True)
class Step:
    """One body of a stage. Most stages have one; ingest has three (clean -> dedup -> publish).

    map: `plan` gives the partitions, the runner schedules them; a worker calls `load` then `process` and
    the runner writes the table to OUT/<stage>/<subdir>/part-N.parquet with its completion record.
    global: the runner calls `run` on the driver (skipped when its record's input key still matches and
    `valid` says its output is intact) and writes the summary it returns as OUT/<stage>/<subdir>/_done/global.json.
    """

    name: str
    kind: Literal["map", "global"] = "map"
    subdir: str = ""
    plan: Callable[[PlanContext], list[PartitionSpec]] | None = None
    load: Callable[[Partition, str | None], pa.Table] | None = None
    process: Callable[[pa.Table, Partition], pa.Table] | None = None
    run: Callable[[PlanContext], GlobalSummary] | None = None
    input_key: Callable[[PlanContext], str] | None = None
    valid: Callable[[PlanContext, Any], bool] | None = None
    #: False: cheap bodies without models run as plain cluster tasks instead of an actor pool.
    actors: bool = True
    #: Map steps keyed on cheap metadata (ingest: file identity + row range): a fingerprint of what
    #: `load` returned. When a partition's planned key moved but this equals its record's, the worker
    #: keeps the output instead of recomputing it (if `reusable` says its side files are still there).
    content_key: Callable[[pa.Table], str] | None = None
    reusable: Callable[[Partition], bool] | None = None


class Stage(Generic[SettingsT]):
    """Base class. Subclasses set `name`, optionally `version` (bump when output logic changes)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    #: A global stage (e.g. shard) needs all upstream partitions at once: its body runs on the driver.
    is_global: ClassVar[bool] = False
    #: Config the stage reads besides its own section, as "section" or "section.key" entries: the
    #: runner hashes them into the stage hash, so changing one recomputes the stage.
    config_sections: ClassVar[tuple[str, ...]] = ()
    #: Columns the stage needs among its upstream's kept rows, and the columns its output adds
    #: (besides id/status/drop_reason); upstream columns pass through unless a stage drops them.
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: EditgenConfig) -> None:
        self.config = config
        self.metrics: dict[str, float] = {}
        #: Set by the worker per partition: call with the input rows done so far (live progress).
        self.progress: Callable[[float], None] = lambda _rows: None

    #: When a conditional stage is in the graph, in words for error messages ("render.source=real").
    active_when: ClassVar[str] = ""

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def active(cls, config: EditgenConfig) -> bool:
        """Is the stage in the graph under `config`? Default: always. A conditional stage (fetch) says
        False otherwise, and the registry links its neighbours directly, as if it did not exist."""
        return True

    @classmethod
    def config_reads(cls, config: EditgenConfig) -> tuple[str, ...]:
        """Config outside its own section this stage reads under `config` (override when it depends
        on the config, e.g. only with an option on); a resumed run then always equals a fresh one."""
        return cls.config_sections

    @property
    def settings(self) -> SettingsT:
        return getattr(self.config, self.name)

    def resources(self) -> Resources:
        return self.settings.resources  # type: ignore[attr-defined]

    def ray_options(self) -> dict[str, Any]:
        """Extra actor options (e.g. a runtime_env with another interpreter for the LLM stack)."""
        return {}

    def steps(self) -> tuple[Step, ...]:
        """The stage's bodies in order (default: one map step, or one global step)."""
        if self.is_global:
            return (Step("", "global", run=self.run_global, valid=self.global_output_valid),)
        return (Step("", plan=self.plan, load=self.load_input, process=self.process_partition),)

    # ---- driver side ---------------------------------------------------------------------
    def bind(self, storage: Storage, replace: bool) -> None:
        """Called before preflight with OUT (read it, never write it, until preflight passed); `replace`
        says the user asked to recompute this stage (`--from`), e.g. from a different input."""

    def preflight(self) -> None:
        """Validate inputs before anything is written to OUT (raise pipeline.errors.InputError)."""

    def plan(self, ctx: PlanContext) -> list[PartitionSpec]:
        """Default: one partition per upstream partition, keyed by the upstream file's checksum."""
        return [
            PartitionSpec(pid=r["partition"], input_key=r["sha256"], rows_in=r.get("rows_out", 0),
                          input_sha=r["sha256"])
            for r in ctx.upstream_records
        ]

    def run_global(self, ctx: PlanContext) -> GlobalSummary:
        """Global stages only: produce the stage output from all upstream partitions."""
        raise NotImplementedError

    def global_output_valid(self, ctx: PlanContext, record: Any) -> bool:
        """Global stages only: is what `run_global` wrote (per `record`) still intact on disk?"""
        return True

    # ---- worker side ---------------------------------------------------------------------
    def setup(self) -> None:
        """Load models and other heavy resources; called once per worker."""

    def load_input(self, part: Partition, upstream_dir: str | None) -> pa.Table:
        """Default: the upstream partition's kept rows, without upstream bookkeeping columns (read
        verified: `Partition.read_upstream`)."""
        if upstream_dir is None:
            raise ValueError(f"{self.name}: no upstream to read from")
        return kept_rows(part.read_upstream(upstream_dir))

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
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

    def teardown(self) -> None:
        """Release resources; called when a worker is retired."""

    def type_metrics(self, out: pa.Table) -> dict[str, float]:
        """Per-edit-type counts of this partition's output (`count_types`), added to its metrics by the
        runner; a stage with a per-row cost (render's FLOPs) overrides this to add it."""
        return count_types(out)


def missing_columns(table: pa.Table, columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c not in table.column_names]


def kept_rows(table: pa.Table) -> pa.Table:
    if "status" in table.column_names:
        table = table.filter(pc.equal(table["status"], KEPT))
    drop = [c for c in BOOKKEEPING if c in table.column_names]
    return table.drop_columns(drop) if drop else table


#: Per-edit-type counts in a partition's metrics (`by_type/<what>:<type>[:<reason>]`), summed like every
#: metric: rows out, kept rows, dropped rows per reason, and (render) UNet FLOPs. Status, the manifest and
#: the preview build the per-type funnel from them (output/type_funnel.py).
BY_TYPE = "by_type/"
UNTYPED = "untyped"
TYPE_COLUMN = "edit_type"
REQUESTED_COLUMN = "type_requested"


def row_types(table: pa.Table) -> list[str] | None:
    """Each row's edit type: its answer's `edit_type`, else the type it was asked for, else `untyped`
    (None when the table has no `edit_type` column: stages before instruct)."""
    if TYPE_COLUMN not in table.column_names:
        return None
    given = table[TYPE_COLUMN].to_pylist()
    asked = table[REQUESTED_COLUMN].to_pylist() if REQUESTED_COLUMN in table.column_names else [None] * len(given)
    return [t or a or UNTYPED for t, a in zip(given, asked, strict=True)]


def count_types(table: pa.Table, weights: list[float] | None = None, what: str = "unet_flops") -> dict[str, float]:
    """The `by_type/` metrics of a stage output table: rows, kept and drops per reason for each type,
    and the sum of `weights` (a per-row figure such as FLOPs) as `by_type/<what>:<type>`."""
    types = row_types(table)
    if types is None:
        return {}
    out: dict[str, float] = {}

    def add(key: str, value: float = 1.0) -> None:
        out[BY_TYPE + key] = out.get(BY_TYPE + key, 0.0) + value

    statuses, reasons = table["status"].to_pylist(), table["drop_reason"].to_pylist()
    for i, (t, status, reason) in enumerate(zip(types, statuses, reasons, strict=True)):
        add(f"rows:{t}")
        add(f"kept:{t}" if status == KEPT else f"drop:{t}:{reason or 'unspecified'}")
        if weights is not None:
            add(f"{what}:{t}", float(weights[i]))
    return out


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
