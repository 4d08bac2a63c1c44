"""The one runner: owns partitions, resume, invalidation and Ray for every stage.

Stage outputs live at OUT/<stage>/part-NNNNN.parquet with a completion record each. Every stage has a
hash chained from its upstream's (pipeline.config.section_hash), so a changed setting recomputes that
stage and everything downstream, and nothing else. `--from` forces recomputation from a stage on;
`--only` runs one stage against an up-to-date upstream.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import EditgenConfig, config_to_yaml, section_hash
from pipeline.errors import StageFailed, UserError
from pipeline.lease import Lease
from pipeline.live_progress import PROGRESS_FILE, ProgressBoard, progress_record
from pipeline.logs import RunLog
from pipeline.progress import Progress
from pipeline.records import (
    DONE_DIR,
    GLOBAL_RECORD,
    STAGE_FILE,
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
from pipeline.stage import PartitionSpec, PlanContext, Stage, part_name
from pipeline.storage import Storage
from stages import load_stage_class, stage_names, upstream_of

log = logging.getLogger("editgen")


@dataclass
class StageResult:
    name: str
    stage_hash: str
    partitions: int
    computed: int
    skipped: int
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class RunResult:
    out: str
    stages: list[StageResult]
    lease_note: str = ""


def stage_hashes(cfg: EditgenConfig) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for name in stage_names():
        cls = load_stage_class_safe(name)
        version = getattr(cls, "version", "1") if cls else "1"
        reads = cls.config_reads(cfg) if cls else ()
        up = upstream_of(name)
        hashes[name] = section_hash(cfg, name, hashes.get(up, "") if up else "", version, reads)
    return hashes


def load_stage_class_safe(name: str) -> type[Stage] | None:
    try:
        return load_stage_class(name)
    except ImportError:
        return None


def stage_complete(storage: Storage, name: str, stage_hash: str) -> bool:
    meta = read_stage_meta(storage, name)
    return bool(meta and meta.get("complete") and meta.get("stage_hash") == stage_hash)


def published_records(storage: Storage, name: str) -> list[dict[str, Any]]:
    return read_records(storage, name)


class Runner:
    def __init__(
        self,
        cfg: EditgenConfig,
        out: str,
        storage_options: dict[str, Any] | None = None,
        progress: Progress | None = None,
        runlog: RunLog | None = None,
    ) -> None:
        self.runlog = runlog
        self.cfg = cfg
        self.out = out
        self.storage_options = storage_options or {}
        self.storage = Storage(out, self.storage_options)
        self.progress = progress or Progress(enabled=False)
        self.hashes = stage_hashes(cfg)

    # ------------------------------------------------------------------------------------
    def run(self, only: str | None = None, from_stage: str | None = None, to_stage: str | None = None) -> RunResult:
        """Every run logs to OUT/logs/run-<time>.log (uploaded at the end for object stores)."""
        own_log = self.runlog is None
        if own_log:
            self.runlog = RunLog(self.cfg.run.log_level, console=False)
        try:
            return self._run(only, from_stage, to_stage)
        finally:
            if self._ready:
                self.runlog.publish(self.storage)
            if self.lease is not None:
                self.lease.release()

    _ready = False
    lease: Lease | None = None

    def _run(self, only: str | None, from_stage: str | None, to_stage: str | None) -> RunResult:
        names = stage_names()
        for flag, value in (("--only", only), ("--from", from_stage), ("--to", to_stage)):
            if value is not None and value not in names:
                raise UserError(f"{flag} {value}: unknown stage (stages: {', '.join(names)})")
        if only:
            selected = [only]
        elif from_stage:
            selected = names[names.index(from_stage):]
        else:
            selected = names
        if to_stage:
            selected = [n for n in selected if names.index(n) <= names.index(to_stage)]
        # Validate inputs before touching OUT: a bad input must leave nothing half-written.
        self._stages = {name: load_stage_class(name)(self.cfg) for name in selected}
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
        self.runlog.attach(self.storage)
        log.info("editgen run: out=%s stages=%s hashes=%s", self.out, ",".join(selected), self.hashes)
        if from_stage:
            for name in names[names.index(from_stage):]:
                self.invalidate(name, reason=f"--from {from_stage}")
        results = []
        for name in selected:
            up = upstream_of(name)
            if up and up not in selected and not stage_complete(self.storage, up, self.hashes[up]):
                raise UserError(
                    f"{name}: upstream stage {up!r} is missing or out of date in {self.out} "
                    f"(run `editgen run` without --only, or `--only {up}` first)"
                )
            self.check_lease()
            results.append(self.run_stage(name))
        self.check_lease()
        return RunResult(out=self.out, stages=results, lease_note=self.lease.taken_over or "")

    def check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def invalidate(self, name: str, reason: str) -> None:
        """Forget a stage's completion so it is recomputed; data files are overwritten in place."""
        removed = False
        cls = load_stage_class_safe(name)
        for sub in ("", *getattr(cls, "state_dirs", ())):
            base = f"{name}/{sub}".rstrip("/")
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
        stage = self._stages[name] if name in getattr(self, "_stages", {}) else load_stage_class(name)(self.cfg)
        cls = type(stage)
        h = self.hashes[name]
        up = upstream_of(name)
        upstream_records = published_records(self.storage, up) if up else []
        ctx = PlanContext(self.cfg, self.storage, upstream_records, up)
        removed = self.storage.clean_temp(name)
        if removed:
            log.info("%s: removed %d temp files left by an interrupted run", name, removed)
        prev = read_stage_meta(self.storage, name)
        note = ""
        if prev and prev.get("stage_hash") not in (None, h):
            note = f"config changed ({prev['stage_hash']} -> {h}): recomputing {name} and downstream"
            log.warning("%s: %s", name, note)
        t0 = time.perf_counter()
        if cls.is_global:
            result = self._run_global(stage, ctx, h)
        else:
            result = self._run_map(stage, ctx, h, prev)
        result.seconds = time.perf_counter() - t0
        result.note = note or result.note
        return result

    def _run_global(self, stage: Stage, ctx: PlanContext, h: str) -> StageResult:
        name = stage.name
        key = combined_key([r["sha256"] for r in ctx.upstream_records])
        rec = read_record(self.storage, name, GLOBAL_RECORD)
        task = self.progress.add_stage(name, partitions=1, rows=sum(r["rows_out"] for r in ctx.upstream_records))
        write_stage_meta(self.storage, name, {"stage": name, "stage_hash": h, "complete": False, "partitions": 1})
        if (rec and rec.get("stage_hash") == h and rec.get("input_key") == key
                and stage.global_output_valid(ctx, rec)):
            self.progress.advance(task, rows=rec.get("rows_in", 0), skipped=True)
            computed = 0
        else:
            summary = stage.run_global(ctx)
            rec = {"stage": name, "partition": 0, "stage_hash": h, "input_key": key, **summary}
            write_record(self.storage, name, rec, GLOBAL_RECORD)
            self.progress.advance(task, rows=rec.get("rows_in", 0))
            computed = 1
        write_stage_meta(self.storage, name, {"stage": name, "stage_hash": h, "complete": True, "partitions": 1})
        return StageResult(
            name, h, 1, computed, 1 - computed, rec.get("rows_in", 0), rec.get("rows_out", 0),
            rec.get("dropped", {}), 0.0, rec.get("metrics", {}),
        )

    def _run_map(self, stage: Stage, ctx: PlanContext, h: str, prev: dict[str, Any] | None) -> StageResult:
        name = stage.name
        work_dir = f"{name}/{stage.work_subdir}".rstrip("/")
        specs = stage.plan(ctx)
        write_stage_meta(
            self.storage, name, {"stage": name, "stage_hash": h, "complete": False, "partitions": len(specs)}
        )
        remove_partitions_from(self.storage, work_dir, len(specs))
        why_not = check_partitions(self.storage, work_dir, specs, h)
        if self.cfg.run.verify_checksums == "full":
            done = [s.pid for s in specs if s.pid not in why_not]
            why_not.update({pid: "checksum mismatch" for pid in self._verify_on_workers(work_dir, done)})
        todo = [s for s in specs if s.pid in why_not]
        reasons: dict[str, int] = {}
        for why in why_not.values():
            reasons[why] = reasons.get(why, 0) + 1
        skipped = len(specs) - len(todo)
        if todo:
            detail = ", ".join(f"{n} {w}" for w, n in sorted(reasons.items()))
            log.info("%s: %d/%d partitions to compute (%s)", name, len(todo), len(specs), detail)
        else:
            log.info("%s: all %d partitions already done", name, len(specs))
        task = self.progress.add_stage(name, partitions=len(specs), rows=sum(s.rows_in for s in specs))
        todo_ids = {s.pid for s in todo}
        for spec in specs:
            if spec.pid not in todo_ids:
                self.progress.advance(task, rows=spec.rows_in, skipped=True)
        if todo:
            self._execute(stage, todo, work_dir, ctx.upstream_dir, h, task)
        records = read_records(self.storage, work_dir)
        records = [r for r in records if r["partition"] < len(specs)]
        reused = sum(1 for r in records if r["partition"] in todo_ids and r.get("reused"))
        if reused:
            log.info("%s: %d of the %d kept their output (their rows are unchanged)", name, reused, len(todo))
        final = stage.finalize(ctx, records)
        if final is not None:
            records = final
        write_stage_meta(
            self.storage, name, {"stage": name, "stage_hash": h, "complete": True, "partitions": len(specs)}
        )
        dropped, metrics = sum_records(records)
        return StageResult(
            name, h, len(specs), len(todo) - reused, skipped + reused,
            sum(r.get("rows_in", 0) for r in records), sum(r.get("rows_out", 0) for r in records),
            dropped, 0.0, metrics,
        )

    def _verify_on_workers(self, work_dir: str, pids: list[int]) -> list[int]:
        """run.verify_checksums=full: re-hash finished partitions in parallel Ray tasks (never sequentially
        on the driver); returns the partitions whose file no longer matches its record."""
        if not pids:
            return []
        import ray

        from pipeline.ray_runtime import ensure_ray, remote_task
        from pipeline.worker import verify_partitions

        ensure_ray(self.cfg.ray)
        task = remote_task(verify_partitions, max_retries=3)
        chunk = max(1, -(-len(pids) // max(1, int(ray.cluster_resources().get("CPU", 1)) * 4)))
        refs = [task.remote(self.out, self.storage_options, work_dir, pids[i:i + chunk])
                for i in range(0, len(pids), chunk)]
        bad = sorted(pid for ref in refs for pid in ray.get(ref))
        if bad:
            log.warning("%s: %d finished partitions fail their checksum: recomputing them", work_dir, len(bad))
        return bad

    # ------------------------------------------------------------------------------------
    def _execute(
        self, stage: Stage, todo: list[PartitionSpec], work_dir: str, upstream_dir: str | None, h: str, task: Any
    ) -> None:
        """Schedule partitions over a pool of actors; a dead actor's partition is requeued (atomic writes
        make the redo harmless).

        An actor gets work only once it has answered `ready()`. A worker whose node died is restarted by
        Ray (max_restarts=-1) wherever resources free up, which may be never while the rest of the pool
        holds them: until it answers again it is benched (probed with backoff), not fed partitions that
        would fail at once and burn their retries. An actor Ray will not restart (its constructor failed)
        is replaced, a bounded number of times. With no worker alive and partitions left, the stage fails
        after `run.worker_start_timeout_s` instead of waiting forever.
        """
        import ray

        from pipeline.ray_runtime import ensure_ray, fit_concurrency, with_worker_env
        from pipeline.worker import StageWorker

        ensure_ray(self.cfg.ray)
        res = stage.resources()
        want = min(res.concurrency, len(todo)) if res.concurrency > 0 else len(todo)
        n = fit_concurrency(stage.name, want, res.num_cpus, res.num_gpus, quiet=res.concurrency == 0)
        options: dict[str, Any] = {
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
            "max_restarts": -1,
            "max_task_retries": 0,
        }
        options.update(with_worker_env(dict(stage.ray_options())))
        actor_cls = ray.remote(StageWorker).options(**options)
        cfg_json = self.cfg.model_dump_json()
        board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        live = _LiveProgress(self, stage.name, task, len(todo), sum(s.rows_in for s in todo), board)

        def new_actor(i: int) -> Any:
            return actor_cls.remote(stage.name, cfg_json, self.out, work_dir, upstream_dir, h, self.storage_options,
                                    i, board)

        actors = [new_actor(i) for i in range(n)]
        pending = deque(todo)
        inflight: dict[Any, tuple[int, PartitionSpec]] = {}
        starting: dict[Any, int] = {actors[i].ready.remote(): i for i in range(n)}  # ready() probes
        benched: dict[int, tuple[float, int]] = {}  # actor -> (next probe time, failed probes)
        idle: list[int] = []
        max_retries = res.max_retries
        failed_starts = 0
        timeout = self.cfg.run.worker_start_timeout_s
        last_alive = time.monotonic()
        try:
            while pending or inflight:
                self.check_lease()
                live.poll([spec.pid for _, spec in inflight.values()], len(todo) - len(pending) - len(inflight))
                now = time.monotonic()
                for i, (when, probes) in list(benched.items()):
                    if now >= when:
                        starting[actors[i].ready.remote()] = i
                        benched[i] = (float("inf"), probes)
                while idle and pending:
                    i = idle.pop(0)
                    spec = pending.popleft()
                    inflight[actors[i].run.remote(spec)] = (i, spec)
                if inflight or idle:
                    last_alive = now
                elif now - last_alive > timeout:
                    raise StageFailed(
                        f"{stage.name}: no worker alive for {timeout:g}s with {len(pending)} partitions left "
                        f"(the Ray cluster cannot place a {res.num_cpus:g}-CPU/{res.num_gpus:g}-GPU worker; "
                        "rerun to resume once it can)"
                    )
                ready, _ = ray.wait([*inflight, *starting], num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in starting:
                        i = starting.pop(ref)
                        try:
                            ray.get(ref)
                        except ray.exceptions.ActorUnavailableError as exc:
                            # restarting (e.g. its node died) and not placed yet: ask again later
                            probes = benched.get(i, (0.0, 0))[1] + 1
                            if probes == 1:
                                log.warning("%s: worker %d unavailable (%s); no work for it until it answers",
                                            stage.name, i, _first_line(exc))
                            benched[i] = (time.monotonic() + min(10.0, 0.5 * 2**probes), probes)
                            continue
                        except ray.exceptions.RayActorError as exc:
                            # dead for good (its constructor raised, or Ray gave up on it): replace it; a
                            # constructor that keeps raising fails the stage, it would never get better
                            why = _first_line(exc)
                            if exc.actor_init_failed:
                                failed_starts += 1
                                if failed_starts > max_retries:
                                    raise StageFailed(f"{stage.name}: worker failed to start: {why}") from None
                            log.warning("%s: worker %d is dead (%s); replacing it", stage.name, i, why)
                            _kill(ray, actors[i])
                            actors[i] = new_actor(i)
                            benched.pop(i, None)
                            starting[actors[i].ready.remote()] = i
                            continue
                        benched.pop(i, None)
                        idle.append(i)
                        continue
                    i, spec = inflight.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
                        self._retry(stage.name, spec, pending, max_retries, f"worker died ({type(exc).__name__})")
                        benched[i] = (time.monotonic() + 0.5, 0)  # back to work once it answers ready()
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        idle.append(i)
                        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                        if isinstance(cause, UserError):
                            raise cause from None
                        self._retry(stage.name, spec, pending, max_retries, f"{type(cause).__name__}: {cause}")
                        continue
                    idle.append(i)
                    log.info(
                        "%s: partition %d done: %d rows in, %d kept (%.2fs)",
                        stage.name, rec["partition"], rec["rows_in"], rec["rows_out"], rec["seconds"],
                    )
                    self.progress.advance(task, rows=spec.rows_in)
        finally:
            for a in [*actors, board]:
                _kill(ray, a)
            live.finish()

    @staticmethod
    def _retry(stage: str, spec: PartitionSpec, pending: deque, max_retries: int, why: str) -> None:
        if spec.attempt >= max_retries:
            raise StageFailed(f"{stage}: partition {spec.pid} failed after {spec.attempt + 1} attempts: {why}")
        log.warning("%s: partition %d attempt %d failed (%s); retrying", stage, spec.pid, spec.attempt + 1, why)
        spec.attempt += 1
        pending.appendleft(spec)


class _LiveProgress:
    """Polls the workers' in-partition progress (once a second) into the display, and publishes it to
    OUT/_progress.json (every PUBLISH_EVERY_S) for `editgen status` on a live run."""

    PUBLISH_EVERY_S = 2.0

    def __init__(self, runner: Runner, stage: str, task: Any, partitions: int, rows: int, board: Any) -> None:
        self.runner, self.stage, self.task, self.board = runner, stage, task, board
        self.partitions, self.rows = partitions, rows
        self.last_poll = self.last_publish = 0.0
        runner.progress.start(task)

    def poll(self, inflight: list[int], done: int) -> None:
        import ray

        now = time.monotonic()
        if now - self.last_poll < 1.0:
            return
        self.last_poll = now
        try:
            snap = ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort, never a reason to fail
            return
        partial = {pid: snap.get(pid, 0.0) for pid in inflight}
        progress = self.runner.progress
        progress.partial(self.task, sum(partial.values()))
        if now - self.last_publish >= self.PUBLISH_EVERY_S:
            self.last_publish = now
            # figures of this run's work (partitions to compute, their rows), so done <= total and ETA holds
            text = progress_record(self.stage, self.partitions, done, self.rows, progress.rows_computed(self.task),
                                   progress.rate(self.task), partial)
            try:
                self.runner.storage.write_text(text, PROGRESS_FILE)
            except UserError:
                log.warning("could not publish %s", PROGRESS_FILE)

    def finish(self) -> None:
        self.runner.progress.partial(self.task, 0.0)
        try:
            self.runner.storage.remove(PROGRESS_FILE)
        except UserError:
            pass


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - best effort cleanup
        pass


def _first_line(exc: BaseException) -> str:
    """The most telling line of a Ray error: the last line of a creation-task traceback, else the first."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if getattr(exc, "actor_init_failed", False) else lines[0])[:300]


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


__all__ = ["Runner", "RunResult", "StageResult", "run_pipeline", "part_name", "stage_complete"]
