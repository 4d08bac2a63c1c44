"""Exact global dedup of captions and URLs, hash-partitioned so no process holds more than one bucket.

Semantics (unchanged): over rows that passed every other filter, in global order (partition, row), a
row is a `duplicate_caption` if an earlier *kept* row has its caption key, else a `duplicate_url` if an
earlier kept row has its URL, else it is kept.

1. Each ingest worker writes its kept rows' keys into B buckets (OUT/ingest/_keys/part-N.arrow, one
   record batch per bucket; bucket = crc32 of the tagged key; the schema metadata holds each bucket's
   digest, so a bucket task checks the one bucket it reads; a damaged or unchecked bucket is rebuilt
   from the pre-dedup partition, read verified against its record).
2. One task per bucket groups its keys and returns only the rows whose key occurs more than once
   (a key seen once can never make or be a duplicate): (row ordinal, group id, kind).
3. One task replays the rule above over those conflict rows only, in global order, and writes the
   dropped rows (ordinal, reason) to OUT/ingest/_dedup/drops.parquet, returning a digest per partition.
4. The runner republishes only the partitions whose (pre-dedup checksum, drop digest) changed; each
   reads its drops checked against its digest (`read_drops`) and applies them (`apply_drops`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from editgen.pipeline.errors import DamagedInput
from editgen.pipeline.records import (
    GLOBAL_RECORD,
    combined_key,
    invalidate,
    read_record,
    read_verified_table,
    record_name,
)
from editgen.pipeline.stage import DROPPED, KEPT, PartitionSpec, PlanContext, part_name, with_status
from editgen.pipeline.storage import Storage

log = logging.getLogger("editgen")

KEYS_DIR = "_keys"
DEDUP_DIR = "_dedup"
DROPS_FILE = "drops.parquet"
KEYS_SCHEMA = pa.schema([("kind", pa.int8()), ("key", pa.string()), ("pos", pa.int32())])
#: Drop codes in a drops file's digest (3, 4: fetch's image near-dup step, filters.images.neardup).
REASONS = {1: "duplicate_caption", 2: "duplicate_url", 3: "near_duplicate_image", 4: "benchmark_image"}
CODES = {v: k for k, v in REASONS.items()}
#: Schema metadata of a keys file: the JSON list of its buckets' digests (`batch_digest`).
META_DIGESTS = b"editgen.bucket_digests"
#: Rows per bucket when ingest.dedup_buckets is 0 (auto): a bucket task's memory is about 100 B/row.
AUTO_ROWS_PER_BUCKET = 500_000


def auto_buckets(setting: int, total_rows: int) -> int:
    return setting or max(1, -(-total_rows // AUTO_ROWS_PER_BUCKET))


def keys_name(pid: int) -> str:
    return f"part-{pid:05d}.arrow"


def bucket_keys(ckeys: list[str], ukeys: list[str | None], reasons: list[str | None], buckets: int,
                captions: bool, urls: bool) -> list[pa.RecordBatch]:
    """The kept rows' dedup keys split into `buckets` record batches (worker side)."""
    cols: list[tuple[list[int], list[str], list[int]]] = [([], [], []) for _ in range(buckets)]
    for pos, (ck, uk, why) in enumerate(zip(ckeys, ukeys, reasons, strict=True)):
        if why is not None:
            continue
        for kind, key, on in ((0, ck, captions), (1, uk, urls)):
            if on and key is not None and (kind == 0 or key):
                b = cols[zlib.crc32(f"{kind}{key}".encode("utf-8", "surrogatepass")) % buckets]
                b[0].append(kind)
                b[1].append(key)
                b[2].append(pos)
    return [pa.RecordBatch.from_arrays([pa.array(k, pa.int8()), pa.array(s, pa.string()), pa.array(p, pa.int32())],
                                       schema=KEYS_SCHEMA) for k, s, p in cols]


def batch_digest(batch: pa.RecordBatch) -> str:
    """A digest of one bucket's values (kinds, keys, positions), however its buffers are laid out."""
    h = hashlib.sha256(str([batch.num_rows, *(c.null_count for c in batch.columns)]).encode())
    for col in (batch["kind"], batch["pos"]):
        h.update(col.to_numpy(zero_copy_only=False).tobytes())
    key = batch["key"]
    if len(key):
        offsets = np.frombuffer(key.buffers()[1], np.int32)[key.offset:key.offset + len(key) + 1]
        data = key.buffers()[2]
        h.update((offsets - offsets[0]).tobytes())
        h.update(data[int(offsets[0]):int(offsets[-1])].to_pybytes() if data is not None else b"")
    return h.hexdigest()


def keys_file_bytes(batches: list[pa.RecordBatch]) -> bytes:
    schema = KEYS_SCHEMA.with_metadata({META_DIGESTS: json.dumps([batch_digest(b) for b in batches]).encode()})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, schema) as w:
        for b in batches:
            w.write_batch(b.replace_schema_metadata(schema.metadata))
    return sink.getvalue()


def _checked_bucket(storage: Storage, pid: int, b: int, buckets: int) -> pa.RecordBatch | None:
    """Bucket b of a keys file if it matches the digest written with it; None if the file is missing, was
    written for another bucket count, or is damaged (a flipped byte must not move a duplicate)."""
    try:
        with storage.fs.open(storage.path("ingest", KEYS_DIR, keys_name(pid)), "rb") as fh:
            # read through the (seekable) file: only this bucket's bytes, never the other buckets'
            reader = pa.ipc.open_file(pa.PythonFile(fh, mode="r"))
            if reader.num_record_batches != buckets:
                return None
            digests = json.loads((reader.schema.metadata or {}).get(META_DIGESTS, b"[]"))
            batch = reader.get_batch(b)
            if isinstance(digests, list) and len(digests) == buckets and digests[b] == batch_digest(batch):
                return batch.replace_schema_metadata(None)
    except (FileNotFoundError, pa.ArrowInvalid, ValueError, KeyError, TypeError, IndexError):
        return None
    log.warning("ingest/%s/%s: bucket %d damaged or unchecked; rebuilt from ingest/_pre", KEYS_DIR, keys_name(pid), b)
    return None


def load_bucket(storage: Storage, pid: int, b: int, buckets: int, captions: bool, urls: bool,
                pre_sha: str | None = None) -> pa.RecordBatch:
    """Bucket b of one partition's keys; rebuilt from the pre-dedup partition (read verified against its
    record's sha256, `pre_sha` when the caller has it) if the keys file cannot be trusted, and the keys
    file rewritten from it."""
    batch = _checked_bucket(storage, pid, b, buckets)
    if batch is not None:
        return batch
    if pre_sha is None:
        rec = read_record(storage, "ingest/_pre", record_name(pid))
        pre_sha = rec.get("sha256") if rec else None
    t = read_verified_table(storage, "ingest/_pre", part_name(pid), pre_sha, "ingest dedup",
                            columns=["caption_key", "url_key", "drop_reason"])
    batches = bucket_keys(t["caption_key"].to_pylist(), t["url_key"].to_pylist(), t["drop_reason"].to_pylist(),
                          buckets, captions, urls)
    # rewritten whole, atomically (other bucket tasks may do the same, with the same bytes): later runs
    # read one bucket again instead of rebuilding every bucket from the partition
    storage.write_bytes(keys_file_bytes(batches), "ingest", KEYS_DIR, keys_name(pid))
    return batches[b]


def bucket_conflicts(out: str, options: dict[str, Any], pids: list[int], b: int, buckets: int, captions: bool,
                     urls: bool, shas: dict[int, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row ordinal, group id, kind) of every row in bucket b whose key occurs more than once (`shas`:
    the pre-dedup partitions' checksums, for a bucket rebuilt from them)."""
    storage = Storage(out, options)
    keys, kinds, ords = [], [], []
    for pid in pids:
        batch = load_bucket(storage, pid, b, buckets, captions, urls, (shas or {}).get(pid))
        keys.append(pc.binary_join_element_wise(pc.cast(batch["kind"], pa.string()), batch["key"], ""))
        kinds.append(batch["kind"].to_numpy(zero_copy_only=False))
        ords.append((np.int64(pid) << 32) | batch["pos"].to_numpy(zero_copy_only=False).astype(np.int64))
    if not keys:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8)
    enc = pc.dictionary_encode(pa.chunked_array(keys, pa.string())).combine_chunks()
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    multi = np.bincount(idx)[idx] > 1
    return np.concatenate(ords)[multi], idx[multi] * buckets + b, np.concatenate(kinds)[multi]


def resolve(out: str, options: dict[str, Any], *conflicts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[int, str]:
    """Replay first-kept-wins over the conflict rows in global order; write the drops; digest per partition."""
    o = np.concatenate([c[0] for c in conflicts]) if conflicts else np.empty(0, np.int64)
    g = np.concatenate([c[1] for c in conflicts]) if conflicts else np.empty(0, np.int64)
    k = np.concatenate([c[2] for c in conflicts]) if conflicts else np.empty(0, np.int8)
    rows, inv = np.unique(o, return_inverse=True)
    cg = np.full(len(rows), -1, np.int64)
    ug = np.full(len(rows), -1, np.int64)
    cg[inv[k == 0]] = g[k == 0]
    ug[inv[k == 1]] = g[k == 1]
    reason = np.zeros(len(rows), np.int8)
    kept_c: set[int] = set()
    kept_u: set[int] = set()
    for i, (c, u) in enumerate(zip(cg.tolist(), ug.tolist(), strict=True)):
        if c >= 0 and c in kept_c:
            reason[i] = 1
        elif u >= 0 and u in kept_u:
            reason[i] = 2
        else:
            kept_c.add(c)
            kept_u.add(u)
    dropped = rows[reason > 0]
    codes = reason[reason > 0]
    table = pa.table({"o": pa.array(dropped, pa.int64()),
                      "drop_reason": pa.array([REASONS[int(c)] for c in codes], pa.string())})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=65_536, compression="zstd")
    Storage(out, options).write_bytes(buf.getvalue(), "ingest", DEDUP_DIR, DROPS_FILE)
    digests: dict[int, str] = {}
    pids = dropped >> 32
    for pid in np.unique(pids).tolist():
        sel = pids == pid
        digests[int(pid)] = drops_digest(dropped[sel], codes[sel])
    return digests


def final_key(pre_sha: str, digest: str) -> str:
    return combined_key([pre_sha, digest])


def publish_specs(ctx: PlanContext) -> list[PartitionSpec]:
    """The publish step's partitions (ingest's and fetch's): one per partition of the step before the dedup,
    keyed by its checksum and its drop digest (the payload: the worker checks the drops it reads against it)."""
    digests: dict[str, str] = ctx.steps["dedup"][0].get("digests", {})
    specs = []
    for r in ctx.steps[""]:
        digest = digests.get(str(r["partition"]), "")
        specs.append(PartitionSpec(pid=r["partition"], input_key=final_key(r["sha256"], digest),
                                   rows_in=r.get("rows_in", 0), payload=digest, input_sha=r["sha256"]))
    return specs


def drops_digest(ordinals: np.ndarray, codes: np.ndarray) -> str:
    """One partition's drop digest (in the dedup record): its dropped ordinals, in order, and reasons."""
    return hashlib.sha256(ordinals.astype(np.int64).tobytes() + codes.astype(np.int8).tobytes()).hexdigest()[:32]


def read_drops(storage: Storage, pid: int, stage: str = "ingest", digest: str | None = None) -> dict[int, str]:
    """{row ordinal: reason} of one partition's dropped duplicates (only that partition's range is read),
    checked against its drop `digest` from the dedup record when given: rows that do not hash to it are
    damage (the dedup record is removed so a rerun rewrites them), never a different set of duplicates."""
    lo, hi = pid << 32, (pid + 1) << 32
    try:
        with storage.fs.open(storage.path(stage, DEDUP_DIR, DROPS_FILE), "rb") as fh:
            t = pq.read_table(fh, filters=[("o", ">=", lo), ("o", "<", hi)])
        got = dict(zip(t["o"].to_pylist(), t["drop_reason"].to_pylist(), strict=True))
        ok = digest is None or drops_digest(np.array(list(got), np.int64),
                                            np.array([CODES.get(r, 0) for r in got.values()], np.int8)) == digest
    except FileNotFoundError:
        if digest is None:
            return {}
        got, ok = {}, False
    except (pa.ArrowInvalid, OSError, KeyError):
        got, ok = {}, False
    if ok:
        return got
    invalidate(storage, f"{stage}/{DEDUP_DIR}", GLOBAL_RECORD)
    raise DamagedInput(f"{stage} publish: {storage.url(stage, DEDUP_DIR, DROPS_FILE)} is damaged: partition {pid}'s "
                       "drops do not match the dedup record's digest; that record is removed, so rerunning "
                       "`editgen run` rewrites them")


def apply_drops(table: pa.Table, pid: int, drops: dict[int, str]) -> pa.Table:
    """A pre-dedup partition with its duplicates dropped, without the dedup key columns."""
    statuses, reasons = table["status"].to_pylist(), table["drop_reason"].to_pylist()
    base = pid << 32
    for pos in range(table.num_rows):
        why = drops.get(base | pos)
        if why and statuses[pos] == KEPT:
            statuses[pos], reasons[pos] = DROPPED, why
    return with_status(table.drop_columns(["caption_key", "url_key", "status", "drop_reason"]), reasons)
