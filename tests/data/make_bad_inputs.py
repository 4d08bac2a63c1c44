"""Write the bad-input corpus of tests/pipeline/test_bad_inputs.py into tests/data/bad_inputs/.

    python tests/data/make_bad_inputs.py            # (re)write the committed small files
    python tests/data/make_bad_inputs.py DIR --large  # also the 1-2 MB-line files (tests write them to tmp)

Every file is deterministic. Whole-input problems (nothing usable: empty, wrong schema, TEXT not a string
column) must end a run with one line and exit code 2; row problems (bad encoding, junk, duplicates, huge
or nested values) must become per-row drop reasons with exact accounting. The expected outcome of each
file lives in tests/pipeline/test_bad_inputs.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent / "bad_inputs"
GOOD = [
    "a red car parked on a quiet street",
    "a small dog running through the park",
    "an old stone bridge over a river in autumn",
]
#: Latin-1 bytes that are not valid UTF-8 ("café crème au lait" with é/è as single bytes).
LATIN1 = "a café crème with milk foam on a table".encode("latin-1")
#: A surrogate code point spelled in UTF-8 bytes (CESU-8): not valid UTF-8 either.
SURROGATE_BYTES = b"a red car \xed\xa0\x80 parked outside"
HUGE_CHARS = 1_000_000
#: Lines over the readers' line bound (sources.textrows.MAX_LINE_BYTES, 1 MiB): never held whole.
LONG_BYTES = 2 * 2**20 + 5


def _jsonl(rows: list[object]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in rows)


def _parquet(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path, compression="none")


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _table(columns: dict[str, pa.Array]) -> Callable[[Path], None]:
    return lambda p: _parquet(p, pa.table(columns))


def _invalid_utf8_strings(path: Path) -> None:
    """A parquet *string* column holding bytes that are not UTF-8, as other writers can leave it (arrow
    validates its own strings, so the values are written valid and patched in place, same length)."""
    swaps = {"a café crème on a table": b"a caf\xe9  cr\xe8 me on a table",
             "http://x.invalid/caf\u00e9.jpg": b"http://x.invalid/caf\xe9 .jpg"}
    table = pa.table({"TEXT": pa.array([GOOD[0], "a café crème on a table", GOOD[1]]),
                      "URL": pa.array(["http://x.invalid/0", "http://x.invalid/1", "http://x.invalid/café.jpg"])})
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)
    data = path.read_bytes()
    for good, bad in swaps.items():
        assert data.count(good.encode()) == 1 and len(good.encode()) == len(bad), good
        data = data.replace(good.encode(), bad)
    path.write_bytes(data)


SMALL: dict[str, Callable[[Path], None]] = {
    # ---- whole-input problems: exit code 2, one line -------------------------------------------------
    "empty.jsonl": _bytes(b""),
    "blank_lines.jsonl": _bytes(b"\n   \n\r\n\n"),
    "empty.csv": _bytes(b""),
    "header_only.csv": _bytes(b"TEXT,URL\r\n"),
    "empty.txt": _bytes(b""),
    "empty_rows.parquet": _table({"TEXT": pa.array([], pa.string()), "URL": pa.array([], pa.string())}),
    "zero_bytes.parquet": _bytes(b""),
    "wrong_schema.jsonl": _bytes(_jsonl([{"caption": c, "url": f"http://x.invalid/{i}"} for i, c in enumerate(GOOD)])),
    "wrong_schema.csv": _bytes(
        b"caption,url\n" + b"".join(f"{c},http://x.invalid/{i}\n".encode() for i, c in enumerate(GOOD))
    ),
    "wrong_schema.parquet": _table({"caption": pa.array(GOOD), "url": pa.array(["u"] * 3)}),
    "text_is_int.parquet": _table({"TEXT": pa.array([1, 2, 3], pa.int64()), "URL": pa.array(["u1", "u2", "u3"])}),
    "nested_text_struct.parquet": _table({
        "TEXT": pa.array([{"en": c, "de": None} for c in GOOD]),
        "URL": pa.array(["u1", "u2", "u3"]),
    }),
    "nested_text_list.parquet": _table({"TEXT": pa.array([[c] for c in GOOD]), "URL": pa.array(["u1", "u2", "u3"])}),
    "json_array.json": _bytes(json.dumps([{"TEXT": c} for c in GOOD], indent=2).encode()),
    "not_captions.xml": _bytes(b"<captions><c>a red car</c></captions>\n"),
    # ---- row problems: per-row drop reasons -------------------------------------------------------
    "wrong_types.jsonl": _bytes(_jsonl([
        {"TEXT": GOOD[0], "URL": "http://x.invalid/0"},
        {"TEXT": 42},
        {"TEXT": ["a", "list", "of", "words"]},
        {"TEXT": {"nested": "object"}},
        {"TEXT": None},
        {"TEXT": True},
        {"URL": "http://x.invalid/no-text"},
        ["not", "an", "object"],
        {"TEXT": GOOD[1], "URL": {"nested": "url"}},
    ])),
    "not_json.jsonl": _bytes(
        _jsonl([{"TEXT": GOOD[0]}]) + b"{\"TEXT\": \"truncated\n" + b"this is not json\n" + b"\x00\x01\x02\n"
        + _jsonl([{"TEXT": GOOD[1]}])
    ),
    "mixed_encoding.jsonl": _bytes(
        _jsonl([{"TEXT": GOOD[0]}]) + b'{"TEXT": "' + LATIN1 + b'"}\n' + _jsonl([{"TEXT": GOOD[1]}])
    ),
    "mixed_encoding.csv": _bytes(
        b"TEXT,URL\n" + GOOD[0].encode() + b",http://x.invalid/0\n" + LATIN1 + b",http://x.invalid/1\n"
        + GOOD[1].encode() + b",http://x.invalid/2\n"
    ),
    "mixed_encoding.txt": _bytes(GOOD[0].encode() + b"\n" + LATIN1 + b"\n" + GOOD[1].encode() + b"\n"),
    "mixed_encoding.parquet": _table({
        "TEXT": pa.array([GOOD[0].encode(), LATIN1, GOOD[1].encode()], pa.binary()),
        "URL": pa.array(["u1", "u2", "u3"]),
    }),
    "html_script.jsonl": _bytes(_jsonl([
        {"TEXT": "<script>alert('pwned')</script>"},
        {"TEXT": "<script>document.cookie</script> a red car parked on a quiet street"},
        {"TEXT": "<b>a small dog</b> running through the <i>park</i>"},
        {"TEXT": "an old bridge &amp; a river &lt;script&gt;alert(1)&lt;/script&gt; in autumn"},
        {"TEXT": "<img src=x onerror=\"alert(1)\"> a white house near the lake"},
        {"TEXT": "function() { return document.body.innerHTML; }"},
    ])),
    "rtl_zero_width.jsonl": _bytes(_jsonl([
        {"TEXT": "a red\u200b car parked\u200d on a quiet\ufeff street"},
        {"TEXT": "\u202ea small dog running\u202c through the park\u2066"},
        {"TEXT": "قطة صغيرة تنام على الأريكة الرمادية في الصباح"},
        {"TEXT": "כלב קטן רץ בפארק בבוקר שמשי"},
        {"TEXT": "\u200b\u200c\u200d\u2060\ufeff"},
        {"TEXT": "an old stone bridge \u200fover a river\u200e in autumn"},
    ])),
    "duplicates.jsonl": _bytes(_jsonl([
        {"id": "same", "TEXT": GOOD[0], "URL": "http://x.invalid/a.jpg"},
        {"id": "same", "TEXT": GOOD[0], "URL": "http://x.invalid/a.jpg"},
        {"id": "same", "TEXT": GOOD[0].upper() + "!!", "URL": "http://x.invalid/other.jpg"},
        {"id": "same", "TEXT": GOOD[1], "URL": "http://x.invalid/a.jpg"},
        {"id": "other", "TEXT": GOOD[2], "URL": "http://x.invalid/c.jpg"},
    ])),
    "nested_columns.parquet": _table({
        "TEXT": pa.array(GOOD),
        "URL": pa.array(["http://x.invalid/1", "http://x.invalid/2", "http://x.invalid/3"]),
        "meta": pa.array([{"w": 512, "h": 512, "tags": ["a"]}, {"w": 1, "h": None, "tags": []}, None]),
        "embedding": pa.array([[0.1, 0.2], [], None], pa.list_(pa.float32())),
        "exif": pa.array([[("k", "v")], [], None], pa.map_(pa.string(), pa.string())),
    }),
    "nested_url.parquet": _table({
        "TEXT": pa.array(GOOD),
        "URL": pa.array([{"href": "http://x.invalid/1"}, None, {"href": None}]),
    }),
    "null_text.parquet": _table({"TEXT": pa.array([None, GOOD[0], None], pa.string()),
                                 "URL": pa.array([None, None, None], pa.string())}),
    "ragged.csv": _bytes(
        b"TEXT,URL,extra\n" + GOOD[0].encode() + b"\n" + GOOD[1].encode() + b",http://x.invalid/1,x,y,z\n"
        + b"\n" + b'"' + GOOD[2].encode() + b' with ""quotes"", and a comma",http://x.invalid/2,\n'
    ),
    "nul_bytes.csv": _bytes(b"TEXT,URL\n" + GOOD[0].encode() + b",u1\na red\x00car on the road,u2\n"),
    "bom_crlf.csv": _bytes(b"\xef\xbb\xbfTEXT,URL\r\n" + GOOD[0].encode() + b",u1\r\n" + GOOD[1].encode() + b",u2\r\n"),
    # JSON can spell code points that no UTF-8 text holds: a lone surrogate, a pair in the wrong order.
    # In TEXT or URL the row is dropped (invalid_utf8); in a field the readers do not keep, nothing happens.
    "lone_surrogate.jsonl": _bytes(b"".join(line + b"\n" for line in [
        b'{"TEXT": "a red car parked on a quiet street", "URL": "http://x.invalid/0"}',
        b'{"TEXT": "\\ud800"}',
        b'{"TEXT": "a small dog \\udc00\\ud800 running through the park"}',
        b'{"TEXT": "an old stone bridge over a river in autumn", "URL": "http://x.invalid/\\udfff.jpg"}',
        b'{"TEXT": "a white house near the lake at sunset", "URL": "\\ud83d"}',
        b'{"TEXT": "a green tractor \\ud83d\\ude9c working in a wide field"}',
        b'{"TEXT": {"nested": "\\ud800"}}',
        b'{"id": "\\ud800", "\\udc00": 1, "TEXT": "a blue boat on a calm lake", "URL": {"href": "\\ud800"}}',
    ])),
    "surrogate_bytes.txt": _bytes(GOOD[0].encode() + b"\n" + SURROGATE_BYTES + b"\n" + GOOD[1].encode() + b"\n"),
    "bad_utf8_url.csv": _bytes(
        b"TEXT,URL\n" + GOOD[0].encode() + b",http://x.invalid/0\n" + GOOD[1].encode() + b",http://x.invalid/caf\xe9\n"
        + GOOD[2].encode() + b",http://x.invalid/\xed\xa0\x80\n" + SURROGATE_BYTES + b",http://x.invalid/3\n"
    ),
    "invalid_utf8_strings.parquet": _invalid_utf8_strings,
}

LARGE: dict[str, Callable[[Path], None]] = {
    "huge_caption.jsonl": _bytes(_jsonl([{"TEXT": GOOD[0]}, {"TEXT": "a red car " * (HUGE_CHARS // 10)},
                                         {"TEXT": GOOD[1]}])),
    "huge_caption.csv": _bytes(b"TEXT,URL\n" + GOOD[0].encode() + b",u\n" + b"word " * (HUGE_CHARS // 5) + b",u2\n"),
    "huge_caption.txt": _bytes(GOOD[0].encode() + b"\n" + b"x" * HUGE_CHARS + b"\n"),
    "huge_caption.parquet": _table({"TEXT": pa.array([GOOD[0], "y" * HUGE_CHARS]), "URL": pa.array(["u", "u2"])}),
    # lines over the line bound, in the middle and last without a newline
    "long_line.txt": _bytes(GOOD[0].encode() + b"\n" + b"x" * LONG_BYTES + b"\n" + GOOD[1].encode() + b"\n"
                            + b"z" * LONG_BYTES),
    "long_line.jsonl": _bytes(_jsonl([{"TEXT": GOOD[0]}, {"TEXT": "a red car " * (LONG_BYTES // 10), "URL": "u"},
                                      {"TEXT": GOOD[1]}])),
    "long_line.csv": _bytes(b"TEXT,URL\n" + GOOD[0].encode() + b",u\n" + b'"' + b"word, " * (LONG_BYTES // 6)
                            + b'",u2\n' + GOOD[1].encode() + b",u3\n"),
    "long_line.tsv": _bytes(b"URL\tTEXT\n" + b"u\t" + GOOD[0].encode() + b"\nu2\t" + b"w\t" * (LONG_BYTES // 2)
                            + b"\n" + b"u3\t" + GOOD[1].encode() + b"\n"),
}


def write_all(directory: Path, large: bool = False) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, make in {**SMALL, **(LARGE if large else {})}.items():
        make(directory / name)
        out.append(directory / name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(HERE))
    parser.add_argument("--large", action="store_true", help="also the 1-2 MB-line files")
    args = parser.parse_args(argv)
    for p in write_all(Path(args.directory), args.large):
        print(p)


if __name__ == "__main__":
    main()
