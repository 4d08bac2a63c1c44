"""What a row of a text input is (a line of txt/jsonl, a record of csv/tsv), read in bounded memory.

A caption file is untrusted: one 300 MB line without a newline used to be read whole (`for line in fh`),
decoded and split, about 4x its size in the driver's scan and again in a worker. Here a file is read in
chunks and no line longer than MAX_LINE_BYTES is ever held: such a row comes as a `LongLine` (its first
LONG_PREFIX_BYTES and its size), which ingest drops as `too_long`, keeping the prefix for tracing. The
planner's scan and the worker's read share this one definition, so their row numbers always agree.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: A row (line) of this many bytes or more, newline excluded, is over-long: never held whole, dropped
#: as too_long.
#: LAION rows are well under 10 KB; a 100k-character caption (ingest's longest kept prefix) fits.
MAX_LINE_BYTES = 1 << 20
#: Bytes of an over-long row kept for tracing (ingest keeps 2048 characters of it, at most 4 bytes each).
LONG_PREFIX_BYTES = 8192
#: Bytes read at a time.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class LongLine:
    """An over-long row: its first bytes and its full size (newline included)."""

    prefix: bytes
    size: int

    def text(self) -> str:
        return self.prefix.decode("utf-8", "replace")


def _long(line: bytes, size: int) -> LongLine:
    return LongLine(bytes(line[:LONG_PREFIX_BYTES]), size)


def bounded_lines(fh: Any) -> Iterator[tuple[int, bytes | LongLine]]:
    """(bytes consumed, line without its b"\\n") over a binary stream; a line of MAX_LINE_BYTES or more
    comes as a LongLine, read through chunk by chunk. Memory stays O(MAX_LINE_BYTES + CHUNK_BYTES)."""
    limit = MAX_LINE_BYTES
    buf = b""
    skipping: LongLine | None = None  # the over-long line being read through
    while chunk := fh.read(CHUNK_BYTES):
        if skipping is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                skipping = LongLine(skipping.prefix, skipping.size + len(chunk))
                continue
            yield skipping.size + nl + 1, LongLine(skipping.prefix, skipping.size + nl + 1)
            skipping, chunk = None, chunk[nl + 1:]
        lines = (buf + chunk if buf else chunk).split(b"\n")
        buf = lines.pop()
        for line in lines:
            yield len(line) + 1, (line if len(line) < limit else _long(line, len(line) + 1))
        if len(buf) >= limit:
            skipping, buf = _long(buf, len(buf)), b""
    if skipping is not None:
        yield skipping.size, skipping
    elif buf:
        yield len(buf), buf


def iter_text_rows(fh: Any, fmt: str, at_start: bool) -> Iterator[tuple[int, Any]]:
    """(bytes consumed after this row, row) over a text stream: a line (bytes) for txt/jsonl, a record
    (list of str) for csv/tsv, or a LongLine for an over-long one. At the file start a BOM is skipped, and
    for csv/tsv the header is the first row yielded. Blank jsonl lines and empty csv records are not rows.
    One definition of "row", shared by the planner's scan (which records offsets) and the worker's read
    (which seeks to one)."""
    lines = _positions(fh, at_start)
    if fmt in ("csv", "tsv"):
        yield from _csv_records(lines, "," if fmt == "csv" else "\t")
        return
    for pos, line in lines:
        if isinstance(line, bytes):
            if line.endswith(b"\r"):
                line = line[:-1]
            if fmt == "jsonl" and not line.strip():
                continue
        yield pos, line


def _positions(fh: Any, at_start: bool) -> Iterator[tuple[int, bytes | LongLine]]:
    """Lines with the running byte position after each, a BOM at the file start removed."""
    pos = 0
    for size, line in bounded_lines(fh):
        pos += size
        if at_start:
            at_start = False
            if isinstance(line, bytes) and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
        yield pos, line


def _csv_records(lines: Iterator[tuple[int, bytes | LongLine]], delimiter: str) -> Iterator[tuple[int, Any]]:
    """csv records over bounded lines. An over-long line that starts a record is that record (a LongLine;
    the parser sees an empty line in its place). A record that would grow past MAX_LINE_BYTES across
    lines (a quoted field running into an over-long line, or many lines long) cannot be bounded without
    losing the parser's place: it is a csv.Error, which the scan reports as malformed input."""
    csv.field_size_limit(MAX_LINE_BYTES)
    state: dict[str, Any] = {"pos": 0, "record_bytes": 0, "long": None}

    def feed() -> Iterator[str]:
        for pos, line in lines:
            size, state["pos"] = pos - state["pos"], pos
            if isinstance(line, LongLine) and not state["record_bytes"]:
                state["long"] = line
                yield "\n"  # an empty record in its place, so the parser stays at a record boundary
                continue
            state["record_bytes"] += size
            if isinstance(line, LongLine) or state["record_bytes"] > MAX_LINE_BYTES:
                raise csv.Error(f"a quoted field makes a record longer than {MAX_LINE_BYTES} bytes")
            yield line.decode("utf-8", errors="surrogateescape") + "\n"

    for record in csv.reader(feed(), delimiter=delimiter):
        state["record_bytes"] = 0
        if state["long"] is not None:
            long_line, state["long"] = state["long"], None
            yield state["pos"], long_line
        elif record:
            yield state["pos"], record
