"""Run-wide near-duplicate image removal and benchmark-image exclusion by perceptual hash (pHash).

Semantics: over the fetched rows that were kept, in global order (partition, row), a row is a
`benchmark_image` if its pHash is within `exclude_distance` bits of a benchmark image's, else a
`near_duplicate_image` if it is within `near_dup_distance` bits of an earlier *kept* row's, else kept.
An exact copy is distance 0. Deterministic: the first occurrence wins.

Candidates without comparing every pair (multi-index hashing): the 64 bits are cut into D + 1 bands
(D: the larger distance in use); two hashes within D bits agree exactly on at least one band. One task
per bucket of (band, band value) keys reads the hash file each fetch worker wrote beside its partition
(16 bytes a kept row, never the images; rebuilt from the partition when missing or damaged) and the
benchmark hashes, sorts by band value and compares the rows of each group pairwise (vectorised over
all groups at once), returning only the close pairs. One
resolve task replays the rule above over those pairs (only rows that have one: bounded like the
caption dedup's conflicts) and writes the drops with filters.captions.dedup's file layout and digests,
so publish reads them the same way (`dedup.read_drops`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from editgen.filters.captions import dedup as dd
from editgen.pipeline.records import read_verified_table
from editgen.pipeline.stage import KEPT, part_name, with_status
from editgen.pipeline.storage import Storage
from editgen.sources.phash import band_values, bands, from_hex, popcount

log = logging.getLogger("editgen")

NEAR_DUP = "near_duplicate_image"
BENCHMARK = "benchmark_image"
HASH_COLUMN = "image_phash"
#: OUT/<stage>/_phash/part-N.bin: each fetched partition's kept rows' hashes (`hash_file_bytes`).
HASHES_DIR = "_phash"
#: Multiplier that spreads (band, value) keys over buckets.
_SPREAD = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))


def hashes_name(pid: int) -> str:
    return f"part-{pid:05d}.bin"


def hash_file_bytes(table: pa.Table) -> bytes:
    """A partition's kept rows' (position, pHash), written by the fetch worker beside the partition: the
    bucket tasks read these (16 bytes a row) instead of the partitions (the images). Layout: a 16-byte
    blake2b digest of the body, then the body: row count, positions (int64), hashes (uint64)."""
    status, hexes = table["status"].to_pylist(), table[HASH_COLUMN].to_pylist()
    pos = [i for i, (s, h) in enumerate(zip(status, hexes, strict=True)) if s == KEPT and h]
    body = (np.array([len(pos)], "<u8").tobytes() + np.array(pos, "<i8").tobytes()
            + np.array([from_hex(hexes[i]) for i in pos], "<u8").tobytes())
    return hashlib.blake2b(body, digest_size=16).digest() + body


def _parse_hash_file(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    body = data[16:]
    if len(data) < 24 or hashlib.blake2b(body, digest_size=16).digest() != data[:16]:
        return None
    n = int(np.frombuffer(body[:8], "<u8")[0])
    if len(body) != 8 + 16 * n:
        return None
    return np.frombuffer(body[8:8 + 8 * n], "<i8").astype(np.int64), np.frombuffer(body[8 + 8 * n:], "<u8")


def partition_hashes(storage: Storage, stage: str, pre_dir: str, pid: int, sha: str | None) -> tuple[np.ndarray, ...]:
    """(positions, hashes) of one fetched partition's kept rows, from its hash file; rebuilt from the
    partition itself (read verified against its record) when that file is missing or damaged."""
    try:
        got = _parse_hash_file(storage.read_bytes(stage, HASHES_DIR, hashes_name(pid)))
    except FileNotFoundError:
        got = None
    if got is not None:
        return got
    log.warning("%s/%s/%s: missing or damaged; rebuilt from %s", stage, HASHES_DIR, hashes_name(pid), pre_dir)
    t = read_verified_table(storage, pre_dir, part_name(pid), sha, f"{stage} near-dup", columns=["status", HASH_COLUMN])
    data = hash_file_bytes(t)
    storage.write_bytes(data, stage, HASHES_DIR, hashes_name(pid))
    parsed = _parse_hash_file(data)
    assert parsed is not None
    return parsed


def run_hashes(storage: Storage, stage: str, pre_dir: str, pids: list[int],
               shas: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(ordinal, hash) of every kept row with a pHash, in global order; ordinal = pid << 32 | row."""
    ords, hashes = [], []
    for pid in pids:
        pos, h = partition_hashes(storage, stage, pre_dir, pid, shas.get(pid))
        ords.append((np.int64(pid) << 32) | pos)
        hashes.append(h)
    if not ords:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    return np.concatenate(ords), np.concatenate(hashes).astype(np.uint64)


def _bucket_of(band: int, values: np.ndarray, buckets: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        mixed = (values + np.uint64(band + 1)) * _SPREAD
    return ((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)


def _band_pairs(ords: np.ndarray, hashes: np.ndarray, values: np.ndarray, limit: int) -> list[tuple[np.ndarray, ...]]:
    """(earlier ordinal, later ordinal, distance) of the pairs within `limit` among rows that share a band
    value. Sorted by (value, ordinal), the members of a group are contiguous: offset k pairs each row with
    the one k places on while any such pair is still inside a group, so the work is the pairs compared
    plus the rows, all vectorised, whatever the groups' sizes. Benchmark-only pairs are left out
    (benchmark hashes have negative ordinals: the earlier of any pair they are in)."""
    order = np.lexsort((ords, values))
    v, o, h = values[order], ords[order], hashes[order]
    found, idx, k = [], np.arange(max(len(v) - 1, 0)), 1
    while idx.size:
        idx = idx[idx + k < len(v)]
        idx = idx[v[idx + k] == v[idx]]
        j = idx + k
        dist = popcount(h[idx] ^ h[j])
        keep = (dist <= limit) & (o[j] >= 0)
        if keep.any():
            found.append((o[idx[keep]], o[j[keep]], dist[keep]))
        k += 1
    return found


def bucket_pairs(out: str, options: dict[str, Any], stage: str, pre_dir: str, pids: list[int],
                 shas: dict[int, str], bench: np.ndarray, limit: int, b: int,
                 buckets: int) -> tuple[np.ndarray, ...]:
    """The close pairs (earlier, later, distance) among the rows (and benchmark images) whose band keys
    fall in bucket b. Benchmark hash i has ordinal -1 - i: it precedes every row."""
    ords, hashes = run_hashes(Storage(out, options), stage, pre_dir, pids, shas)
    ords = np.concatenate([-1 - np.arange(len(bench), dtype=np.int64), ords])
    hashes = np.concatenate([bench.astype(np.uint64), hashes])
    found: list[tuple[np.ndarray, ...]] = []
    for band, (shift, width) in enumerate(bands(limit)):
        values = band_values(hashes, shift, width)
        mine = np.nonzero(_bucket_of(band, values, buckets) == b)[0]
        found += _band_pairs(ords[mine], hashes[mine], values[mine], limit)
    if not found:
        return _EMPTY
    return tuple(np.concatenate([f[k] for f in found]) for k in range(3))


def resolve(out: str, options: dict[str, Any], stage: str, near_dup: int | None, exclude: int | None,
            *pairs: tuple[np.ndarray, ...]) -> dict[int, str]:
    """Replay the rule over the close pairs in global order; write the drops; a digest per partition."""
    a, b, d = (np.concatenate([p[k] for p in pairs]) if pairs else _EMPTY[k] for k in range(3))
    bench = (a < 0) & (d <= (exclude if exclude is not None else -1))
    near = (a >= 0) & (d <= (near_dup if near_dup is not None else -1))
    reasons: dict[int, str] = {int(o): BENCHMARK for o in np.unique(b[bench]).tolist()}
    earlier: dict[int, set[int]] = {}
    for x, y in zip(a[near].tolist(), b[near].tolist(), strict=True):
        earlier.setdefault(y, set()).add(x)
    for row in sorted(earlier):  # rows in global order: every earlier row's fate is settled first
        if row not in reasons and any(x not in reasons for x in earlier[row]):
            reasons[row] = NEAR_DUP
    return write_drops(Storage(out, options), stage, reasons)


def write_drops(storage: Storage, stage: str, reasons: dict[int, str]) -> dict[int, str]:
    """OUT/<stage>/_dedup/drops.parquet (dedup's layout: ordinal, reason) and a digest per partition."""
    dropped = np.array(sorted(reasons), np.int64)
    names = [reasons[int(o)] for o in dropped]
    buf = io.BytesIO()
    pq.write_table(pa.table({"o": pa.array(dropped, pa.int64()), "drop_reason": pa.array(names, pa.string())}),
                   buf, row_group_size=65_536, compression="zstd")
    storage.write_bytes(buf.getvalue(), stage, dd.DEDUP_DIR, dd.DROPS_FILE)
    codes = np.array([dd.CODES[n] for n in names], np.int8)
    pids = dropped >> 32
    return {int(p): dd.drops_digest(dropped[pids == p], codes[pids == p]) for p in np.unique(pids).tolist()}


def apply_drops(table: pa.Table, pid: int, drops: dict[int, str]) -> pa.Table:
    """A fetched partition with its near-duplicate and benchmark images dropped (their columns stay)."""
    reasons = table["drop_reason"].to_pylist()
    for pos, status in enumerate(table["status"].to_pylist()):
        why = drops.get((pid << 32) | pos)
        if why and status == KEPT:
            reasons[pos] = why
    return with_status(table, reasons)
