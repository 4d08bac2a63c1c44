"""Completion records: the commit point of every partition.

A partition counts as done only when its record exists, names the current stage hash and the exact
input it was computed from, and the file on disk still matches the recorded size and checksum. The
record is written after the data file, so a crash between the two just recomputes the partition.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pipeline.stage import PartitionSpec, part_name
from pipeline.storage import Storage, sha256_bytes

log = logging.getLogger("editgen")

DONE_DIR = "_done"
STAGE_FILE = "_stage.json"
GLOBAL_RECORD = "global.json"


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
    out = []
    for name in storage.listdir(stage_dir, DONE_DIR):
        if name.startswith("part-") and name.endswith(".json"):
            rec = read_record(storage, stage_dir, name)
            if rec is not None:
                out.append(rec)
    return sorted(out, key=lambda r: r["partition"])


def read_stage_meta(storage: Storage, stage_dir: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(stage_dir, STAGE_FILE))
    except (FileNotFoundError, ValueError):
        return None


def write_stage_meta(storage: Storage, stage_dir: str, meta: dict[str, Any]) -> None:
    storage.write_text(json.dumps(meta, sort_keys=True, indent=1), stage_dir, STAGE_FILE)


def file_matches(storage: Storage, stage_dir: str, record: dict[str, Any], verify: bool) -> bool:
    """Does the partition file on disk still hold exactly what the record says?"""
    fname = record.get("file") or part_name(record["partition"])
    try:
        if storage.size(stage_dir, fname) != record.get("bytes"):
            return False
        if verify and sha256_bytes(storage.read_bytes(stage_dir, fname)) != record.get("sha256"):
            return False
    except (FileNotFoundError, ValueError):  # ValueError: a record naming a path outside OUT
        return False
    return True


def is_done(
    storage: Storage, stage_dir: str, spec: PartitionSpec, stage_hash: str, verify: bool
) -> tuple[bool, str]:
    """(done?, why not) for one planned partition."""
    rec = read_record(storage, stage_dir, record_name(spec.pid))
    if rec is None:
        return False, "missing"
    if rec.get("stage_hash") != stage_hash:
        return False, "config changed"
    if rec.get("input_key") != spec.input_key:
        return False, "input changed"
    if not file_matches(storage, stage_dir, rec, verify):
        return False, "file altered or truncated"
    return True, ""


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
