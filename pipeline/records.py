"""Completion records: the commit point of every partition.

A partition counts as done only when its record exists, names the current stage hash and the exact
input it was computed from, and the file on disk still matches the record. The record is written after
the data file, so a crash between the two just recomputes the partition.

Resume costs metadata, not bytes: records are fetched in bulk (concurrently on object stores), file sizes
and version markers (ETag / mtime) come from one listing per stage, and a file is re-hashed only when
its marker differs from the recorded one (a copied OUT, a store without markers). `run.verify_checksums
=full` re-hashes every file, on the Ray workers in parallel (pipeline.executor).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, TypedDict

from pipeline.storage import FileInfo, Storage, sha256_bytes

log = logging.getLogger("editgen")

DONE_DIR = "_done"
STAGE_FILE = "_stage.json"
GLOBAL_RECORD = "global.json"


class PartitionRecord(TypedDict, total=False):
    """A map step's completion record (OUT/<stage>/[<step dir>/]_done/part-N.json), written by the runner."""

    stage: str
    partition: int
    file: str
    stage_hash: str
    input_key: str
    sha256: str
    bytes: int
    rows_in: int
    rows_total: int
    rows_out: int
    dropped: dict[str, int]
    metrics: dict[str, float]
    seconds: float
    cpu_seconds: float  # the worker process's CPU time for it (wall `seconds` also counts waiting for a core)
    worker: str
    actor: int
    attempt: int
    etag: str | None
    mtime: float | None
    content_key: str | None  # the step's fingerprint of its input rows, when it has one
    reused: bool  # this run kept the output: input rows unchanged under a new planned key


class GlobalSummary(TypedDict, total=False):
    """What a global body returns: row accounting plus what it wrote (shard: the manifest's checksum,
    its tars' markers; ingest's dedup: a drop digest per partition)."""

    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    metrics: dict[str, float]
    sha256: str
    bytes: int
    shards: int
    markers: dict[str, list[str | float | None]]
    digests: dict[str, str]


class GlobalRecord(GlobalSummary, total=False):
    """A global step's completion record (OUT/<stage>/[<step dir>/]_done/global.json)."""

    stage: str
    partition: int
    stage_hash: str
    input_key: str


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


def part_name(pid: int) -> str:
    return f"part-{pid:05d}.parquet"


def record_name(pid: int) -> str:
    return f"part-{pid:05d}.json"


def write_record(storage: Storage, stage_dir: str, record: dict[str, Any], name: str | None = None) -> None:
    name = name or record_name(record["partition"])
    storage.write_text(json.dumps(record, sort_keys=True, indent=1), stage_dir, DONE_DIR, name)


def read_record(storage: Storage, stage_dir: str, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(stage_dir, DONE_DIR, name))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        log.warning("%s/%s/%s: unreadable completion record, partition will be recomputed",
                    stage_dir, DONE_DIR, name)
        return None


def read_records(storage: Storage, stage_dir: str) -> list[dict[str, Any]]:
    """Every partition record of a stage directory, sorted by partition; fetched in one bulk read."""
    names = [n for n in storage.listdir(stage_dir, DONE_DIR) if n.startswith("part-") and n.endswith(".json")]
    out = []
    for name, data in storage.read_many([(stage_dir, DONE_DIR, n) for n in names]):
        try:
            rec = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("%s/%s/%s: unreadable completion record, partition will be recomputed",
                        stage_dir, DONE_DIR, name[-1])
            continue
        if isinstance(rec, dict) and isinstance(rec.get("partition"), int):
            out.append(rec)
    return sorted(out, key=lambda r: r["partition"])


def read_stage_meta(storage: Storage, stage_dir: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(stage_dir, STAGE_FILE))
    except (FileNotFoundError, ValueError):
        return None


def write_stage_meta(storage: Storage, stage_dir: str, meta: dict[str, Any]) -> None:
    storage.write_text(json.dumps(meta, sort_keys=True, indent=1), stage_dir, STAGE_FILE)


def file_matches(storage: Storage, stage_dir: str, record: dict[str, Any], verify: bool | str) -> bool:
    """Does the partition file on disk still hold exactly what the record says? (one file; the runner
    checks whole stages with `check_partitions`)."""
    fname = record.get("file") or part_name(record["partition"])
    try:
        info = storage.info(stage_dir, fname)
    except (FileNotFoundError, ValueError):  # ValueError: a record naming a path outside OUT
        return False
    return _check(storage, stage_dir, fname, record, info, full=verify in (True, "full")) != "bad"


def _check(storage: Storage, stage_dir: str, fname: str, record: dict[str, Any], info: FileInfo | None,
           full: bool) -> str:
    """"ok" (size and marker match), "hashed" (marker moved, content still matches) or "bad"."""
    if info is None or info.size != record.get("bytes"):
        return "bad"
    same_marker = (record.get("etag") is not None and record.get("etag") == info.etag) or (
        record.get("etag") is None and record.get("mtime") is not None and record.get("mtime") == info.mtime)
    if same_marker and not full:
        return "ok"
    try:
        same = sha256_bytes(storage.read_bytes(stage_dir, fname)) == record.get("sha256")
    except (FileNotFoundError, ValueError):
        return "bad"
    return "hashed" if same else "bad"


def stamp(storage: Storage, stage_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record plus the store's version marker of its file (read back right after writing it)."""
    info = storage.info(stage_dir, record.get("file") or part_name(record["partition"]))
    return {**record, "etag": info.etag, "mtime": info.mtime}


def check_partitions(storage: Storage, stage_dir: str, keys: dict[int, str], stage_hash: str) -> dict[int, str]:
    """{pid: why not done} for the planned partitions ({pid: input key}) that must be computed (absent: done).

    One listing for sizes and markers, one bulk read of records; a file is hashed only where its marker
    is unknown or moved (`run.verify_checksums=full` re-hashes the rest on the cluster)."""
    records = {r["partition"]: r for r in read_records(storage, stage_dir)}
    listing = storage.list_info(stage_dir)
    todo: dict[int, str] = {}
    for pid, input_key in keys.items():
        rec = records.get(pid)
        if rec is None:
            todo[pid] = "missing"
        elif rec.get("stage_hash") != stage_hash:
            todo[pid] = "config changed"
        elif rec.get("input_key") != input_key:
            todo[pid] = "input changed"
        else:
            fname = rec.get("file") or part_name(pid)
            state = "bad" if "/" in fname else _check(storage, stage_dir, fname, rec, listing.get(fname), False)
            if state == "bad":
                todo[pid] = "file altered or truncated"
            elif state == "hashed":  # e.g. a copied OUT: same bytes, new marker; hash once, not every resume
                write_record(storage, stage_dir, stamp(storage, stage_dir, rec))
    return todo


def combined_key(parts: list[str]) -> str:
    """One fingerprint for a list of checksums (e.g. all upstream partitions of a global stage)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def remove_partitions_from(storage: Storage, stage_dir: str, n: int) -> None:
    """Delete partition files and records numbered >= n: a smaller plan than last time (e.g. larger
    partitions) must not leave stale partitions for readers or `status` to pick up."""
    for fname in storage.listdir(stage_dir):
        if fname.startswith("part-") and fname.endswith(".parquet") and int(fname[5:10]) >= n:
            storage.remove(stage_dir, fname)
    for fname in storage.listdir(stage_dir, DONE_DIR):
        if fname.startswith("part-") and int(fname[5:10]) >= n:
            storage.remove(stage_dir, DONE_DIR, fname)


def sum_records(records: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, float]]:
    """(dropped rows by reason, summed metrics) over completion records."""
    dropped: dict[str, int] = {}
    metrics: dict[str, float] = {}
    for r in records:
        for k, v in r.get("dropped", {}).items():
            dropped[k] = dropped.get(k, 0) + v
        for k, v in r.get("metrics", {}).items():
            metrics[k] = metrics.get(k, 0.0) + v
    return dict(sorted(dropped.items())), metrics
