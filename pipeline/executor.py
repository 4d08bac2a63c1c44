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
writes make the redo harmless).

Another executor (Ray Data, a local process pool) would implement the same three methods.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.errors import ContractError, StageFailed, UserError
from pipeline.faults import crash_at_setup, crash_in_partition, fault_delay_s
from pipeline.live_progress import ProgressBoard, reporter
from pipeline.records import PartitionRecord, file_matches, part_name, read_record, record_name, stamp, write_record
from pipeline.settings.base import Resources
from pipeline.settings.run import RayConfig
from pipeline.stage import BOOKKEEPING, Partition, PartitionSpec, Stage, Step, count_reasons, missing_columns
from pipeline.storage import Storage

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
    """Computes a step's partitions (`run`) and runs plain functions as parallel tasks."""

    def run(self, job: MapJob, specs: list[PartitionSpec], monitor: Monitor) -> None: ...

    def map_tasks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]: ...

    def map_reduce(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], reduce: Callable[..., Any],
                   args: tuple[Any, ...] = ()) -> Any: ...

    def verify(self, out: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int]) -> list[int]: ...


# ---- the worker body -------------------------------------------------------------------------
def make_stage(job: MapJob) -> tuple[Stage[Any], Step]:
    from pipeline.config import EditgenConfig
    from pipeline.registry import load_stage_class

    stage = load_stage_class(job.stage)(EditgenConfig.model_validate_json(job.config_json))
    step = next(s for s in stage.steps() if s.name == job.step)
    return stage, step


def compute_partition(stage: Stage[Any], step: Step, job: MapJob, storage: Storage, spec: PartitionSpec,
                      board: Any = None, actor: int = 0) -> PartitionRecord:
    """Load, process, check, write and record one partition (the runner's write, on the worker)."""
    assert step.load is not None and step.process is not None
    t0, c0 = time.perf_counter(), time.process_time()
    stage.metrics = {}
    stage.progress = reporter(board, spec.pid)
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
    sha, nbytes = storage.write_table(out, job.stage_dir, part_name(spec.pid))
    kept, dropped = count_reasons(out)
    record: PartitionRecord = {
        "stage": job.stage, "partition": spec.pid, "file": part_name(spec.pid), "stage_hash": job.stage_hash,
        "input_key": spec.input_key, "sha256": sha, "bytes": nbytes, "rows_in": table.num_rows,
        "rows_total": out.num_rows, "rows_out": kept, "dropped": dropped,
        "metrics": {k: float(v) for k, v in stage.metrics.items()}, "seconds": round(time.perf_counter() - t0, 4),
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

    def __init__(self, job: MapJob, actor_index: int = 0, board: Any = None) -> None:
        self.job, self.actor_index, self.board = job, actor_index, board
        self.stage, self.step = make_stage(job)
        crash_at_setup(job.stage)
        self.stage.setup()
        self.storage = Storage(job.out, job.storage_options)

    def ready(self) -> bool:
        return True

    def run(self, spec: PartitionSpec) -> PartitionRecord:
        record = compute_partition(self.stage, self.step, self.job, self.storage, spec, self.board, self.actor_index)
        if self.board is not None:
            self.board.clear.remote(spec.pid)
        return record

    def shutdown(self) -> None:
        self.stage.teardown()


def compute_partitions(job: MapJob, specs: list[PartitionSpec]) -> list[PartitionRecord]:
    """Ray task body for steps without actors: several partitions, one stage instance."""
    stage, step = make_stage(job)
    storage = Storage(job.out, job.storage_options)
    return [compute_partition(stage, step, job, storage, spec) for spec in specs]


def verify_partitions(out_root: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int]) -> list[int]:
    """Ray task body for `run.verify_checksums=full`: the partitions whose file's sha256 differs from its
    record (or whose record or file is gone)."""
    storage = Storage(out_root, storage_options)
    bad = []
    for pid in pids:
        rec = read_record(storage, stage_dir, record_name(pid))
        if rec is None or not file_matches(storage, stage_dir, rec, "full"):
            bad.append(pid)
    return bad


# ---- the Ray executor ------------------------------------------------------------------------
class RayExecutor:
    """Actor pools and tasks on a Ray cluster (joined or started on first use)."""

    def __init__(self, ray_config: RayConfig, worker_start_timeout_s: float) -> None:
        self.ray_config = ray_config
        self.timeout = worker_start_timeout_s

    def _ray(self) -> Any:
        import ray

        from pipeline.ray_runtime import ensure_ray

        ensure_ray(self.ray_config)
        return ray

    def map_tasks(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], max_retries: int = 2) -> list[Any]:
        """fn(*args) for every call, as parallel tasks that carry the worker environment."""
        ray = self._ray()
        from pipeline.ray_runtime import remote_task

        task = remote_task(fn, max_retries=max_retries)
        return ray.get([task.remote(*args) for args in calls])

    def map_reduce(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], reduce: Callable[..., Any],
                   args: tuple[Any, ...] = ()) -> Any:
        """reduce(*args, *mapped) as one more task, fed the mapped tasks' results by reference."""
        ray = self._ray()
        from pipeline.ray_runtime import remote_task

        task = remote_task(fn)
        refs = [task.remote(*c) for c in calls]
        return ray.get(remote_task(reduce).remote(*args, *refs))

    def verify(self, out: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int]) -> list[int]:
        """Re-hash finished partitions in parallel tasks (never sequentially on the driver)."""
        if not pids:
            return []
        ray = self._ray()
        chunk = max(1, -(-len(pids) // max(1, int(ray.cluster_resources().get("CPU", 1)) * 4)))
        calls = [(out, storage_options, stage_dir, pids[i:i + chunk]) for i in range(0, len(pids), chunk)]
        return sorted(pid for bad in self.map_tasks(verify_partitions, calls, max_retries=3) for pid in bad)

    def run(self, job: MapJob, specs: list[PartitionSpec], monitor: Monitor) -> None:
        if not job.actors:
            chunks = [(job, specs[i:i + TASK_CHUNK]) for i in range(0, len(specs), TASK_CHUNK)]
            for chunk, records in zip(chunks, self.map_tasks(compute_partitions, chunks), strict=True):
                for spec, rec in zip(chunk[1], records, strict=True):
                    monitor.done(spec, rec)
            return
        _ActorPool(self._ray(), job, specs, monitor, self.timeout).run()


class _ActorPool:
    """One step's partitions over a pool of StageWorker actors (see the module docstring)."""

    def __init__(self, ray: Any, job: MapJob, todo: list[PartitionSpec], monitor: Monitor, timeout: float) -> None:
        from pipeline.ray_runtime import fit_concurrency, remote_actor

        self.ray, self.job, self.monitor, self.timeout = ray, job, monitor, timeout
        res = job.resources
        want = min(res.concurrency, len(todo)) if res.concurrency > 0 else len(todo)
        self.n = fit_concurrency(job.stage, want, res.num_cpus, res.num_gpus, quiet=res.concurrency == 0)
        options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_restarts": -1,
                                   "max_task_retries": 0}
        options.update(job.ray_options)
        self.actor_cls = remote_actor(StageWorker, options, job.config_json)
        self.board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        self.total = len(todo)
        self.pending = deque(todo)
        self.inflight: dict[Any, tuple[int, PartitionSpec]] = {}
        self.starting: dict[Any, int] = {}  # ready() probes
        self.benched: dict[int, tuple[float, int]] = {}  # actor -> (next probe time, failed probes)
        self.idle: list[int] = []
        self.failed_starts = 0
        self.last_alive = time.monotonic()
        self.last_poll = 0.0
        self.actors = [self._new_actor(i) for i in range(self.n)]

    def _new_actor(self, i: int) -> Any:
        actor = self.actor_cls.remote(self.job, i, self.board)
        self.starting[actor.ready.remote()] = i
        return actor

    def run(self) -> None:
        try:
            while self.pending or self.inflight:
                self.monitor.check()
                self._poll_progress()
                self._probe_benched()
                self._dispatch()
                ready, _ = self.ray.wait([*self.inflight, *self.starting], num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in self.starting:
                        self._on_started(ref)
                    else:
                        self._on_result(ref)
        finally:
            for actor in [*self.actors, self.board]:
                _kill(self.ray, actor)

    def _poll_progress(self) -> None:
        """Rows done inside the running partitions, once a second (best effort, never a failure)."""
        now = time.monotonic()
        if now - self.last_poll < 1.0:
            return
        self.last_poll = now
        try:
            snap = self.ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort, never a reason to fail
            return
        in_flight = {spec.pid: snap.get(spec.pid, 0.0) for _, spec in self.inflight.values()}
        self.monitor.partial(in_flight, self.total - len(self.pending) - len(self.inflight))

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
            self.inflight[self.actors[i].run.remote(spec)] = (i, spec)
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
            ray.get(ref)
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
            _kill(ray, self.actors[i])
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
            self._retry(spec, f"worker died ({type(exc).__name__})")
            self.benched[i] = (time.monotonic() + 0.5, 0)  # back to work once it answers ready()
            return
        except ray.exceptions.RayTaskError as exc:
            self.idle.append(i)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, UserError):
                raise cause from None
            self._retry(spec, f"{type(cause).__name__}: {cause}")
            return
        self.idle.append(i)
        log.info("%s: partition %d done: %d rows in, %d kept (%.2fs)",
                 self.job.stage, rec["partition"], rec["rows_in"], rec["rows_out"], rec["seconds"])
        self.monitor.done(spec, rec)

    def _retry(self, spec: PartitionSpec, why: str) -> None:
        stage, max_retries = self.job.stage, self.job.resources.max_retries
        if spec.attempt >= max_retries:
            raise StageFailed(f"{stage}: partition {spec.pid} failed after {spec.attempt + 1} attempts: {why}")
        log.warning("%s: partition %d attempt %d failed (%s); retrying", stage, spec.pid, spec.attempt + 1, why)
        spec.attempt += 1
        self.pending.appendleft(spec)


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
