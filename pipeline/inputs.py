"""Reading caption inputs: parquet, jsonl, csv/tsv and txt, from paths, globs, dirs or fsspec URLs.

Whole-input problems (missing file, empty input, unreadable parquet, missing column) raise one-line
InputErrors naming the file and column. Row-level problems (null, bytes, invalid UTF-8, non-text
values) never raise: the row is kept with a `raw_error` so ingest drops it with that reason.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import sys
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError

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
        fs, path = fsspec.core.url_to_fs(spec)
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
                if rel in names:
                    rel = url
                names.add(rel)
                files.append(InputFile(url=url, name=rel, fmt=fmt))
    return files


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


def _table(name: str, texts: list[tuple[str | None, str | None]], urls: list[str | None]) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "source": pa.array([name] * n, pa.string()),
            "source_row": pa.array(range(n), pa.int64()),
            "text": pa.array([t for t, _ in texts], pa.large_string()),
            "url": pa.array(urls, pa.string()),
            "raw_error": pa.array([e for _, e in texts], pa.string()),
        },
        schema=RAW_SCHEMA,
    )


def _check_type(f: InputFile, column: str, typ: pa.DataType) -> None:
    ok = (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ)
          or pa.types.is_large_binary(typ) or pa.types.is_null(typ) or pa.types.is_dictionary(typ))
    if not ok:
        raise InputError(f"{f.url}: column {column!r} has type {typ}, expected a string column")


def read_parquet(f: InputFile, text_col: str, url_col: str | None) -> pa.Table:
    try:
        with fsspec.open(f.url, "rb") as fh:
            pf = pq.ParquetFile(io.BytesIO(fh.read()))
            schema = pf.schema_arrow
            names = schema.names
            for col in [text_col] + ([url_col] if url_col else []):
                if col not in names:
                    raise InputError(
                        f"{f.url}: column {col!r} not found (columns: {', '.join(names[:12])}); "
                        f"set ingest.{'text' if col == text_col else 'url'}_column"
                    )
            _check_type(f, text_col, schema.field(text_col).type)
            cols = [text_col] + ([url_col] if url_col else [])
            table = pf.read(columns=cols)
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{f.url}: not a readable parquet file ({str(exc).splitlines()[0][:160]})") from None
    texts = [_decode(v) for v in table[text_col].to_pylist()]
    urls = [_url_value(v) for v in table[url_col].to_pylist()] if url_col else [None] * len(texts)
    return _table(f.name, texts, urls)


def _lines(f: InputFile) -> list[bytes]:
    with fsspec.open(f.url, "rb", compression="infer") as fh:
        data = fh.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def read_txt(f: InputFile) -> pa.Table:
    texts = [_decode(bytes(line)) for line in _lines(f)]
    return _table(f.name, texts, [None] * len(texts))


def read_jsonl(f: InputFile, text_col: str, url_col: str | None) -> pa.Table:
    texts: list[tuple[str | None, str | None]] = []
    urls: list[str | None] = []
    has_text = False
    objects = 0
    for line in _lines(f):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append((None, "invalid_utf8"))
            urls.append(None)
            continue
        except ValueError:
            texts.append((None, "invalid_json"))
            urls.append(None)
            continue
        if not isinstance(obj, dict):
            texts.append((None, "invalid_json"))
            urls.append(None)
            continue
        objects += 1
        has_text = has_text or text_col in obj
        texts.append(_decode(obj.get(text_col)))
        urls.append(_url_value(obj.get(url_col)) if url_col else None)
    if texts and not objects:
        raise InputError(f"{f.url}: not JSON lines (no line holds a JSON object; one object per line expected)")
    if texts and not has_text:
        raise InputError(f"{f.url}: no record has the field {text_col!r}; set ingest.text_column")
    return _table(f.name, texts, urls)


def read_delimited(f: InputFile, text_col: str, url_col: str | None, delimiter: str) -> pa.Table:
    with fsspec.open(f.url, "rb", compression="infer") as fh:
        data = fh.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8", errors="surrogateescape")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{f.url}: input is empty (no header row)") from None
    except csv.Error as exc:
        raise InputError(f"{f.url}: not a readable {delimiter!r}-separated file ({exc})") from None
    for col in [text_col] + ([url_col] if url_col else []):
        if col not in header:
            raise InputError(
                f"{f.url}: column {col!r} not found (columns: {', '.join(header[:12])}); "
                f"set ingest.{'text' if col == text_col else 'url'}_column"
            )
    ti = header.index(text_col)
    ui = header.index(url_col) if url_col else None
    texts: list[tuple[str | None, str | None]] = []
    urls: list[str | None] = []
    try:
        for row in reader:
            if not row:
                continue
            value = row[ti] if ti < len(row) else None
            if value is not None:
                try:
                    value.encode("utf-8")
                    texts.append((value[:MAX_KEEP_CHARS], None))
                except UnicodeEncodeError:
                    texts.append((None, "invalid_utf8"))
            else:
                texts.append((None, None))
            u = row[ui] if ui is not None and ui < len(row) else None
            urls.append(u.encode("utf-8", "replace").decode("utf-8")[:4096] if u else None)
    except csv.Error as exc:
        raise InputError(f"{f.url}: row {reader.line_num}: malformed {delimiter!r}-separated data ({exc})") from None
    return _table(f.name, texts, urls)


def read_input(f: InputFile, text_col: str, url_col: str | None) -> pa.Table:
    """One file as the raw row table (RAW_SCHEMA)."""
    try:
        if f.fmt == "parquet":
            return read_parquet(f, text_col, url_col)
        if f.fmt == "txt":
            return read_txt(f)
        if f.fmt == "jsonl":
            return read_jsonl(f, text_col, url_col)
        if f.fmt in ("csv", "tsv"):
            return read_delimited(f, text_col, url_col, "," if f.fmt == "csv" else "\t")
    except FileNotFoundError:
        raise InputError(f"{f.url}: no such file") from None
    except PermissionError:
        raise InputError(f"{f.url}: permission denied") from None
    raise InputError(f"{f.url}: unsupported format {f.fmt!r}")
