"""The one runner: plans, invalidates and resumes every stage; an executor (pipeline.executor) runs them.

Stage outputs live at OUT/<stage>/part-NNNNN.parquet with a completion record each, written by the
runner's workers for every stage and step. Every stage has a hash chained from its upstream's
(pipeline.config.section_hash) over the config it declares, so a changed setting recomputes that stage
and everything downstream, and nothing else. `--from` forces recomputation from a stage on; `--only`
runs one stage against an up-to-date upstream.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from editgen.pipeline.config import EditgenConfig, config_to_yaml, section_hash
from editgen.pipeline.errors import ContractError, Terminated, UserError
from editgen.pipeline.executor import Executor, MapJob, RayExecutor, StageTasks
from editgen.pipeline.lease import Lease
from editgen.pipeline.live_progress import LiveMonitor
from editgen.pipeline.logs import RunLog
from editgen.pipeline.progress import Progress
from editgen.pipeline.records import (
    DONE_DIR,
    GLOBAL_RECORD,
    STAGE_FILE,
    GlobalRecord,
    PartitionRecord,
    RunResult,
    StageResult,
    check_partitions,
    combined_key,
    read_record,
    read_records,
    read_stage_meta,
    remove_partitions_from,
    sum_records,
    write_record,
    write_stage_meta,
)
from editgen.pipeline.registry import inactive_reason, load_stage_class, stage_names
from editgen.pipeline.stage import PartitionSpec, PlanContext, Stage, Step
from editgen.pipeline.storage import Storage

log = logging.getLogger("editgen")


def stage_hashes(cfg: EditgenConfig) -> dict[str, str]:
    """Each stage's hash: its section, the config it reads, its version, chained from its upstream's."""
    hashes: dict[str, str] = {}
    names = stage_names(cfg)
    for i, name in enumerate(names):
        cls = load_stage_class(name)
        up = names[i - 1] if i else None
        hashes[name] = section_hash(cfg, name, hashes.get(up, "") if up else "", cls.version, cls.config_reads(cfg))
    return hashes


def stage_complete(storage: Storage, name: str, stage_hash: str) -> bool:
    meta = read_stage_meta(storage, name)
    return bool(meta and meta.get("complete") and meta.get("stage_hash") == stage_hash)


def select_stages(only: str | None, from_stage: str | None, to_stage: str | None,
                  cfg: EditgenConfig | None = None) -> list[str]:
    """The stages a run computes, in order, from the graph under `cfg` (a conditional stage that is
    not in it is refused with the setting that would bring it in)."""
    names = stage_names(cfg)
    for flag, value in (("--only", only), ("--from", from_stage), ("--to", to_stage)):
        if value is not None and value not in names:
            why = inactive_reason(value, cfg) if cfg is not None else None
            if why:
                raise UserError(f"{flag} {value}: {why} (stages now: {', '.join(names)})")
            raise UserError(f"{flag} {value}: unknown stage (stages: {', '.join(names)})")
    selected = [only] if only else names[names.index(from_stage):] if from_stage else names
    if to_stage:
        selected = [n for n in selected if names.index(n) <= names.index(to_stage)]
    return selected


def check_columns(stages: dict[str, Stage[Any]], cfg: EditgenConfig | None = None) -> None:
    """Every column a stage needs comes from upstream: one an upstream stage adds, or needs itself (upstream
    columns pass through). Checked from the declarations of the graph under `cfg`, before any work."""
    names, have = stage_names(cfg), {"id"}
    for i, name in enumerate(names):
        cls = load_stage_class(name)
        missing = [c for c in cls.input_columns if c not in have]
        if i and name in stages and missing:
            raise ContractError(f"{name}: needs column {missing[0]!r}, which no upstream stage "
                                f"({', '.join(names[:i])}) declares")
        have.update(cls.input_columns, cls.output_columns)


class Runner:
    def __init__(
        self,
        cfg: EditgenConfig,
        out: str,
        storage_options: dict[str, Any] | None = None,
        progress: Progress | None = None,
        runlog: RunLog | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.runlog = runlog
        self.cfg = cfg
        self.out = out
        self.storage_options = storage_options or {}
        self.storage = Storage(out, self.storage_options)
        self.progress = progress or Progress(enabled=False)
        self.executor = executor or RayExecutor(cfg.ray, cfg.run.worker_start_timeout_s)
        self.hashes = stage_hashes(cfg)
        self.names = stage_names(cfg)  # the graph under this config (conditional stages in or out)
        self.lease: Lease | None = None
        self._ready = False
        self._stages: dict[str, Stage[Any]] = {}

    def run(self, only: str | None = None, from_stage: str | None = None, to_stage: str | None = None) -> RunResult:
        """Every run logs to OUT/logs/run-<time>.log (uploaded at the end for object stores)."""
        runlog = self.runlog = self.runlog or RunLog(self.cfg.run.log_level, console=False)
        try:
            selected = select_stages(only, from_stage, to_stage, self.cfg)
            self._prepare(selected, from_stage)
            results = []
            for name in selected:
                self._check_upstream(name, selected)
                self.check_lease()
                results.append(self.run_stage(name))
            self.check_lease()
            return RunResult(out=self.out, stages=results, lease_note=self.lease.taken_over or "")
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (pipeline.errors.Terminated)
            log.warning("run stopped (%s); rerunning the same command resumes it", Terminated.received or "SIGINT")
            raise
        finally:
            self.executor.close()  # before the lease goes: nothing of this run is left working on OUT
            if self._ready:
                runlog.publish(self.storage)
            if self.lease is not None:
                self.lease.release()

    def _prepare(self, selected: list[str], from_stage: str | None) -> None:
        """Validate inputs before touching OUT (a bad input leaves nothing half-written), then take the lease."""
        names = self.names
        self._stages = {name: load_stage_class(name)(self.cfg) for name in selected}
        check_columns(self._stages, self.cfg)
        for name in selected:
            replace = from_stage is not None and names.index(name) >= names.index(from_stage)
            self._stages[name].bind(self.storage, replace)
            self._stages[name].preflight()
        self.storage.check_writable()
        # One driver per OUT: nothing (config, logs, temp cleanup, partitions) is written before this.
        self.lease = Lease(self.storage, self.cfg.run.lease_ttl_s, self.cfg.run.lease_heartbeat_s)
        self.lease.acquire()
        self.storage.write_text(config_to_yaml(self.cfg), "config.yaml")
        self._ready = True
        assert self.runlog is not None
        self.runlog.attach(self.storage)
        log.info("editgen run: out=%s stages=%s hashes=%s", self.out, ",".join(selected), self.hashes)
        if from_stage:
            for name in names[names.index(from_stage):]:
                self.invalidate(name, reason=f"--from {from_stage}")

    def upstream(self, name: str) -> str | None:
        """The stage before `name` in this run's graph (walked once, in __init__)."""
        i = self.names.index(name)
        return self.names[i - 1] if i else None

    def _check_upstream(self, name: str, selected: list[str]) -> None:
        up = self.upstream(name)
        if up and up not in selected and not stage_complete(self.storage, up, self.hashes[up]):
            raise UserError(
                f"{name}: upstream stage {up!r} is missing or out of date in {self.out} "
                f"(run `editgen run` without --only, or `--only {up}` first)"
            )

    def _up_hash(self, name: str) -> str | None:
        """The upstream hash a stage is built on, kept in its _stage.json: `editgen status` tells from it
        that the upstream was recomputed under it since (pipeline.freshness)."""
        up = self.upstream(name)
        return self.hashes[up] if up else None

    def check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def invalidate(self, name: str, reason: str) -> None:
        """Forget a stage's completion (every step's records) so it is recomputed; data files are
        overwritten in place."""
        removed = False
        for step in load_stage_class(name)(self.cfg).steps():
            base = _step_dir(name, step)
            if self.storage.exists(base, DONE_DIR):
                self.storage.remove(base, DONE_DIR)
                removed = True
        if self.storage.exists(name, STAGE_FILE):
            self.storage.remove(name, STAGE_FILE)
            removed = True
        if removed:
            log.info("%s: invalidated (%s)", name, reason)

    # ------------------------------------------------------------------------------------
    def run_stage(self, name: str) -> StageResult:
        """Every step of the stage in order; the last step's records are the stage's output."""
        stage = self._stages.get(name) or load_stage_class(name)(self.cfg)
        h = self.hashes[name]
        note = self._begin(name, h)
        t0 = time.perf_counter()
        up = self.upstream(name)
        upstream = read_records(self.storage, up) if up else []
        ctx = PlanContext(self.cfg, self.storage, upstream, up, stage_hash=h,
                          tasks=StageTasks(self.executor, name, stage.resources()))
        counts: list[tuple[int, int]] = []  # (planned, computed) per step
        done: list[Any] = []
        records: list[Any] = []
        for step in stage.steps():
            run = self._run_global if step.kind == "global" else self._run_map
            records, planned, computed = run(stage, step, ctx)
            ctx.steps[step.name] = records
            counts.append((planned, computed))
            done += records
        write_stage_meta(self.storage, name, {"stage": name, "stage_hash": h, "complete": True,
                                              "partitions": counts[-1][0], "upstream_hash": self._up_hash(name)})
        self.storage.clean_temp(name)  # its workers are gone: a half-written file of a killed one is garbage
        _, metrics = sum_records(done)  # every step's work
        dropped, _ = sum_records(records)  # the stage's output
        planned, computed = counts[0]
        return StageResult(
            name, h, counts[-1][0], computed, planned - computed,
            sum(r.get("rows_in", 0) for r in records), sum(r.get("rows_out", 0) for r in records),
            dropped, time.perf_counter() - t0, metrics, note,
        )

    def _begin(self, name: str, h: str) -> str:
        """Clean what an interrupted run left; say so when the config changed since the last run."""
        removed = self.storage.clean_temp(name)
        if removed:
            log.info("%s: removed %d temp files left by an interrupted run", name, removed)
        prev = read_stage_meta(self.storage, name)
        if prev and prev.get("stage_hash") not in (None, h):
            note = f"config changed ({prev['stage_hash']} -> {h}): recomputing {name} and downstream"
            log.warning("%s: %s", name, note)
            return note
        return ""

    def _run_global(self, stage: Stage[Any], step: Step, ctx: PlanContext) -> tuple[list[GlobalRecord], int, int]:
        """A driver-side body, skipped when its record names this hash and input and its output is intact."""
        assert step.run is not None
        name, base = stage.name, _step_dir(stage.name, step)
        inputs = _step_input(ctx)
        key = step.input_key(ctx) if step.input_key else combined_key([r["sha256"] for r in inputs])
        rec: GlobalRecord | None = read_record(self.storage, base, GLOBAL_RECORD)  # type: ignore[assignment]
        rows = sum(r.get("rows_out", 0) for r in inputs)
        task = self.progress.add_stage(_label(name, step), partitions=1, rows=rows)
        if not step.name:
            write_stage_meta(self.storage, name, {"stage": name, "stage_hash": ctx.stage_hash, "complete": False,
                                                  "partitions": 1, "upstream_hash": self._up_hash(name)})
        if (rec and rec.get("stage_hash") == ctx.stage_hash and rec.get("input_key") == key
                and (step.valid is None or step.valid(ctx, rec))):
            self.progress.advance(task, rows=rec.get("rows_in", rows), skipped=True)
            return [rec], 1, 0
        t0, c0 = time.perf_counter(), time.process_time()
        summary = step.run(ctx)
        spent = {"seconds": round(time.perf_counter() - t0, 4), "cpu_seconds": round(time.process_time() - c0, 4)}
        rec = {"stage": name, "partition": 0, "stage_hash": ctx.stage_hash, "input_key": key, **spent, **summary}
        write_record(self.storage, base, rec, GLOBAL_RECORD)  # type: ignore[arg-type]
        self.progress.advance(task, rows=rec.get("rows_in", rows))
        return [rec], 1, 1

    def _run_map(self, stage: Stage[Any], step: Step, ctx: PlanContext) -> tuple[list[PartitionRecord], int, int]:
        """Plan, skip what is done (records, markers, optionally checksums), compute the rest."""
        assert step.plan is not None
        name, base = stage.name, _step_dir(stage.name, step)
        specs = step.plan(ctx)
        write_stage_meta(self.storage, name, {"stage": name, "stage_hash": ctx.stage_hash, "complete": False,
                                              "partitions": len(specs), "upstream_hash": self._up_hash(name)})
        remove_partitions_from(self.storage, base, len(specs))
        todo = self._todo(base, specs, ctx.stage_hash, stage)
        task = self.progress.add_stage(_label(name, step), partitions=len(specs), rows=sum(s.rows_in for s in specs))
        todo_ids = {s.pid for s in todo}
        for spec in specs:
            if spec.pid not in todo_ids:
                self.progress.advance(task, rows=spec.rows_in, skipped=True)
        if todo:
            job = MapJob(name, step.name, self.cfg.model_dump_json(), self.out, self.storage_options, base,
                         ctx.upstream_dir if not step.name else _step_dir(name, _previous_map(stage, step)),
                         ctx.stage_hash, stage.resources(), stage.ray_options(), step.actors)
            monitor = LiveMonitor(self.progress, self.storage, self.check_lease, _label(name, step), task,
                                  len(todo), sum(s.rows_in for s in todo))
            try:
                self.executor.run(job, todo, monitor)
            finally:
                monitor.finish()
        records = [r for r in read_records(self.storage, base) if r["partition"] < len(specs)]
        reused = sum(1 for r in records if r["partition"] in todo_ids and r.get("reused"))
        if reused:
            log.info("%s: %d of the %d kept their output (their rows are unchanged)", name, reused, len(todo))
        return records, len(specs), len(todo) - reused  # type: ignore[return-value]

    def _todo(self, base: str, specs: list[PartitionSpec], h: str, stage: Stage[Any]) -> list[PartitionSpec]:
        why_not = check_partitions(self.storage, base, {s.pid: s.input_key for s in specs}, h)
        if self.cfg.run.verify_checksums == "full":
            done = [s.pid for s in specs if s.pid not in why_not]
            bad = self.executor.verify(self.out, self.storage_options, base, done, stage.name, stage.resources())
            if bad:
                log.warning("%s: %d finished partitions fail their checksum: recomputing them", base, len(bad))
            why_not.update({pid: "checksum mismatch" for pid in bad})
        reasons: dict[str, int] = {}
        for why in why_not.values():
            reasons[why] = reasons.get(why, 0) + 1
        if why_not:
            detail = ", ".join(f"{n} {w}" for w, n in sorted(reasons.items()))
            log.info("%s: %d/%d partitions to compute (%s)", base, len(why_not), len(specs), detail)
        else:
            log.info("%s: all %d partitions already done", base, len(specs))
        return [s for s in specs if s.pid in why_not]


def _step_dir(stage: str, step: Step) -> str:
    return f"{stage}/{step.subdir}".rstrip("/")


def _label(stage: str, step: Step) -> str:
    return f"{stage}/{step.name}" if step.name else stage


def _step_input(ctx: PlanContext) -> list[Any]:
    """What a step reads: the previous step's records, or the upstream stage's for the first step."""
    return list(ctx.steps.values())[-1] if ctx.steps else ctx.upstream_records


def _previous_map(stage: Stage[Any], step: Step) -> Step:
    """A later map step reads the partitions of the stage's previous map step."""
    steps = stage.steps()
    earlier = [s for s in steps[:[s.name for s in steps].index(step.name)] if s.kind == "map"]
    return earlier[-1] if earlier else step


def run_pipeline(
    config: EditgenConfig,
    out: str,
    only: str | None = None,
    from_stage: str | None = None,
    to_stage: str | None = None,
    progress: Progress | None = None,
    storage_options: dict[str, Any] | None = None,
    runlog: RunLog | None = None,
) -> RunResult:
    """Programmatic entry point (the CLI and tests call this)."""
    runner = Runner(config, out, storage_options, progress, runlog)
    return runner.run(only=only, from_stage=from_stage, to_stage=to_stage)


__all__ = ["Runner", "RunResult", "StageResult", "run_pipeline", "stage_complete", "stage_hashes"]
