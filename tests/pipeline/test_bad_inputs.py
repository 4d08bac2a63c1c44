"""Bad input through the CLI (`editgen run --only ingest`): the corpus in tests/data/bad_inputs/ (written
by tests/data/make_bad_inputs.py; its 1 MB-caption files are written to a temp dir at test time).

Whole-input problems end the run with one `editgen:` line naming the file, exit code 2 and nothing
written to OUT. Row problems become per-row drop reasons, and `editgen status --json` accounts for every
row: rows_in = kept + dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.pipeline.errors import InputError, OutputError
from editgen.pipeline.storage import Storage
from tests.data import make_bad_inputs
from tests.support import ROOT, cli_env

CORPUS = ROOT / "tests" / "data" / "bad_inputs"

#: file -> words the one-line error must contain (besides the file's path)
WHOLE_INPUT = {
    "empty.jsonl": "input is empty (0 rows)",
    "blank_lines.jsonl": "input is empty (0 rows)",
    "empty.csv": "input is empty (no header row)",
    "header_only.csv": "input is empty (0 rows)",
    "empty.txt": "input is empty (0 rows)",
    "empty_rows.parquet": "input is empty (0 rows)",
    "zero_bytes.parquet": "not a readable parquet file",
    "wrong_schema.jsonl": "no record has the field 'TEXT'",
    "wrong_schema.csv": "column 'TEXT' not found (columns: caption, url)",
    "wrong_schema.parquet": "column 'TEXT' not found (columns: caption, url)",
    "text_is_int.parquet": "column 'TEXT' has type int64, expected a string column",
    "nested_text_struct.parquet": "column 'TEXT' has type struct<",
    "nested_text_list.parquet": "column 'TEXT' has type list<",
    "json_array.json": "not JSON lines",
    "not_captions.xml": "unknown input format",
}

#: A file name of bytes that are not UTF-8 (written at test time), and how the `source` column spells it.
NON_UTF8_NAME = "caps-\\xff.txt"
NON_UTF8_FILE = os.fsdecode(b"caps-\xff.txt")
#: file -> (rows, {drop reason: rows}) with dedup off (the duplicates file has its own test)
ROW_PROBLEMS = {
    "wrong_types.jsonl": (9, {"not_text": 4, "empty": 2, "invalid_json": 1}),
    "not_json.jsonl": (5, {"invalid_json": 3}),
    "mixed_encoding.jsonl": (3, {"invalid_utf8": 1}),
    "mixed_encoding.csv": (3, {"invalid_utf8": 1}),
    "mixed_encoding.txt": (3, {"invalid_utf8": 1}),
    "mixed_encoding.parquet": (3, {"invalid_utf8": 1}),
    "html_script.jsonl": (6, {"empty": 1}),
    "rtl_zero_width.jsonl": (6, {"not_english": 2, "empty": 1}),
    "nested_columns.parquet": (3, {}),
    "nested_url.parquet": (3, {}),
    "null_text.parquet": (3, {"empty": 2}),
    "ragged.csv": (3, {}),
    "nul_bytes.csv": (2, {}),
    "bom_crlf.csv": (2, {}),
    "huge_caption.jsonl": (3, {"too_long": 1}),
    "huge_caption.csv": (2, {"too_long": 1}),
    "huge_caption.txt": (2, {"too_long": 1}),
    "huge_caption.parquet": (2, {"too_long": 1}),
    # issue 19 item 8: text no UTF-8 can hold, in TEXT or URL, in every reader
    "lone_surrogate.jsonl": (8, {"invalid_utf8": 4, "not_text": 1}),
    "surrogate_bytes.txt": (3, {"invalid_utf8": 1}),
    "bad_utf8_url.csv": (4, {"invalid_utf8": 3}),
    "invalid_utf8_strings.parquet": (3, {"invalid_utf8": 2}),
    NON_UTF8_NAME: (2, {}),
    # issue 19 item 9: lines over the line bound (2 MiB) in every text format
    "long_line.txt": (4, {"too_long": 2}),
    "long_line.jsonl": (3, {"too_long": 1}),
    "long_line.csv": (3, {"too_long": 1}),
    "long_line.tsv": (3, {"too_long": 1}),
}
INVISIBLE = "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"


def run(*args: str, out: Path, ray_address: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--only", "ingest", "--out", str(out), "--no-progress",
           "-q", *args]
    if ray_address:
        cmd += ["--ray-address", ray_address]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)


def status(out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "editgen.cli.main", "status", str(out), "--json"], cwd=ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "ingest")


def ingest_rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "ingest").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_corpus_matches_its_generator(tmp_path):
    """The committed files are exactly what the script writes (parquet compared as tables)."""
    make_bad_inputs.write_all(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in CORPUS.iterdir())
    for name in names:
        if name.endswith(".parquet") and (tmp_path / name).stat().st_size:
            assert pq.read_table(tmp_path / name).equals(pq.read_table(CORPUS / name)), name
        else:
            assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 100_000, "keep the committed corpus small"


@pytest.mark.parametrize("name", sorted(WHOLE_INPUT))
def test_whole_input_problem_is_one_line_exit_2(name, tmp_path):
    out = tmp_path / "out"
    proc = run("--input", str(CORPUS / name), out=out)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"editgen: {CORPUS / name}: ") and WHOLE_INPUT[name] in lines[0], lines[0]
    assert not out.exists(), "nothing may be written for a bad input"


def test_one_bad_file_among_good_ones_fails_the_whole_input(tmp_path):
    out = tmp_path / "out"
    proc = run("--input", str(CORPUS / "bom_crlf.csv"), "--input", str(CORPUS / "nested_text_list.parquet"),
               out=out)
    assert proc.returncode == 2 and "nested_text_list.parquet" in proc.stderr and not out.exists()


@pytest.fixture(scope="module")
def row_run(tmp_path_factory, ray_address) -> Path:
    """Every row-problem file in one ingest run (dedup off: the files share captions on purpose)."""
    tmp = tmp_path_factory.mktemp("bad_rows")
    large = tmp / "large"
    make_bad_inputs.write_all(large, large=True)
    (large / "names").mkdir()  # found by listing a folder (named on the command line, it is a config error)
    (large / "names" / NON_UTF8_FILE).write_bytes(f"{make_bad_inputs.GOOD[0]}\n{make_bad_inputs.GOOD[2]}\n".encode())
    inputs = []
    for name in ROW_PROBLEMS:
        path = large / "names" if name == NON_UTF8_NAME else large / name if name.startswith(("huge_", "long_")) \
            else CORPUS / name
        inputs += ["--input", str(path)]
    out = tmp / "out"
    proc = run(*inputs, "--set", "ingest.dedup_captions=false", "--set", "ingest.dedup_urls=false", out=out,
               ray_address=ray_address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_row_problems_are_dropped_with_reasons_and_accounted(row_run):
    rows = ingest_rows(row_run)
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    assert sorted(by_source) == sorted(ROW_PROBLEMS)
    for name, (n, drops) in ROW_PROBLEMS.items():
        got = by_source[name]
        assert len(got) == n, name
        reasons = Counter(r["drop_reason"] for r in got if r["status"] == "dropped")
        assert dict(reasons) == drops, name
        assert all(r["status"] == "kept" or r["drop_reason"] for r in got), name
        assert len({r["id"] for r in got}) == n, name
    st = status(row_run)
    total = sum(n for n, _ in ROW_PROBLEMS.values())
    assert st["complete"] and st["rows_in"] == total == st["rows_out"] + st["rows_dropped"] == len(rows)
    want: Counter = Counter()
    for _, drops in ROW_PROBLEMS.values():
        want.update(drops)
    assert st["dropped"] == dict(want)
    assert len({r["id"] for r in rows}) == total


def test_kept_captions_are_clean(row_run):
    kept = [r for r in ingest_rows(row_run) if r["status"] == "kept"]
    assert kept
    for r in kept:
        cap = r["caption"]
        assert "<" not in cap and ">" not in cap, cap
        assert "script" not in cap.lower() and "alert" not in cap and "cookie" not in cap, cap
        assert not any(ch in cap for ch in INVISIBLE), repr(cap)
        assert "\x00" not in cap and len(cap) <= 400
    html = {r["caption"] for r in kept if r["source"] == "html_script.jsonl"}
    assert "a small dog running through the park" in html and "a red car parked on a quiet street" in html
    rtl = {r["caption"] for r in kept if r["source"] == "rtl_zero_width.jsonl"}
    assert rtl == {"a red car parked on a quiet street", "a small dog running through the park",
                   "an old stone bridge over a river in autumn"}


def test_huge_captions_stay_small_on_disk(row_run):
    """A 1 MB caption or a 2 MiB line is dropped as too_long and only a prefix of it is kept for tracing."""
    huge = [r for r in ingest_rows(row_run) if r["drop_reason"] == "too_long"]
    assert len(huge) == 9 and all(0 < len(r["caption_raw"] or "") <= 2048 for r in huge)
    prefixes = sorted((r["source"], r["caption_raw"][:12]) for r in huge if r["source"].startswith("long_line"))
    assert prefixes == [("long_line.csv", '"word, word,'), ("long_line.jsonl", '{"TEXT": "a '),
                        ("long_line.tsv", "u2\tw\tw\tw\tw\tw"), ("long_line.txt", "x" * 12),
                        ("long_line.txt", "z" * 12)]
    assert sum(p.stat().st_size for p in (row_run / "ingest").rglob("*.parquet")) < 1_000_000


def test_duplicate_rows_and_same_named_files(ray_address, tmp_path):
    """Duplicates (same caption up to case/punctuation, same URL, same `id` field) are dropped in input
    order; two different files with the same name get different row ids."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "caps.jsonl").write_bytes((CORPUS / "duplicates.jsonl").read_bytes())
    (b / "caps.jsonl").write_bytes((CORPUS / "mixed_encoding.jsonl").read_bytes())
    out = tmp_path / "out"
    proc = run("--input", str(a / "caps.jsonl"), "--input", str(b / "caps.jsonl"), out=out, ray_address=ray_address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = ingest_rows(out)
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8, "same-named files must not share row ids"
    first = [r for r in rows if r["source"] == "caps.jsonl"]
    assert [r["drop_reason"] for r in first] == [None, "duplicate_caption", "duplicate_caption", "duplicate_url",
                                                 None]
    second = [r for r in rows if r["source"] != "caps.jsonl"]
    # b's good captions repeat a's: first occurrence (in a) wins
    assert [r["drop_reason"] for r in second] == ["duplicate_caption", "invalid_utf8", None]
    st = status(out)
    assert st["rows_in"] == 8 == st["rows_out"] + st["rows_dropped"]
    assert st["dropped"] == {"duplicate_caption": 3, "duplicate_url": 1, "invalid_utf8": 1}


def test_unencodable_text_and_urls_are_dropped_not_fatal(row_run):
    """Lone surrogates (JSON escapes), surrogate bytes, latin-1 and invalid UTF-8 in a parquet *string* column:
    the row is dropped as invalid_utf8 whether the TEXT or the URL holds it (used to fail the partition on
    every attempt); a correct pair is text, and fields the readers do not keep do not matter."""
    rows = {(r["source"], r["source_row"]): r for r in ingest_rows(row_run)}
    lone = [rows["lone_surrogate.jsonl", i] for i in range(8)]
    assert [r["drop_reason"] for r in lone] == [None, "invalid_utf8", "invalid_utf8", "invalid_utf8", "invalid_utf8",
                                                None, "not_text", None]
    assert lone[5]["caption"] == "a green tractor \U0001f69c working in a wide field"
    assert lone[3]["caption_raw"] == "an old stone bridge over a river in autumn" and lone[3]["url"] is None
    assert lone[7]["url"] is None and lone[7]["caption"] == "a blue boat on a calm lake"
    parquet = [rows["invalid_utf8_strings.parquet", i]["drop_reason"] for i in range(3)]
    assert parquet == [None, "invalid_utf8", "invalid_utf8"]
    assert rows[NON_UTF8_NAME, 0]["status"] == "kept"


BIG_MIB = 64
MEASURE = r"""
import json, sys
import pyarrow as pa
from editgen.sources.inputs import read_text_rows
from editgen.sources.scan import scan_text
pa.table({"a": pa.array(["x"], pa.large_string())})  # arrow's allocator takes ~35 MiB on first use, any size


def rss(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))


side, files = sys.argv[1], json.loads(sys.argv[2])
try:  # reset the peak to now, so imports do not count (Linux >= 4.0); else the measure only overstates
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = rss("VmRSS")
out = {}
for path, fmt, rows, offset in files:
    url_col = None if fmt == "txt" else "URL"
    if side == "driver":
        info = scan_text(path, fmt, "TEXT", url_col)
        out[fmt] = [info.rows, info.checkpoints[0]]
    else:
        table = read_text_rows(path, "big", fmt, "TEXT", url_col, offset, 0, 0, rows)
        out[fmt] = [table["raw_error"].to_pylist(), max(len(t or "") for t in table["text"].to_pylist())]
print(json.dumps({"peak_mib": (rss("VmHWM") - base) / 1024, "out": out}))
"""


def _peak(side: str, files: list) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, side, json.dumps(files)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_a_line_without_newlines_costs_bounded_memory(tmp_path):
    """A 64 MiB caption with no newline (txt, jsonl, csv): the driver's scan and the worker's read each hold
    at most a bounded prefix of it (the old readers held ~4x the line: 256 MiB here); the row is too_long."""
    good = make_bad_inputs.GOOD[0].encode()
    body = b"a red car " * (BIG_MIB * 2**20 // 10)
    files = {"txt": good + b"\n" + body + b"\n" + good + b"\n",
             "jsonl": b'{"TEXT": "' + good + b'"}\n{"URL": "u", "TEXT": "' + body + b'"}\n{"TEXT": "' + good + b'"}\n',
             "csv": b"TEXT,URL\n" + good + b",u\n" + body + b",u2\n" + good + b",u3\n"}
    for fmt, data in files.items():
        (tmp_path / f"big.{fmt}").write_bytes(data)
    driver = _peak("driver", [[str(tmp_path / f"big.{fmt}"), fmt, 0, 0] for fmt in files])
    assert driver["out"] == {"txt": [3, 0], "jsonl": [3, 0], "csv": [3, 9]}
    worker = _peak("worker", [[str(tmp_path / f"big.{fmt}"), fmt, 3, driver["out"][fmt][1]] for fmt in files])
    for fmt in files:
        assert worker["out"][fmt] == [[None, "too_long", None], 8192], fmt
    print(f"peak memory over a {BIG_MIB} MiB line: driver scan +{driver['peak_mib']:.1f} MiB, "
          f"worker read +{worker['peak_mib']:.1f} MiB")
    assert driver["peak_mib"] < 16 and worker["peak_mib"] < 16, (driver, worker)


def test_csv_quoted_field_past_the_line_bound_is_one_line(tmp_path):
    """A quoted csv field that runs across lines into an over-long one cannot be parsed in bounded memory
    without losing the parser's place: the file is refused with one line naming the row."""
    from editgen.sources.scan import scan_text

    bad = tmp_path / "quoted.csv"
    bad.write_bytes(b'TEXT,URL\na red car,u\n"a field that opens\n' + b"w " * 2**20 + b'\nand closes",u2\n')
    with pytest.raises(InputError, match=r"quoted.csv: row 3: malformed ','-separated data \(a quoted field makes a "
                                         r"record longer than 1048576 bytes\)"):
        scan_text(str(bad), "csv", "TEXT", "URL")


@pytest.mark.parametrize("command", ["run", "status", "validate", "preview", "export-hf", "export-hf-dest", "nested"])
def test_out_naming_a_regular_file_is_one_line(tmp_path, capsys, command):
    """OUT (or export-hf's DEST, or a folder above OUT) that is an existing regular file: one line, exit 2,
    nothing written (each used to end in a NotADirectoryError traceback)."""
    from editgen.cli.main import main

    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    args = {"run": ["run", "--input", str(CORPUS / "bom_crlf.csv"), "--out", str(afile), "-q"],
            "status": ["status", str(afile)], "validate": ["validate", str(afile)], "preview": ["preview", str(afile)],
            "export-hf": ["export-hf", str(afile), str(tmp_path / "dest")],
            "export-hf-dest": ["export-hf", str(tmp_path), str(afile)],
            "nested": ["run", "--input", str(CORPUS / "bom_crlf.csv"), "--out", str(afile / "sub" / "out")]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = (f"{afile / 'sub' / 'out'}: cannot be an output directory: {afile} is a file" if command == "nested"
            else f"{afile}: is a file, not an {'export' if command == 'export-hf-dest' else 'output'} directory")
    assert err == [f"editgen: {want}"]
    assert afile.read_text() == "not a directory\n" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_naming_an_object_store_file_is_one_line():
    """The same on an object store (fsspec's memory store stands in for S3: same fs.isfile call)."""
    store = Storage("memory://i19-out-file")
    store.fs.pipe_file(store.root_path, b"x")
    with pytest.raises(OutputError, match=r"memory://i19-out-file: is an object \(a file\), not an output directory"):
        store.check_not_a_file()
    Storage("memory://i19-out-dir").check_not_a_file()
