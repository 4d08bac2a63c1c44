"""Reading caption inputs: parquet, jsonl, csv/tsv and txt, from paths, globs, dirs or fsspec URLs.

Whole-input problems (missing file, empty input, unreadable parquet, missing column) raise one-line
InputErrors naming the file and column. Row-level problems (null, bytes, invalid UTF-8, non-text
values) never raise: the row is kept with a `raw_error` so ingest drops it with that reason.
"""

from __future__ import annotations

import csv
import json
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.redact import redact_url
from pipeline.storage import open_filesystem

EXTENSIONS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".txt": "txt",
}
RAW_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("source_row", pa.int64()),
    ("text", pa.large_string()),
    ("url", pa.string()),
    ("raw_error", pa.string()),
])
#: A caption longer than this is certainly junk: keep only a prefix in memory (it is dropped as too_long).
MAX_KEEP_CHARS = 100_000
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    url: str  # full URL/path to open
    name: str  # stable name used in ids (relative to the input root)
    fmt: str


def _fmt_of(path: str, forced: str) -> str | None:
    if forced != "auto":
        return forced
    lower = path.lower()
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext) or lower.endswith(ext + ".gz"):
            return fmt
    return None


def discover(inputs: list[str], forced_format: str = "auto") -> list[InputFile]:
    """Expand paths/globs/dirs/URLs into a sorted, de-duplicated list of input files."""
    if not inputs:
        raise InputError("no input given (use --input PATH or set ingest.input)")
    files: list[InputFile] = []
    seen: set[str] = set()
    names: set[str] = set()
    for spec in inputs:
        fs, path = open_filesystem(spec)
        if any(c in path for c in GLOB_CHARS):
            matches = sorted(fs.glob(path))
            if not matches:
                raise InputError(f"{spec}: no files match this pattern")
            root = path.split("*")[0].rsplit("/", 1)[0]
            candidates = [(m, posixpath.relpath(m, root)) for m in matches if fs.isfile(m)]
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if _fmt_of(p, forced_format))
            if not found:
                raise InputError(f"{spec}: directory holds no parquet/jsonl/csv/tsv/txt files")
            candidates = [(m, posixpath.relpath(m, path)) for m in found]
        elif fs.isfile(path):
            candidates = [(path, posixpath.basename(path))]
        else:
            raise InputError(f"{spec}: no such file or directory")
        for full, rel in candidates:
            fmt = _fmt_of(full, forced_format)
            if fmt is None:
                raise InputError(f"{full}: unknown input format (use .parquet, .jsonl, .csv, .tsv or .txt, "
                                 "or set ingest.format)")
            url = fs.unstrip_protocol(full) if fs.protocol not in ("file", ("file", "local")) else full
            if url not in seen:
                seen.add(url)
                # Row ids hash (name, row): two different files with the same relative name (a/caps.jsonl
                # and b/caps.jsonl given separately) would share ids, and samples would collide downstream.
                # The first keeps its short name (ids as in a run over it alone); later ones get their URL.
                # A URL is a name only without its credentials (ids and the `source` column are published).
                if rel in names:
                    rel = _unique(redact_url(url), names)
                names.add(rel)
                files.append(InputFile(url=url, name=rel, fmt=fmt))
    return files


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name (2)`, `name (3)`...: URLs that differ only in their credentials name distinct files."""
    n, out = 1, name
    while out in taken:
        n += 1
        out = f"{name} ({n})"
    return out


def _decode(value: object) -> tuple[str | None, str | None]:
    """(text, error) for one raw cell."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value[:MAX_KEEP_CHARS], None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value[: MAX_KEEP_CHARS * 4]).decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if isinstance(value, int | float | bool):
        return None, "not_text"
    return None, "not_text"


def _url_value(value: object) -> str | None:
    if isinstance(value, str):
        return value[:4096]
    if isinstance(value, bytes):
        return value[:4096].decode("utf-8", "replace")
    return None


def _table(name: str, texts: list[tuple[str | None, str | None]], urls: list[str | None],
           row_start: int = 0) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "source": pa.array([name] * n, pa.string()),
            "source_row": pa.array(range(row_start, row_start + n), pa.int64()),
            "text": pa.array([t for t, _ in texts], pa.large_string()),
            "url": pa.array(urls, pa.string()),
            "raw_error": pa.array([e for _, e in texts], pa.string()),
        },
        schema=RAW_SCHEMA,
    )


def _check_type(url: str, column: str, typ: pa.DataType) -> None:
    ok = (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ)
          or pa.types.is_large_binary(typ) or pa.types.is_null(typ) or pa.types.is_dictionary(typ))
    if not ok:
        raise InputError(f"{url}: column {column!r} has type {typ}, expected a string column")


def open_input(url: str, compression: str | None = None) -> Any:
    """A binary file object of an input, opened through a filesystem with no listing cache (an input
    rewritten since the last listing is read as it is now)."""
    fs, path = open_filesystem(url)
    return fs.open(path, "rb", compression=compression)


def _open_text(url: str) -> Any:
    return open_input(url, compression="infer")


def iter_text_rows(fh: Any, fmt: str, at_start: bool) -> Iterator[tuple[int, Any]]:
    """(bytes consumed after this row, row) over a text stream: a line (bytes) for txt/jsonl, a record
    (list of str) for csv/tsv. At the file start a BOM is skipped, and for csv/tsv the header is the first
    row yielded. Blank jsonl lines and empty csv records are not rows. One definition of "row", shared by
    the planner's scan (which records offsets) and the worker's read (which seeks to one)."""
    pos = 0
    first = at_start

    def lines() -> Iterator[bytes]:
        nonlocal pos, first
        for line in fh:
            pos += len(line)
            if first:
                first = False
                if line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
            yield line

    if fmt in ("csv", "tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        decoded = (ln.decode("utf-8", errors="surrogateescape") for ln in lines())
        for record in csv.reader(decoded, delimiter="," if fmt == "csv" else "\t"):
            if record:
                yield pos, record
        return
    for line in lines():
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if fmt == "jsonl" and not line.strip():
            continue
        yield pos, line


def txt_row(line: bytes) -> tuple[tuple[str | None, str | None], str | None]:
    return _decode(bytes(line)), None


def jsonl_row(line: bytes, text_col: str, url_col: str | None) -> tuple[tuple[str | None, str | None], str | None]:
    """((text, error), url) of one non-blank JSON line."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return (None, "invalid_utf8"), None
    except ValueError:
        return (None, "invalid_json"), None
    if not isinstance(obj, dict):
        return (None, "invalid_json"), None
    return _decode(obj.get(text_col)), (_url_value(obj.get(url_col)) if url_col else None)


def csv_row(record: list[str], ti: int, ui: int | None) -> tuple[tuple[str | None, str | None], str | None]:
    value = record[ti] if ti < len(record) else None
    text: tuple[str | None, str | None] = (None, None)
    if value is not None:
        try:
            value.encode("utf-8")
            text = (value[:MAX_KEEP_CHARS], None)
        except UnicodeEncodeError:
            text = (None, "invalid_utf8")
    u = record[ui] if ui is not None and ui < len(record) else None
    return text, (u.encode("utf-8", "replace").decode("utf-8")[:4096] if u else None)


def csv_columns(url: str, header: list[str], text_col: str, url_col: str | None) -> tuple[int, int | None]:
    for col in [text_col] + ([url_col] if url_col else []):
        if col not in header:
            raise InputError(
                f"{url}: column {col!r} not found (columns: {', '.join(header[:12])}); "
                f"set ingest.{'text' if col == text_col else 'url'}_column"
            )
    return header.index(text_col), header.index(url_col) if url_col else None


def read_parquet(f: InputFile, text_col: str, url_col: str | None) -> pa.Table:
    meta = parquet_meta(f.url, text_col, url_col)
    return read_parquet_rows(f.url, f.name, text_col, url_col, tuple(range(meta.num_row_groups)), 0, 0,
                             meta.num_rows)


def parquet_meta(url: str, text_col: str, url_col: str | None) -> pq.FileMetaData:
    """The footer only (row groups, schema), with the column checks of a whole-input error."""
    try:
        with open_input(url) as fh:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
            names = schema.names
            for col in [text_col] + ([url_col] if url_col else []):
                if col not in names:
                    raise InputError(
                        f"{url}: column {col!r} not found (columns: {', '.join(names[:12])}); "
                        f"set ingest.{'text' if col == text_col else 'url'}_column"
                    )
            _check_type(url, text_col, schema.field(text_col).type)
            return pf.metadata
    except InputError:
        raise
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{url}: not a readable parquet file ({str(exc).splitlines()[0][:160]})") from None


def read_parquet_rows(url: str, name: str, text_col: str, url_col: str | None, groups: tuple[int, ...],
                      group_start: int, row_start: int, n_rows: int) -> pa.Table:
    """Rows [row_start, row_start + n_rows) of a parquet file, reading only the covering row groups."""
    cols = [text_col] + ([url_col] if url_col else [])
    with open_input(url) as fh:
        table = pq.ParquetFile(fh).read_row_groups(list(groups), columns=cols)
    table = table.slice(row_start - group_start, n_rows)
    texts = [_decode(v) for v in table[text_col].to_pylist()]
    urls = [_url_value(v) for v in table[url_col].to_pylist()] if url_col else [None] * len(texts)
    return _table(name, texts, urls, row_start)


def read_text_rows(url: str, name: str, fmt: str, text_col: str, url_col: str | None, offset: int, skip: int,
                   row_start: int, n_rows: int) -> pa.Table:
    """Rows [row_start, row_start + n_rows) of a text file: seek to a row boundary the scan recorded
    (`offset`, which is `skip` rows before row_start) and parse from there."""
    texts: list[tuple[str | None, str | None]] = []
    urls: list[str | None] = []
    with _open_text(url) as fh:
        ti, ui = 0, None
        if fmt in ("csv", "tsv"):
            header = next(iter_text_rows(fh, fmt, True))[1]
            ti, ui = csv_columns(url, header, text_col, url_col)
        if offset:
            fh.seek(offset)
        rows = iter_text_rows(fh, fmt, offset == 0 and fmt not in ("csv", "tsv"))
        for i, (_pos, row) in enumerate(rows):
            if i < skip:
                continue
            if len(texts) == n_rows:
                break
            if fmt == "txt":
                text, u = txt_row(row)
            elif fmt == "jsonl":
                text, u = jsonl_row(row, text_col, url_col)
            else:
                text, u = csv_row(row, ti, ui)
            texts.append(text)
            urls.append(u)
    return _table(name, texts, urls, row_start)
