"""Completion records: the commit point of every partition.

A partition counts as done only when its record exists, names the current stage hash and the exact
input it was computed from, and the file on disk still matches the record. The record is written after
the data file, so a crash between the two just recomputes the partition.

Resume costs metadata, not bytes: records are fetched in bulk (concurrently on object stores), file sizes
and version markers (ETag / mtime) come from one listing per stage, and a file is re-hashed only when
its marker differs from the recorded one (a copied OUT, a store without markers). `run.verify_checksums
=full` re-hashes every file, on the Ray workers in parallel (pipeline.executor).

Reading costs bytes: whoever reads a finished partition (a map stage's upstream, a global step, `validate`,
`preview`) reads it once, hashes those bytes against its record's sha256 and parses the same bytes
(`read_verified`). A mismatch (a flipped bit with size and mtime unchanged) is never data: the reader
removes that record, marks its stage incomplete and fails with `DamagedInput`, so the next run
recomputes exactly that partition and whatever reads it.

Records and `_stage.json` are JSON anything may have damaged: one that is not an object, or has a known
field of the wrong type, counts as absent (the partition is recomputed); names other than editgen's own
`part-NNNNN.*` (a stray `part-old.parquet`) are not ours and are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pyarrow as pa

from editgen.pipeline.errors import DamagedInput
from editgen.pipeline.storage import FileInfo, Storage, parquet_file, parquet_table, sha256_bytes

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
    """A global step's completion record (OUT/<stage>/[<step dir>/]_done/global.json), with the body's
    wall and driver CPU time (`editgen status`'s compute per stage)."""

    seconds: float
    cpu_seconds: float

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


_PART = re.compile(r"part-([0-9]{5,})\.([a-z]+)")


def part_pid(fname: str, ext: str = "parquet") -> int | None:
    """The partition number of an editgen file name (`part-00007.parquet`, exactly as `part_name` writes
    it), or None for any other name: a stray `part-old.parquet` is not ours to read, count or delete."""
    m = _PART.fullmatch(fname)
    if m is None or m.group(2) != ext or f"part-{int(m.group(1)):05d}.{ext}" != fname:
        return None
    return int(m.group(1))


# ---- record shapes: a wrong one is damage, like unparseable JSON --------------------------------
_NUM = (int, float)
_NONE = type(None)
#: The type of every known field of a partition or global record (absent fields are fine).
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "stage": (str,), "partition": (int,), "file": (str,), "stage_hash": (str,), "input_key": (str,),
    "sha256": (str,), "bytes": (int,), "rows_in": (int,), "rows_total": (int,), "rows_out": (int,),
    "dropped": (dict,), "metrics": (dict,), "seconds": _NUM, "cpu_seconds": _NUM, "worker": (str,),
    "actor": (int,), "attempt": (int,), "etag": (str, _NONE), "mtime": (*_NUM, _NONE),
    "content_key": (str, _NONE), "reused": (bool,), "shards": (int,), "markers": (dict,), "digests": (dict,),
}
#: The value type inside the mapping fields.
_MAP_VALUES: dict[str, tuple[type, ...]] = {"dropped": (int,), "metrics": _NUM, "digests": (str,), "markers": (list,)}
STAGE_FIELDS: dict[str, tuple[type, ...]] = {"stage": (str,), "stage_hash": (str,), "complete": (bool,),
                                             "partitions": (int,), "upstream_hash": (str, type(None))}


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that JSON true/false is no number."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def shape_problem(doc: Any, fields: dict[str, tuple[type, ...]], required: tuple[str, ...] = ()) -> str | None:
    """Why a parsed record / _stage.json is damaged, or None when it has the shape editgen writes."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    for key in required:
        if key not in doc:
            return f"no {key!r}"
    for key, types in fields.items():
        if key in doc and not _typed(doc[key], types):
            return f"{key!r} is {type(doc[key]).__name__}, not {types[0].__name__}"
    for key, types in _MAP_VALUES.items():
        if fields is RECORD_FIELDS and key in doc and not all(
                isinstance(k, str) and _typed(v, types) for k, v in doc[key].items()):
            return f"{key!r} is not a mapping of names to {types[0].__name__}"
    if isinstance(doc.get("partition"), int) and doc["partition"] < 0:
        return "negative 'partition'"
    return None


def _damaged(where: str, why: str, what: str = "completion record, its partition will be recomputed") -> None:
    log.warning("%s: damaged (%s); treated as absent: a %s", where, why, what)


def parse_record(data: bytes | str, where: str, pid: int | None = None,
                 required: tuple[str, ...] = ("partition", "sha256")) -> dict[str, Any] | None:
    """A record from its JSON text, or None (with a warning) when it is damaged: unparseable, the wrong
    shape, or (read as `part-N.json`) naming another partition."""
    try:
        rec = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        _damaged(where, "not JSON")
        return None
    why = shape_problem(rec, RECORD_FIELDS, required)
    if why is None and pid is not None and rec.get("partition") != pid:
        why = f"it names partition {rec.get('partition')}"
    if why is not None:
        _damaged(where, why)
        return None
    return rec


def write_record(storage: Storage, stage_dir: str, record: dict[str, Any], name: str | None = None) -> None:
    name = name or record_name(record["partition"])
    storage.write_text(json.dumps(record, sort_keys=True, indent=1), stage_dir, DONE_DIR, name)


def read_record(storage: Storage, stage_dir: str, name: str) -> dict[str, Any] | None:
    """One record (`part-N.json` or `global.json`), or None when it is absent or damaged."""
    try:
        data = storage.read_bytes(stage_dir, DONE_DIR, name)
    except FileNotFoundError:
        return None
    pid = part_pid(name, "json")
    return parse_record(data, f"{stage_dir}/{DONE_DIR}/{name}", pid, () if pid is None else ("partition", "sha256"))


def read_records(storage: Storage, stage_dir: str, checksums: bool = True) -> list[dict[str, Any]]:
    """Every well-formed partition record of a stage directory, sorted by partition; fetched in one bulk
    read. `checksums=False` also keeps records without a sha256 (tools that only sum rows)."""
    names = [n for n in storage.listdir(stage_dir, DONE_DIR) if part_pid(n, "json") is not None]
    required = ("partition", "sha256") if checksums else ("partition",)
    out = []
    for parts, data in storage.read_many([(stage_dir, DONE_DIR, n) for n in names]):
        rec = parse_record(data, "/".join(parts), part_pid(parts[-1], "json"), required)
        if rec is not None:
            out.append(rec)
    return sorted(out, key=lambda r: r["partition"])


def read_stage_meta(storage: Storage, stage_dir: str) -> dict[str, Any] | None:
    """OUT/<stage>/_stage.json, or None when absent or damaged (then the stage counts as not run)."""
    try:
        meta = json.loads(storage.read_text(stage_dir, STAGE_FILE))
    except FileNotFoundError:
        return None
    except ValueError:  # UnicodeDecodeError is one
        _damaged(f"{stage_dir}/{STAGE_FILE}", "not JSON", "stage file, the stage counts as not run")
        return None
    why = shape_problem(meta, STAGE_FIELDS, ("stage_hash", "complete", "partitions"))
    if why is not None:
        _damaged(f"{stage_dir}/{STAGE_FILE}", why, "stage file, the stage counts as not run")
        return None
    return meta


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


# ---- reading finished partitions: hash what is parsed ------------------------------------------
def read_checked(storage: Storage, stage_dir: str, fname: str, sha256: str | None) -> tuple[bytes | None, str]:
    """(bytes, "") when a finished file still holds what its record's sha256 names, else (None, why):
    read once, so the bytes returned are the bytes hashed. Only reads (validate, preview)."""
    try:
        data = storage.read_bytes(stage_dir, fname)
    except FileNotFoundError:
        return None, "is missing"
    got = sha256_bytes(data)
    if got == sha256:
        return data, ""
    if sha256 is None:
        return None, "has no checksum in its completion record"
    return None, f"is damaged: its sha256 {got[:12]}... differs from {sha256[:12]}... in its completion record"


def read_record_table(storage: Storage, stage_dir: str, rec: dict[str, Any], columns: list[str],
                      consequence: str) -> pa.Table | None:
    """Those columns (the ones it has) of one committed partition, read checked against its record `rec`;
    None, with a warning that ends in `consequence`, when it does not match. For readers that report
    (preview, calibration): a damaged partition leaves its rows out, it never stops the report."""
    fname = rec.get("file") or part_name(rec["partition"])
    try:
        data, why = read_checked(storage, stage_dir, fname, rec.get("sha256"))
    except ValueError:  # pipeline.errors.UnsafePathError: a record naming a path outside OUT
        data, why = None, "is named by a damaged record"
    if data is None:
        log.warning("%s/%s %s; %s", stage_dir, fname, why, consequence)
        return None
    return parquet_table(data, columns)


def read_verified(storage: Storage, stage_dir: str, fname: str, sha256: str | None, reader: str,
                  record: str | None = None) -> bytes:
    """A finished file's bytes for a stage that consumes them (`read_checked`; parse these bytes, never a
    second read). Damaged or gone: `invalidate` its record (`record`, default the partition's), then
    raise DamagedInput naming the file, so the next run recomputes it."""
    data, why = read_checked(storage, stage_dir, fname, sha256)
    if data is not None:
        return data
    pid = part_pid(fname)
    name = record or (record_name(pid) if pid is not None else None)
    if name is not None:
        invalidate(storage, stage_dir, name)
    raise DamagedInput(f"{reader}: {storage.url(stage_dir, fname)} {why}; its record is removed, so rerunning "
                       "`editgen run` recomputes it and what depends on it")


def read_verified_table(storage: Storage, stage_dir: str, fname: str, sha256: str | None, reader: str,
                        columns: list[str] | None = None) -> pa.Table:
    """A finished parquet partition, verified (`read_verified`) and parsed from the same bytes."""
    data = read_verified(storage, stage_dir, fname, sha256, reader)
    return parquet_file(data).read(columns=columns)


def invalidate(storage: Storage, stage_dir: str, record: str) -> None:
    """Forget one finished output found damaged: remove its record (the resume check then calls it
    missing) and mark its stage incomplete (downstream `--only` runs refuse it until it is recomputed)."""
    storage.remove(stage_dir, DONE_DIR, record)
    stage = stage_dir.split("/")[0]
    meta = read_stage_meta(storage, stage)
    if meta is not None and meta.get("complete"):
        write_stage_meta(storage, stage, {**meta, "complete": False})
    log.warning("%s/%s/%s: removed (its output is damaged); the next run recomputes it", stage_dir, DONE_DIR, record)


def combined_key(parts: list[str]) -> str:
    """One fingerprint for a list of checksums (e.g. all upstream partitions of a global stage)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def remove_partitions_from(storage: Storage, stage_dir: str, n: int) -> None:
    """Delete partition files and records numbered >= n: a smaller plan than last time (e.g. larger
    partitions) must not leave stale partitions for readers or `status` to pick up."""
    for ext, parts in (("parquet", (stage_dir,)), ("json", (stage_dir, DONE_DIR))):
        for fname in storage.listdir(*parts):
            pid = part_pid(fname, ext)
            if pid is not None and pid >= n:
                storage.remove(*parts, fname)


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


def current_metrics(storage: Storage, stage: str) -> dict[str, float] | None:
    """A stage's summed metrics over the records of its current run (render's UNet row-steps, FLOPs and
    GPU seconds; every stage's per-type counts), read from the records, never from the partitions.
    None when the stage has not run."""
    meta = read_stage_meta(storage, stage)
    if not meta:
        return None
    glob = read_record(storage, stage, GLOBAL_RECORD)
    records = [glob] if glob else read_records(storage, stage)
    return sum_records([r for r in records if r.get("stage_hash") == meta.get("stage_hash")])[1]
