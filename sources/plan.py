"""Ingest planning from metadata: which rows of which file each partition reads, and its key.

The driver never reads caption data. Per input file it takes the listing (size, mtime/ETag/version),
the parquet footer (row groups) or, for text formats, one constant-memory scan (sources.scan, cached
in OUT by file identity). A partition is a list of segments (file, row range); its key is the files'
identities plus the row ranges, so an edited file recomputes only the partitions that read it, and the
same files named another way (./a.jsonl, a.jsonl, a glob) have the same keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa

from editgen.pipeline.errors import InputError
from editgen.pipeline.storage import Storage, open_filesystem
from editgen.sources.inputs import InputFile, parquet_meta, read_parquet, read_parquet_rows, read_text_rows
from editgen.sources.scan import STRIDE, TextInfo, scan_text

#: Bump when the meaning of a segment (row numbering, what a worker reads) changes.
PLAN_VERSION = "1"
SCAN_DIR = "_scan"
#: fsspec info keys that change when an object's content does, in order of preference.
VERSION_KEYS = ("ETag", "etag", "VersionId", "version_id", "generation", "md5Hash", "mtime", "LastModified",
                "last_modified", "updated", "modified")


@dataclass(frozen=True)
class FileMeta:
    url: str
    name: str
    fmt: str
    size: int
    version: str
    rows: int
    #: parquet: rows per row group; text: byte offset of every STRIDE-th row
    groups: tuple[int, ...] = ()
    checkpoints: tuple[int, ...] = ()

    @property
    def identity(self) -> str:
        return json.dumps([self.url, self.size, self.version])


@dataclass(frozen=True)
class Segment:
    """Rows [row_start, row_start + n_rows) of one file; `take` (sampled rows, relative) for --limit."""

    file: FileMeta
    row_start: int
    n_rows: int
    take: tuple[int, ...] | None = None
    offset: int = 0  # text: byte offset of a row boundary at or before row_start
    skip: int = 0  # text: rows between `offset` and row_start

    def key(self) -> str:
        f = self.file
        take = hashlib.sha256(np.asarray(self.take, np.int64).tobytes()).hexdigest() if self.take else ""
        return json.dumps([f.url, f.size, f.version, f.name, f.fmt, self.row_start, self.n_rows, take])


@dataclass
class Partition:
    segments: list[Segment] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(s.take) if s.take is not None else s.n_rows for s in self.segments)

    def key(self) -> str:
        body = "\n".join([PLAN_VERSION] + [s.key() for s in self.segments])
        return hashlib.sha256(body.encode()).hexdigest()


def file_version(info: dict[str, object]) -> str:
    for k in VERSION_KEYS:
        if info.get(k) is not None:
            return f"{k}={info[k]}"
    return ""


def describe(f: InputFile, text_col: str, url_col: str | None, cache: Storage | None) -> FileMeta:
    """Metadata of one input file: listing, plus parquet footer or (cached) text scan."""
    fs, path = open_filesystem(f.url)
    info = fs.info(path)
    size, version = int(info.get("size") or 0), file_version(info)
    ucol = url_col if f.fmt != "txt" else None
    if f.fmt == "parquet":
        meta = parquet_meta(f.url, text_col, ucol)
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        return FileMeta(f.url, f.name, f.fmt, size, version, meta.num_rows, groups=groups)
    key = hashlib.sha256(json.dumps([f.url, size, version, f.fmt, text_col, ucol, STRIDE]).encode()).hexdigest()
    text = _cached_scan(cache, key)
    if text is None:
        text = scan_text(f.url, f.fmt, text_col, ucol)
    return FileMeta(f.url, f.name, f.fmt, size, version, text.rows, checkpoints=tuple(text.checkpoints))


def _cached_scan(cache: Storage | None, key: str) -> TextInfo | None:
    if cache is None:
        return None
    try:
        return TextInfo(**json.loads(cache.read_text("ingest", SCAN_DIR, f"{key}.json")))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def save_scans(storage: Storage, files: list[FileMeta], text_col: str, url_col: str | None) -> None:
    """Cache text scans in OUT (after preflight passed, so nothing is written for a bad input)."""
    for f in files:
        if f.fmt == "parquet":
            continue
        ucol = url_col if f.fmt != "txt" else None
        key = hashlib.sha256(json.dumps([f.url, f.size, f.version, f.fmt, text_col, ucol, STRIDE]).encode()).hexdigest()
        if not storage.exists("ingest", SCAN_DIR, f"{key}.json"):
            body = asdict(TextInfo(f.rows, list(f.checkpoints)))
            storage.write_text(json.dumps(body), "ingest", SCAN_DIR, f"{key}.json")


def segment(f: FileMeta, row_start: int, n_rows: int, take: tuple[int, ...] | None = None) -> Segment:
    """A segment that carries only what its worker needs (one seek point, not the file's list)."""
    if f.fmt == "parquet":
        return Segment(f, row_start, n_rows, take)
    k = row_start // STRIDE
    slim = replace(f, checkpoints=())
    return Segment(slim, row_start, n_rows, take, offset=f.checkpoints[k], skip=row_start - k * STRIDE)


def pack(files: list[FileMeta], rows_per_partition: int) -> list[Partition]:
    """Consecutive rows of the concatenated input, rows_per_partition at a time (segments may span
    files), exactly as slicing the whole concatenated input would."""
    parts: list[Partition] = [Partition()]
    room = rows_per_partition
    for f in files:
        start = 0
        while start < f.rows:
            n = min(room, f.rows - start)
            parts[-1].segments.append(segment(f, start, n))
            start += n
            room -= n
            if room == 0:
                parts.append(Partition())
                room = rows_per_partition
    return [p for p in parts if p.segments]


def pack_sample(files: list[FileMeta], rows_per_partition: int, limit: int, seed: int) -> list[Partition]:
    """--limit: the same seeded sample of global row numbers as before (rng.choice over all rows), cut
    into partitions of sampled rows."""
    total = sum(f.rows for f in files)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(total, size=limit, replace=False))
    starts = np.cumsum([0] + [f.rows for f in files])
    parts = []
    for lo in range(0, len(idx), rows_per_partition):
        chunk = idx[lo:lo + rows_per_partition]
        which = np.searchsorted(starts, chunk, side="right") - 1
        part = Partition()
        for fi in np.unique(which):
            rows = chunk[which == fi] - starts[fi]
            first, last = int(rows[0]), int(rows[-1])
            take = tuple(int(r) - first for r in rows)
            part.segments.append(segment(files[int(fi)], first, last - first + 1, take))
        parts.append(part)
    return parts


def read_segment(seg: Segment, text_col: str, url_col: str | None) -> pa.Table:
    """What a worker reads for one segment: only the covering row groups, or from the nearest seek point."""
    f = seg.file
    ucol = url_col if f.fmt != "txt" else None
    if f.fmt == "parquet":
        bounds = np.cumsum((0,) + f.groups)
        first = int(np.searchsorted(bounds, seg.row_start, side="right") - 1)
        last = int(np.searchsorted(bounds, seg.row_start + seg.n_rows - 1, side="right") - 1)
        table = read_parquet_rows(f.url, f.name, text_col, ucol, tuple(range(first, last + 1)), int(bounds[first]),
                                  seg.row_start, seg.n_rows)
    else:
        table = read_text_rows(f.url, f.name, f.fmt, text_col, ucol, seg.offset, seg.skip, seg.row_start,
                               seg.n_rows)
    if table.num_rows != seg.n_rows:
        raise RuntimeError(f"{f.url}: expected {seg.n_rows} rows from row {seg.row_start}, read {table.num_rows} "
                           "(the file changed while the run was planned; rerun)")
    return table.take(pa.array(seg.take, pa.int64())) if seg.take is not None else table


def _whole_text(f: InputFile, text_col: str, url_col: str | None) -> pa.Table:
    info = scan_text(f.url, f.fmt, text_col, url_col)
    return read_text_rows(f.url, f.name, f.fmt, text_col, url_col, info.checkpoints[0] if info.checkpoints else 0,
                          0, 0, info.rows)


def read_input(f: InputFile, text_col: str, url_col: str | None) -> pa.Table:
    """One file as the raw row table (RAW_SCHEMA)."""
    try:
        if f.fmt == "parquet":
            return read_parquet(f, text_col, url_col)
        if f.fmt in ("txt", "jsonl", "csv", "tsv"):
            return _whole_text(f, text_col, url_col)
    except FileNotFoundError:
        raise InputError(f"{f.url}: no such file") from None
    except PermissionError:
        raise InputError(f"{f.url}: permission denied") from None
    raise InputError(f"{f.url}: unsupported format {f.fmt!r}")
