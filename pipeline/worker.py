"""The Ray actor that runs one stage's batch function over partitions.

One actor holds one stage instance (models loaded once in `setup`), reads a partition's input from
storage, runs the stage, writes the output file atomically and then its completion record. Because
the record is the commit point, a partition redone after a crash never appears twice.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pyarrow as pa

from pipeline.live_progress import reporter
from pipeline.records import file_matches, read_record, record_name, stamp, write_record
from pipeline.stage import PartitionSpec, count_reasons, part_name
from pipeline.storage import Storage

#: Test hooks for fault injection (documented in docs/faults.md): slow partitions down, or make a
#: worker process die hard in the middle of a given partition.
FAULT_DELAY = "EDITGEN_FAULT_DELAY_S"  # "0.5" (every stage) or "render=2,shard=1" (per stage)
FAULT_CRASH = "EDITGEN_FAULT_CRASH"  # "stage:pid[:attempt]" -> os._exit(137) mid-partition;
#                                     "stage:setup" -> the worker's constructor raises


def fault_delay_s(stage: str) -> float:
    """Seconds to sleep per partition (per shard for the shard stage) of `stage`, from FAULT_DELAY."""
    spec = os.environ.get(FAULT_DELAY, "").strip()
    if not spec:
        return 0.0
    if "=" not in spec:
        return float(spec)
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name.strip() == stage:
            return float(value)
    return 0.0


class StageWorker:
    def __init__(
        self,
        stage_name: str,
        config_json: str,
        out_root: str,
        stage_dir: str,
        upstream_dir: str | None,
        stage_hash: str,
        storage_options: dict[str, Any] | None = None,
        actor_index: int = 0,
        board: Any = None,
    ) -> None:
        self.actor_index = actor_index
        self.board = board  # pipeline.live_progress.ProgressBoard actor (None: no live progress)
        from pipeline.config import EditgenConfig
        from stages import load_stage_class

        cfg = EditgenConfig.model_validate_json(config_json)
        self.stage = load_stage_class(stage_name)(cfg)
        if os.environ.get(FAULT_CRASH, "") == f"{stage_name}:setup":
            raise RuntimeError(f"{FAULT_CRASH}: injected failure while starting the {stage_name} worker")
        self.stage.setup()
        self.storage = Storage(out_root, storage_options or {})
        self.stage_dir = stage_dir
        self.upstream_dir = upstream_dir
        self.stage_hash = stage_hash

    def ready(self) -> bool:
        return True

    def _maybe_fault(self, spec: PartitionSpec) -> None:
        delay = fault_delay_s(self.stage.name)
        if delay:
            time.sleep(delay)
        crash = os.environ.get(FAULT_CRASH, "")
        if crash:
            parts = crash.split(":")
            attempt_ok = len(parts) < 3 or int(parts[2]) == spec.attempt
            if parts[0] == self.stage.name and parts[1].isdigit() and int(parts[1]) == spec.pid and attempt_ok:
                os._exit(137)

    def run(self, spec: PartitionSpec) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.stage.metrics = {}
        self.stage.progress = reporter(self.board, spec.pid)
        table = self.stage.load_input(spec, self.storage, self.upstream_dir)
        content = self.stage.content_key(table)
        reused = self._reuse(spec, content)
        if reused is not None:
            return reused
        rows_in = table.num_rows
        out = self.stage.process_partition(table)
        _check_output(self.stage.name, out)
        self._maybe_fault(spec)
        sha, nbytes = self.storage.write_table(out, self.stage_dir, part_name(spec.pid))
        kept, dropped = count_reasons(out)
        record: dict[str, Any] = {
            "stage": self.stage.name,
            "partition": spec.pid,
            "file": part_name(spec.pid),
            "stage_hash": self.stage_hash,
            "input_key": spec.input_key,
            "sha256": sha,
            "bytes": nbytes,
            "rows_in": rows_in,
            "rows_total": out.num_rows,
            "rows_out": kept,
            "dropped": dropped,
            "metrics": {k: float(v) for k, v in self.stage.metrics.items()},
            "seconds": round(time.perf_counter() - t0, 4),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "actor": self.actor_index,
            "attempt": spec.attempt,
            "content_key": content,
        }
        record = stamp(self.storage, self.stage_dir, record)  # ETag / mtime: cheap resume checks later
        write_record(self.storage, self.stage_dir, record)
        if self.board is not None:
            self.board.clear.remote(spec.pid)
        return record

    def _reuse(self, spec: PartitionSpec, content: str | None) -> dict[str, Any] | None:
        """The partition's record re-keyed to `spec`, when its output was computed from exactly this
        input (same stage hash, same content key, file intact); else None."""
        if content is None or not self.stage.can_reuse(self.storage, spec.pid):
            return None
        rec = read_record(self.storage, self.stage_dir, record_name(spec.pid))
        if (rec is None or rec.get("stage_hash") != self.stage_hash or rec.get("content_key") != content
                or not file_matches(self.storage, self.stage_dir, rec, "metadata")):
            return None
        record = {**rec, "input_key": spec.input_key, "reused": True, "attempt": spec.attempt}
        write_record(self.storage, self.stage_dir, record)
        if self.board is not None:
            self.board.clear.remote(spec.pid)
        return record

    def shutdown(self) -> None:
        self.stage.teardown()


def _check_output(stage: str, out: pa.Table) -> None:
    missing = [c for c in ("id", "status", "drop_reason") if c not in out.column_names]
    if missing:
        raise RuntimeError(f"stage {stage} produced output without columns {missing}")


def verify_partitions(out_root: str, storage_options: dict[str, Any], stage_dir: str, pids: list[int]) -> list[int]:
    """Ray task body for `run.verify_checksums=full`: the partitions whose file's sha256 differs from its
    record (or whose record or file is gone)."""
    from pipeline.records import file_matches, read_record, record_name

    storage = Storage(out_root, storage_options)
    bad = []
    for pid in pids:
        rec = read_record(storage, stage_dir, record_name(pid))
        if rec is None or not file_matches(storage, stage_dir, rec, "full"):
            bad.append(pid)
    return bad
