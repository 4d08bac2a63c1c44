"""Reading caption inputs: parquet, jsonl, csv/tsv and txt, from paths, globs, dirs or fsspec URLs.

Whole-input problems (missing file, empty input, unreadable parquet, missing column) raise one-line
InputErrors naming the file and column. Row-level problems (null, bytes, invalid UTF-8, non-text
values) never raise: the row is kept with a `raw_error` so ingest drops it with that reason.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from editgen.pipeline.errors import InputError
from editgen.pipeline.redact import redact_url
from editgen.pipeline.storage import open_filesystem
from editgen.sources.textrows import MAX_LINE_BYTES, LongLine, iter_text_rows

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
#: URLs are cut to this many characters.
MAX_URL_CHARS = 4096
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


#: Lone surrogates: JSON can spell them (`"\\ud800"`, or a pair in the wrong order) and csv's
#: surrogateescape makes them of invalid bytes; such a str cannot be encoded, so arrow cannot write it.
_SURROGATE = re.compile("[\ud800-\udfff]")
Cell = tuple[str | None, str | None]  # (text, drop reason)


def _utf8_text(value: str, limit: int) -> Cell:
    """A str cell, cut to `limit` characters: invalid_utf8 if it holds a lone surrogate."""
    value = value[:limit]
    if not value.isascii() and _SURROGATE.search(value):
        return None, "invalid_utf8"
    return value, None


def _utf8_bytes(value: bytes, limit: int) -> Cell:
    """A bytes cell decoded, at most `limit` characters read: invalid_utf8 if it is not UTF-8 (a character
    cut in two by the limit is not an error: the text is over-long and is dropped as too_long anyway)."""
    raw = bytes(value[: limit * 4])
    try:
        return raw.decode("utf-8")[:limit], None
    except UnicodeDecodeError as exc:
        if len(raw) == limit * 4 and exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[: exc.start].decode("utf-8")[:limit], None
        return None, "invalid_utf8"


def _decode(value: object) -> Cell:
    """(text, error) for one raw text cell."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return _utf8_text(value, MAX_KEEP_CHARS)
    if isinstance(value, bytes | bytearray):
        return _utf8_bytes(value, MAX_KEEP_CHARS)
    return None, "not_text"


def _url_value(value: object) -> Cell:
    """(url, error) for one raw URL cell: a URL that is not valid text fails its row (invalid_utf8), as a
    caption does; a non-text URL (a number, a nested value) is no URL."""
    if isinstance(value, str):
        return _utf8_text(value, MAX_URL_CHARS)
    if isinstance(value, bytes | bytearray):
        return _utf8_bytes(value, MAX_URL_CHARS)
    return None, None


def _row(text: Cell, url: Cell) -> tuple[Cell, str | None]:
    """((text, error), url) of a row: a bad URL fails the row, its text kept for tracing."""
    if url[1] and not text[1]:
        return (text[0], url[1]), None
    return text, url[0]


def _printable(name: str) -> str:
    """A file name as valid text: a name of non-UTF-8 bytes (os gives it surrogate-escaped) would fail
    every partition of its file when written; its bytes are spelled as \\xNN instead."""
    if name.isascii() or not _SURROGATE.search(name):
        return name
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")


def _table(name: str, texts: list[Cell], urls: list[str | None], row_start: int = 0) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "source": pa.array([_printable(name)] * n, pa.string()),
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


def txt_row(line: bytes) -> tuple[Cell, str | None]:
    return _decode(bytes(line)), None


def jsonl_row(line: bytes, text_col: str, url_col: str | None) -> tuple[Cell, str | None]:
    """((text, error), url) of one non-blank JSON line."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return (None, "invalid_utf8"), None
    except ValueError:
        return (None, "invalid_json"), None
    if not isinstance(obj, dict):
        return (None, "invalid_json"), None
    return _row(_decode(obj.get(text_col)), _url_value(obj.get(url_col)) if url_col else (None, None))


def csv_row(record: list[str], ti: int, ui: int | None) -> tuple[Cell, str | None]:
    """((text, error), url) of one csv record (its invalid bytes are surrogate-escaped: invalid_utf8)."""
    value = record[ti] if ti < len(record) else None
    u = record[ui] if ui is not None and ui < len(record) else None
    return _row(_decode(value), _url_value(u or None))


def long_row(line: LongLine) -> tuple[Cell, str | None]:
    """An over-long line (any text format): dropped as too_long, its first bytes kept for tracing."""
    return (line.text(), "too_long"), None


def csv_columns(url: str, header: list[str] | LongLine, text_col: str, url_col: str | None) -> tuple[int, int | None]:
    if isinstance(header, LongLine):
        raise InputError(f"{url}: the header row is longer than {MAX_LINE_BYTES} bytes (is this a csv file?)")
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
    texts = [_decode(v) for v in _raw_values(table[text_col], MAX_KEEP_CHARS)]
    if not url_col:
        return _table(name, texts, [None] * len(texts), row_start)
    rows = [_row(t, _url_value(u)) for t, u in zip(texts, _raw_values(table[url_col], MAX_URL_CHARS), strict=True)]
    return _table(name, [t for t, _ in rows], [u for _, u in rows], row_start)


def _raw_values(column: pa.ChunkedArray, limit: int) -> list[object]:
    """A column's values for _decode: text as bytes, cut to `limit` characters' worth in arrow. A parquet
    string column is not checked for UTF-8 when read, and converting one invalid value to str raised
    (failing the partition on every attempt); as bytes, each is decoded and judged on its own."""
    typ = column.type
    if pa.types.is_dictionary(typ):
        column, typ = column.cast(typ.value_type), typ.value_type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        column = column.cast(pa.large_binary() if pa.types.is_large_string(typ) else pa.binary())
        typ = column.type
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        column = pc.binary_slice(column, 0, limit * 4)
    return column.to_pylist()


def read_text_rows(url: str, name: str, fmt: str, text_col: str, url_col: str | None, offset: int, skip: int,
                   row_start: int, n_rows: int) -> pa.Table:
    """Rows [row_start, row_start + n_rows) of a text file: seek to a row boundary the scan recorded
    (`offset`, which is `skip` rows before row_start) and parse from there."""
    texts: list[Cell] = []
    urls: list[str | None] = []
    with _open_text(url) as fh:
        ti, ui = 0, None
        if fmt in ("csv", "tsv"):
            header = next(iter_text_rows(fh, fmt, True))[1]
            ti, ui = csv_columns(url, header, text_col, url_col)
        if offset:
            fh.seek(offset)
        rows = iter_text_rows(fh, fmt, offset == 0 and fmt not in ("csv", "tsv"))
        for i, (_pos, row) in enumerate(rows if n_rows > 0 else ()):
            if i < skip:
                continue
            if isinstance(row, LongLine):
                text, u = long_row(row)
            elif fmt == "txt":
                text, u = txt_row(row)
            elif fmt == "jsonl":
                text, u = jsonl_row(row, text_col, url_col)
            else:
                text, u = csv_row(row, ti, ui)
            texts.append(text)
            urls.append(u)
            if len(texts) == n_rows:  # stop here: reading on would read the next row (perhaps a long one)
                break
    return _table(name, texts, urls, row_start)
