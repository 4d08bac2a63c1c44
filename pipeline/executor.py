"""Runs a step's partitions on the cluster: a fault-tolerant pool of Ray actors (or plain Ray tasks for
cheap steps), behind one interface the runner calls, `Executor.run(job, specs, monitor)`.

A worker holds one stage instance (models loaded once in `setup`), reads a partition's input from
storage, runs the body, checks its columns, writes the output file atomically and then its completion
record. Because the record is the commit point, a partition redone after a crash never appears twice.

The pool: an actor gets work only once it has answered `ready()`. A worker whose node died is restarted
by Ray (max_restarts=-1) wherever resources free up, which may be never while the rest of the pool holds
them: until it answers again it is benched (probed with backoff), not fed partitions that would fail at
once and burn their retries. An actor Ray will not restart (its constructor failed) is replaced, a
bounded number of times. With no worker alive and partitions left, the stage fails after
`run.worker_start_timeout_s` instead of waiting forever. A dead actor's partition is requeued (atomic
writes make the redo harmless). A worker that is alive but makes no progress (wedged) is killed once its
partition passes its progress deadline (pipeline.watchdog) and the partition is retried elsewhere; plain
tasks are watched the same way and cancelled. So no frozen worker or task holds a run forever.

Another executor (Ray Data, a local process pool) would implement the same three methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from editgen.pipeline.errors import ContractError, StageFailed, UserError
from editgen.pipeline.faults import crash_at_setup, crash_in_partition, fault_delay_s, stop_in_partition
from editgen.pipeline.live_progress import Beacon, reporter
from editgen.pipeline.records import (
    PartitionRecord,
    file_matches,
    part_name,
    read_record,
    record_name,
    stamp,
    write_record,
)
from editgen.pipeline.settings.base import Resources
from editgen.pipeline.settings.run import RayConfig
from editgen.pipeline.stage import (
    BOOKKEEPING,
    Partition,
    PartitionSpec,
    Stage,
    Step,
    TaskRunner,
    count_reasons,
    missing_columns,
)
from editgen.pipeline.storage import Storage
from editgen.pipeline.watchdog import BoardHolder, Deadline, TaskBatch, Watch, kill, stalled_message

log = logging.getLogger("editgen")

#: Partitions per task for steps that run as plain tasks (a task per partition costs more than the work).
TASK_CHUNK = 32


@dataclass(frozen=True)
class MapJob:
    """Everything a worker needs to compute partitions of one stage step (plain data: it is shipped)."""

    stage: str
    step: str
    config_json: str
    out: str
    storage_options: dict[str, Any]
    stage_dir: str
    upstream_dir: str | None
    stage_hash: str
    resources: Resources
    ray_options: dict[str, Any] = field(default_factory=dict)
    actors: bool = True


class Monitor(Protocol):
    """The runner's side of a running step: lease checks and progress."""

    def check(self) -> None: ...

    def partial(self, in_flight: dict[int, float], done: int) -> None: ...

    def done(self, spec: PartitionSpec, record: PartitionRecord) -> None: ...


class Executor(Protocol):
    """Computes a step's partitions (`run`), runs plain functions as parallel tasks (watched with the
    deadlines of `resources`, failures named after `label`) and frees what it holds (`close`)."""

    def run(self, job: MapJob, specs: list[PartitionSpec], monitor: Monitor) -> None: ...

    def map_tasks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], max_retries: int = 2,
                  label: str = "tasks", resources: Resources | None = None) -> list[Any]: ...

    def map_reduce(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], reduce: Callable[..., Any],
                   args: tuple[Any, ...] = (), label: str = "tasks", resources: Resources | None = None) -> Any: ...

    def verify(self, out: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int],
               label: str = "verify", resources: Resources | None = None) -> list[int]: ...

    def close(self) -> None: ...


class StageTasks(TaskRunner):
    """The executor's tasks as a stage sees them (PlanContext.tasks): watched with the stage's deadlines
    and named after it when they fail."""

    def __init__(self, executor: Executor, stage: str, resources: Resources) -> None:
        self.executor, self.stage, self.res = executor, stage, resources

    def map_tasks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
        return self.executor.map_tasks(fn, calls, label=self.stage, resources=self.res)

    def map_reduce(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], reduce: Callable[..., Any],
                   args: tuple[Any, ...] = ()) -> Any:
        return self.executor.map_reduce(fn, calls, reduce, args, label=self.stage, resources=self.res)


# ---- the worker body -------------------------------------------------------------------------
def make_stage(job: MapJob) -> tuple[Stage[Any], Step]:
    from editgen.pipeline.config import EditgenConfig
    from editgen.pipeline.registry import load_stage_class

    stage = load_stage_class(job.stage)(EditgenConfig.model_validate_json(job.config_json))
    step = next(s for s in stage.steps() if s.name == job.step)
    return stage, step


def compute_partition(stage: Stage[Any], step: Step, job: MapJob, storage: Storage, spec: PartitionSpec,
                      progress: Callable[[float], None] = lambda _rows: None, actor: int = 0) -> PartitionRecord:
    """Load, process, check, write and record one partition (the runner's write, on the worker);
    `progress` gets the input rows done so far (live progress, and what keeps the partition's deadline)."""
    assert step.load is not None and step.process is not None
    t0, c0 = time.perf_counter(), time.process_time()
    stage.metrics = {}
    stage.progress = progress
    part = Partition(spec, storage, job.stage_dir)
    table = step.load(part, job.upstream_dir)
    if not step.name:
        _require(job.stage, "input", missing_columns(table, stage.input_columns))
    content = step.content_key(table) if step.content_key is not None else None
    kept = _reuse(step, job, part, content)
    if kept is not None:
        return kept
    out = step.process(table, part)
    promised = ("id", *BOOKKEEPING, *(() if step.name else stage.output_columns))
    _require(job.stage, "output", missing_columns(out, promised))
    delay = fault_delay_s(job.stage)
    if delay:
        time.sleep(delay)
    crash_in_partition(job.stage, spec.pid, spec.attempt)
    stop_in_partition(f"{job.stage}/{job.step}" if job.step else job.stage, spec.pid, spec.attempt)
    sha, nbytes = storage.write_table(out, job.stage_dir, part_name(spec.pid))
    kept, dropped = count_reasons(out)
    metrics = {**stage.metrics, **stage.type_metrics(out)} if not step.name else stage.metrics
    record: PartitionRecord = {
        "stage": job.stage, "partition": spec.pid, "file": part_name(spec.pid), "stage_hash": job.stage_hash,
        "input_key": spec.input_key, "sha256": sha, "bytes": nbytes, "rows_in": table.num_rows,
        "rows_total": out.num_rows, "rows_out": kept, "dropped": dropped,
        "metrics": {k: float(v) for k, v in metrics.items()}, "seconds": round(time.perf_counter() - t0, 4),
        "cpu_seconds": round(time.process_time() - c0, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}", "actor": actor, "attempt": spec.attempt,
        "content_key": content,
    }
    record = stamp(storage, job.stage_dir, record)  # ETag / mtime: cheap resume checks later
    write_record(storage, job.stage_dir, record)
    return record


def _reuse(step: Step, job: MapJob, part: Partition, content: str | None) -> PartitionRecord | None:
    """The partition's record re-keyed to its new planned key, when its output was computed from exactly
    this input (same stage hash, same content key, file intact, side files present); else None."""
    if content is None or (step.reusable is not None and not step.reusable(part)):
        return None
    rec = read_record(part.storage, job.stage_dir, record_name(part.spec.pid))
    if (rec is None or rec.get("stage_hash") != job.stage_hash or rec.get("content_key") != content
            or not file_matches(part.storage, job.stage_dir, rec, "metadata")):
        return None
    record: PartitionRecord = {**rec, "input_key": part.spec.input_key, "reused": True,  # type: ignore[typeddict-item]
                               "attempt": part.spec.attempt}
    write_record(part.storage, job.stage_dir, record)
    return record


def _require(stage: str, what: str, missing: list[str]) -> None:
    if missing:
        raise ContractError(f"{stage}: {what} has no column {missing[0]!r}"
                        + (f" (nor {', '.join(map(repr, missing[1:]))})" if len(missing) > 1 else ""))


class StageWorker:
    """Ray actor body: one stage instance, set up once, computing partitions of one step."""

    def __init__(self, job: MapJob, actor_index: int = 0) -> None:
        self.job, self.actor_index = job, actor_index
        self.stage, self.step = make_stage(job)
        crash_at_setup(job.stage)
        self.stage.setup()
        self.storage = Storage(job.out, job.storage_options)

    def ready(self) -> str:
        """Set up and answering: where it runs (host:pid), for the log should it ever wedge."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def run(self, spec: PartitionSpec, beacon: Beacon | None = None) -> PartitionRecord:
        progress = reporter(beacon, spec.pid)
        record = compute_partition(self.stage, self.step, self.job, self.storage, spec, progress, self.actor_index)
        if beacon is not None:
            beacon.clear(spec.pid)
        return record

    def shutdown(self) -> None:
        self.stage.teardown()


def compute_partitions(job: MapJob, specs: list[PartitionSpec], beacon: Beacon | None = None,
                       key: int = 0) -> list[PartitionRecord]:
    """Ray task body for steps without actors: several partitions, one stage instance; reports rows done
    under `key` (its start too), which keeps the task within its progress deadline."""
    if beacon is not None:
        beacon.report(key, 0.0)
    stage, step = make_stage(job)
    storage = Storage(job.out, job.storage_options)
    records, rows = [], 0.0
    for spec in specs:
        records.append(compute_partition(stage, step, job, storage, spec, reporter(beacon, key, rows)))
        rows += spec.rows_in
        if beacon is not None:
            beacon.report(key, rows)
    return records


def verify_partitions(out_root: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int],
                      beacon: Beacon | None = None, key: int = 0) -> list[int]:
    """Ray task body for `run.verify_checksums=full`: the partitions whose file's sha256 differs from its
    record (or whose record or file is gone); each partition hashed is progress."""
    storage = Storage(out_root, storage_options)
    bad = []
    for i, pid in enumerate(pids):
        if beacon is not None:
            beacon.report(key, float(i))
        rec = read_record(storage, stage_dir, record_name(pid))
        if rec is None or not file_matches(storage, stage_dir, rec, "full"):
            bad.append(pid)
    return bad


def watched_call(fn: Callable[..., Any], beacon: Beacon, key: int, *args: Any) -> Any:
    """Ray task body around a plain function: says it started (its deadline counts from here, not from a
    wait for a CPU), then runs it."""
    beacon.report(key, 0.0)
    return fn(*args)


def fetch(ray: Any, refs: Any) -> Any:
    """ray.get, with a task's UserError or StageFailed (bad input, a damaged partition, an unwritable OUT)
    raised as itself: its one line, not Ray's wrapped multi-line traceback."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError | StageFailed):
            raise cause from None
        raise


# ---- the Ray executor ------------------------------------------------------------------------
class RayExecutor:
    """Actor pools and tasks on a Ray cluster (joined or started on first use)."""

    def __init__(self, ray_config: RayConfig, worker_start_timeout_s: float) -> None:
        self.ray_config = ray_config
        self.timeout = worker_start_timeout_s
        self.boards: BoardHolder | None = None

    def _ray(self) -> Any:
        import ray

        from editgen.pipeline.ray_runtime import ensure_ray

        with contextlib.nullcontext() if ray.is_initialized() else own_sigterm():
            ensure_ray(self.ray_config)
        if self.boards is None:
            self.boards = BoardHolder(ray)
        return ray

    def _watch(self, label: str, resources: Resources | None) -> Watch:
        ray = self._ray()
        assert self.boards is not None
        return Watch(ray, self.boards, Deadline.of(resources or Resources()), self.timeout, label)

    def _tasks(self, label: str, resources: Resources | None, submit: Callable[[int, int, Beacon], Any], calls: int,
               max_retries: int, describe: Callable[[int], str], **hooks: Any) -> list[Any]:
        """Refs of `calls` watched tasks (pipeline.watchdog.TaskBatch), at most one per cluster CPU at once."""
        watch = self._watch(label, resources)
        slots = max(1, int(watch.ray.cluster_resources().get("CPU", 1)))
        return TaskBatch(watch.ray, watch, submit, calls, slots, max_retries, describe, **hooks).run()

    def map_tasks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], max_retries: int = 2,
                  label: str = "tasks", resources: Resources | None = None) -> list[Any]:
        """fn(*args) for every call, as parallel tasks that carry the worker environment; a task that
        freezes is cancelled and retried (see pipeline.watchdog)."""
        refs = self._mapped(fn, calls, max_retries, label, resources)
        return fetch(self._ray(), refs) if refs else []

    def _mapped(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], max_retries: int, label: str,
                resources: Resources | None) -> list[Any]:
        from editgen.pipeline.ray_runtime import remote_task

        if not calls:
            return []
        task = remote_task(watched_call, max_retries=max_retries)
        return self._tasks(label, resources, lambda k, _attempt, beacon: task.remote(fn, beacon, k, *calls[k]),
                           len(calls), max_retries, lambda k: f"{label}: task {k + 1} of {len(calls)} ({fn.__name__})")

    def map_reduce(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], reduce: Callable[..., Any],
                   args: tuple[Any, ...] = (), label: str = "tasks", resources: Resources | None = None) -> Any:
        """reduce(*args, *mapped) as one more task, fed the mapped tasks' results by reference (they never
        pass the driver); every task watched as in map_tasks."""
        from editgen.pipeline.ray_runtime import remote_task

        refs = self._mapped(fn, calls, 2, label, resources)
        task = remote_task(watched_call, max_retries=2)
        [ref] = self._tasks(label, resources, lambda k, _attempt, beacon: task.remote(reduce, beacon, k, *args, *refs),
                            1, 2, lambda _k: f"{label}: {reduce.__name__} of {len(calls)} tasks")
        return fetch(self._ray(), ref)

    def verify(self, out: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int],
               label: str = "verify", resources: Resources | None = None) -> list[int]:
        """Re-hash finished partitions in parallel tasks (never sequentially on the driver)."""
        from editgen.pipeline.ray_runtime import remote_task

        if not pids:
            return []
        ray = self._ray()
        chunk = max(1, -(-len(pids) // max(1, int(ray.cluster_resources().get("CPU", 1)) * 4)))
        chunks = [pids[i:i + chunk] for i in range(0, len(pids), chunk)]
        task = remote_task(verify_partitions, max_retries=3)
        refs = self._tasks(label, resources,
                           lambda k, _a, beacon: task.remote(out, storage_options, stage_dir, chunks[k], beacon, k),
                           len(chunks), 3, lambda k: f"{label}: checksums of partitions {chunks[k][0]}-{chunks[k][-1]}")
        return sorted(pid for bad in fetch(ray, refs) for pid in bad)

    def run(self, job: MapJob, specs: list[PartitionSpec], monitor: Monitor) -> None:
        if job.actors:
            _ActorPool(self._watch(job.stage, job.resources), job, specs, monitor, self.timeout).run()
            return
        from editgen.pipeline.ray_runtime import remote_task

        chunks = [specs[i:i + TASK_CHUNK] for i in range(0, len(specs), TASK_CHUNK)]
        task = remote_task(compute_partitions, max_retries=2)
        ray, label = self._ray(), f"{job.stage}/{job.step}" if job.step else job.stage

        def submit(k: int, attempt: int, beacon: Beacon) -> Any:
            return task.remote(job, [dataclasses.replace(s, attempt=attempt) for s in chunks[k]], beacon, k)

        def collect(k: int, ref: Any) -> None:
            for spec, rec in zip(chunks[k], fetch(ray, ref), strict=True):
                monitor.done(spec, rec)

        def describe(k: int) -> str:
            return f"{label}: partitions {chunks[k][0].pid}-{chunks[k][-1].pid}"

        self._tasks(job.stage, job.resources, submit, len(chunks), job.resources.max_retries, describe,
                    tick=monitor.check, on_ready=collect)

    def close(self) -> None:
        """Give back the progress board (the pools' and tasks' actors are gone with their steps)."""
        if self.boards is not None:
            self.boards.close()
            self.boards = None


@contextlib.contextmanager
def own_sigterm() -> Iterator[None]:
    """Keep the caller's own SIGTERM handler (the CLI's orderly stop) through ray.init, which replaces it
    twice: at its start with a Python handler that exits at once (exit 15, no cleanup), and when its C++
    core starts with a failure handler that prints a native stack and aborts (exit 134). For this driver
    process only (its workers keep Ray's handlers): both are switched off while Ray starts, and the
    caller's handler is put back after. Without a handler of the caller's own, Ray's stay."""
    before = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if not callable(before):
        yield
        return
    from ray._private import ray_constants, utils

    saved = ray_constants.__dict__.get("RAY_DISABLE_FAILURE_SIGNAL_HANDLER"), utils.__dict__.get("set_sigterm_handler")
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when the driver's core worker starts
    utils.set_sigterm_handler = lambda _handler: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = saved[0]
        if saved[1] is not None:
            utils.set_sigterm_handler = saved[1]  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, before)


class _ActorPool:
    """One step's partitions over a pool of StageWorker actors (see the module docstring)."""

    def __init__(self, watch: Watch, job: MapJob, todo: list[PartitionSpec], monitor: Monitor,
                 timeout: float) -> None:
        from editgen.pipeline.ray_runtime import fit_concurrency, remote_actor

        self.ray, self.watch, self.job, self.monitor, self.timeout = watch.ray, watch, job, monitor, timeout
        res = job.resources
        want = min(res.concurrency, len(todo)) if res.concurrency > 0 else len(todo)
        self.n = fit_concurrency(job.stage, want, res.num_cpus, res.num_gpus, quiet=res.concurrency == 0)
        options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_restarts": -1,
                                   "max_task_retries": 0}
        options.update(job.ray_options)
        self.actor_cls = remote_actor(StageWorker, options, job.config_json)
        self.total = len(todo)
        self.pending = deque(todo)
        self.inflight: dict[Any, tuple[int, PartitionSpec]] = {}
        self.starting: dict[Any, int] = {}  # ready() probes
        self.benched: dict[int, tuple[float, int]] = {}  # actor -> (next probe time, failed probes)
        self.idle: list[int] = []
        self.where: dict[int, str] = {}  # actor -> host:pid, once it answered
        self.failed_starts = 0
        self.last_alive = time.monotonic()
        self.actors = [self._new_actor(i) for i in range(self.n)]

    def _new_actor(self, i: int) -> Any:
        actor = self.actor_cls.remote(self.job, i)
        self.starting[actor.ready.remote()] = i
        return actor

    def run(self) -> None:
        try:
            while self.pending or self.inflight:
                self.monitor.check()
                self._probe_benched()
                self._dispatch()
                ready, _ = self.ray.wait([*self.inflight, *self.starting], num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in self.starting:
                        self._on_started(ref)
                    else:
                        self._on_result(ref)
                if self.watch.poll():
                    self._report_progress()
                self._kill_wedged()
        finally:
            for actor in self.actors:
                kill(self.ray, actor)
            self.watch.close()

    def _report_progress(self) -> None:
        """Rows done inside the running partitions, as the board last said (best effort)."""
        self.monitor.partial(self.watch.rows(), self.total - len(self.pending) - len(self.inflight))

    def _kill_wedged(self) -> None:
        """A partition past its progress deadline: its worker is wedged. Kill it (SIGKILL ends a stopped
        process too), start a replacement, and retry the partition elsewhere (one attempt)."""
        for pid, why in self.watch.overdue():
            ref, (i, spec) = next((r, v) for r, v in self.inflight.items() if v[1].pid == pid)
            if self.ray.wait([ref], timeout=0)[0]:
                continue  # it finished after all: collected next round
            log.warning("%s: partition %d %s; killing its worker %d (%s) and starting another",
                        self.job.stage, pid, why, i, self.where.get(i, "?"))
            del self.inflight[ref]
            self.watch.drop(pid)
            kill(self.ray, self.actors[i])
            self._retry(spec, why, stalled=True)
            self.benched.pop(i, None)
            self.actors[i] = self._new_actor(i)

    def _probe_benched(self) -> None:
        now = time.monotonic()
        for i, (when, probes) in list(self.benched.items()):
            if now >= when:
                self.starting[self.actors[i].ready.remote()] = i
                self.benched[i] = (float("inf"), probes)

    def _dispatch(self) -> None:
        while self.idle and self.pending:
            i = self.idle.pop(0)
            spec = self.pending.popleft()
            self.inflight[self.actors[i].run.remote(spec, self.watch.beacon)] = (i, spec)
            self.watch.begin(spec.pid)
        now = time.monotonic()
        if self.inflight or self.idle:
            self.last_alive = now
        elif now - self.last_alive > self.timeout:
            res = self.job.resources
            raise StageFailed(
                f"{self.job.stage}: no worker alive for {self.timeout:g}s with {len(self.pending)} partitions left "
                f"(the Ray cluster cannot place a {res.num_cpus:g}-CPU/{res.num_gpus:g}-GPU worker; "
                "rerun to resume once it can)"
            )

    def _on_started(self, ref: Any) -> None:
        ray, stage = self.ray, self.job.stage
        i = self.starting.pop(ref)
        try:
            self.where[i] = str(ray.get(ref))
        except ray.exceptions.ActorUnavailableError as exc:
            # restarting (e.g. its node died) and not placed yet: ask again later
            probes = self.benched.get(i, (0.0, 0))[1] + 1
            if probes == 1:
                log.warning("%s: worker %d unavailable (%s); no work for it until it answers",
                            stage, i, _first_line(exc))
            self.benched[i] = (time.monotonic() + min(10.0, 0.5 * 2**probes), probes)
            return
        except ray.exceptions.RayActorError as exc:
            # dead for good (its constructor raised, or Ray gave up on it): replace it; a constructor that
            # keeps raising fails the stage, it would never get better
            why = _first_line(exc)
            if exc.actor_init_failed:
                self.failed_starts += 1
                if self.failed_starts > self.job.resources.max_retries:
                    raise StageFailed(f"{stage}: worker failed to start: {why}") from None
            log.warning("%s: worker %d is dead (%s); replacing it", stage, i, why)
            kill(ray, self.actors[i])
            self.benched.pop(i, None)
            self.actors[i] = self._new_actor(i)
            return
        self.benched.pop(i, None)
        self.idle.append(i)

    def _on_result(self, ref: Any) -> None:
        ray = self.ray
        i, spec = self.inflight.pop(ref)
        try:
            rec = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            self.watch.end(spec.pid, ok=False)
            self._retry(spec, f"worker died ({type(exc).__name__})")
            self.benched[i] = (time.monotonic() + 0.5, 0)  # back to work once it answers ready()
            return
        except ray.exceptions.RayTaskError as exc:
            self.watch.end(spec.pid, ok=False)
            self.idle.append(i)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, UserError):
                raise cause from None
            self._retry(spec, f"{type(cause).__name__}: {cause}")
            return
        self.watch.end(spec.pid)
        self.idle.append(i)
        log.info("%s: partition %d done: %d rows in, %d kept (%.2fs)",
                 self.job.stage, rec["partition"], rec["rows_in"], rec["rows_out"], rec["seconds"])
        self.monitor.done(spec, rec)

    def _retry(self, spec: PartitionSpec, why: str, stalled: bool = False) -> None:
        stage, max_retries = self.job.stage, self.job.resources.max_retries
        if spec.attempt >= max_retries:
            what = f"{stage}: partition {spec.pid}"
            raise StageFailed(stalled_message(what, spec.attempt + 1, why, stage) if stalled
                              else f"{what} failed after {spec.attempt + 1} attempts: {why}")
        log.warning("%s: partition %d attempt %d failed (%s); retrying", stage, spec.pid, spec.attempt + 1, why)
        spec.attempt += 1
        self.pending.appendleft(spec)


def _first_line(exc: BaseException) -> str:
    """The most telling line of a Ray error: the last line of a creation-task traceback, else the first."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if getattr(exc, "actor_init_failed", False) else lines[0])[:300]
