"""One streaming pass over a text input (jsonl/csv/tsv/txt): row count, seek points, whole-file checks.

Text formats have no footer to plan from, so the planner reads each text file once, in constant memory
(no line is held past sources.textrows.MAX_LINE_BYTES), and records the byte offset of every STRIDE-th
row. A worker then seeks to the nearest recorded offset and parses only its own rows. The scan also
raises the whole-input errors (no header, missing column, not JSON lines, no record with the text field)
before anything is written. Results are cached in OUT by file identity, so a resume does not scan again.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field

from editgen.pipeline.errors import InputError
from editgen.sources.inputs import _open_text, csv_columns
from editgen.sources.textrows import LongLine, iter_text_rows

#: A seek point every this many rows: a worker skips at most STRIDE - 1 rows to reach its first one.
STRIDE = 1024


@dataclass
class TextInfo:
    rows: int
    #: byte offset of row k * STRIDE (for csv/tsv the first is the end of the header)
    checkpoints: list[int] = field(default_factory=list)


def _jsonl_progress(line: bytes | LongLine, text_col: str, state: list[bool]) -> None:
    """state = [saw an object, saw the text field]; parsing stops once both are seen. An over-long line
    is judged by its prefix (an object that names the field), never parsed."""
    if isinstance(line, LongLine):
        if line.prefix.lstrip().startswith(b"{"):
            state[0] = True
            state[1] = json.dumps(text_col, ensure_ascii=False).encode("utf-8", "replace") in line.prefix
        return
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return
    if isinstance(obj, dict):
        state[0] = True
        state[1] = text_col in obj


def scan_text(url: str, fmt: str, text_col: str, url_col: str | None) -> TextInfo:
    info = TextInfo(rows=0)
    state = [False, False]
    try:
        with _open_text(url) as fh:
            rows = iter_text_rows(fh, fmt, True)
            pos = 0
            if fmt in ("csv", "tsv"):
                try:
                    pos, header = next(rows)
                except StopIteration:
                    raise InputError(f"{url}: input is empty (no header row)") from None
                csv_columns(url, header, text_col, url_col)
            for end, row in rows:
                if info.rows % STRIDE == 0:
                    info.checkpoints.append(pos)
                if fmt == "jsonl" and not state[1]:
                    _jsonl_progress(row, text_col, state)
                info.rows += 1
                pos = end
    except csv.Error as exc:
        delim = "," if fmt == "csv" else "\t"
        raise InputError(f"{url}: row {info.rows + 2}: malformed {delim!r}-separated data ({exc})") from None
    if fmt == "jsonl" and info.rows and not state[1]:
        if not state[0]:
            raise InputError(f"{url}: not JSON lines (no line holds a JSON object; one object per line expected)")
        raise InputError(f"{url}: no record has the field {text_col!r}; set ingest.text_column")
    return info
