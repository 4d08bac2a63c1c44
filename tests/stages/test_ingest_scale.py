"""Ingest at scale: metadata-only plans, input identity, one-row edits, bucketed dedup, seek points."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editgen.filters.captions import dedup as dd
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import InputError
from editgen.pipeline.runner import run_pipeline
from editgen.pipeline.storage import Storage
from editgen.sources.inputs import discover
from editgen.sources.plan import pack, read_input, read_segment
from editgen.stages.ingest import IngestStage
from tests.support import ROOT, cli_env

WORDS = "red blue green small old new wooden stone cat dog house car tree river lake road bridge boat".split()


def caption(rng: random.Random) -> str:
    return "A " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))


def cfg(inputs: list[str], **ingest):
    return build_config(extra={"ingest": {"input": inputs, **ingest}, "run": {"progress": False},
                               "ray": {"num_cpus": 2}})


def reference_dedup(rows: list[tuple[str, str | None, str | None]]) -> list[str | None]:
    """The old single-process dedup: rows (status, caption key, url key) in global order -> drop reason."""
    seen_c: set[str] = set()
    seen_u: set[str] = set()
    out: list[str | None] = []
    for status, ck, uk in rows:
        if status != "kept":
            out.append(None)
        elif ck in seen_c:
            out.append("duplicate_caption")
        elif uk and uk in seen_u:
            out.append("duplicate_url")
        else:
            out.append(None)
            seen_c.add(ck)
            if uk:
                seen_u.add(uk)
    return out


def bucketed_dedup(tmp: Path, parts: list[list[tuple[str, str | None, str | None]]], buckets: int) -> list:
    """The distributed dedup's steps run in-process: keys files, one conflict pass per bucket, resolve."""
    storage = Storage(str(tmp))
    for pid, rows in enumerate(parts):
        reasons = [None if s == "kept" else "other" for s, _, _ in rows]
        batches = dd.bucket_keys([c for _, c, _ in rows], [u for _, _, u in rows], reasons, buckets, True, True)
        storage.write_bytes(dd.keys_file_bytes(batches), "ingest", dd.KEYS_DIR, dd.keys_name(pid))
    pids = list(range(len(parts)))
    conflicts = [dd.bucket_conflicts(str(tmp), {}, pids, b, buckets, True, True) for b in range(buckets)]
    dd.resolve(str(tmp), {}, *conflicts)
    drops = pq.read_table(tmp / "ingest" / dd.DEDUP_DIR / dd.DROPS_FILE).to_pylist()
    by_o = {d["o"]: d["drop_reason"] for d in drops}
    return [by_o.get((pid << 32) | i) for pid, rows in enumerate(parts) for i in range(len(rows))]


@pytest.mark.parametrize("seed", range(6))
def test_bucketed_dedup_equals_single_process(tmp_path, seed):
    """Dense collisions of captions and URLs (chains where a duplicate_url row's caption must not count
    as seen, and the reverse) resolve exactly as the old two-set pass, for any bucket count."""
    rng = random.Random(seed)
    caps = [f"cap {i}" for i in range(40)]
    urls = [f"http://u/{i}" for i in range(40)] + [None] * 5
    parts = [[(rng.choice(["kept"] * 9 + ["dropped"]), rng.choice(caps), rng.choice(urls))
              for _ in range(rng.randint(0, 60))] for _ in range(8)]
    want = reference_dedup([r for p in parts for r in p])
    assert "duplicate_caption" in want and "duplicate_url" in want
    for buckets in (1, 3, 16):
        assert bucketed_dedup(tmp_path / f"b{buckets}", parts, buckets) == want, buckets


def _published(out: Path) -> list[dict]:
    return [r for p in sorted((out / "ingest").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def _pre_rows(out: Path) -> list[tuple]:
    rows = []
    for p in sorted((out / "ingest" / "_pre").glob("part-*.parquet")):
        t = pq.read_table(p, columns=["status", "caption_key", "url_key"])
        rows += list(zip(t["status"].to_pylist(), t["caption_key"].to_pylist(), t["url_key"].to_pylist(), strict=True))
    return rows


def test_pipeline_dedup_on_laion_matches_reference(ray_session, laion_parquet, tmp_path):
    """The LAION sample plus re-posts of its captions and URLs, across 5 buckets and 23 partitions."""
    src = pq.read_table(laion_parquet, columns=["TEXT", "URL"]).to_pylist()
    rng = random.Random(0)
    extra = [{"TEXT": rng.choice(src)["TEXT"], "URL": f"http://new/{i}"} if rng.random() < 0.5 else
             {"TEXT": f"{rng.choice(src)['TEXT']} and more {i}", "URL": rng.choice([rng.choice(src)["URL"], "http://n"])}
             for i in range(300)]
    pq.write_table(pa.Table.from_pylist(src + extra), tmp_path / "laion_reposts.parquet", row_group_size=128)
    out = tmp_path / "out"
    run_pipeline(cfg([str(tmp_path / "laion_reposts.parquet")], rows_per_partition=57, dedup_buckets=5), str(out),
                 only="ingest")
    got = [r["drop_reason"] if r["drop_reason"] in ("duplicate_caption", "duplicate_url") else None
           for r in _published(out)]
    want = reference_dedup(_pre_rows(out))
    assert got == want
    assert want.count("duplicate_caption") > 100 and want.count("duplicate_url") > 100


def _write_caps(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"TEXT": f"{caption(rng)} {seed}-{i}", "URL": f"http://x/{seed}/{i}"}) + "\n"
                            for i in range(n)))


def _state(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted((out / "ingest").rglob("*")) if p.is_file() and p.name != "_stage.json"}


def test_input_identity_not_spelling(ray_session, tmp_path, monkeypatch):
    """./caps.jsonl, caps.jsonl, an absolute path and a glob are the same input: nothing recomputed or
    rewritten. A different input is refused, naming the old one, unless --from ingest."""
    src = tmp_path / "in"
    src.mkdir()
    _write_caps(src / "caps.jsonl", 60, 1)
    monkeypatch.chdir(src)
    out = tmp_path / "out"
    first = run_pipeline(cfg(["./caps.jsonl"], rows_per_partition=25), str(out), only="ingest").stages[0]
    assert first.computed == 3
    before = _state(out)
    for spelling in ("caps.jsonl", str(src / "caps.jsonl"), str(src / "*.jsonl"), f"file://{src}", str(src)):
        again = run_pipeline(cfg([spelling], rows_per_partition=25), str(out), only="ingest").stages[0]
        assert again.computed == 0 and not again.note, spelling
    assert _state(out) == before
    _write_caps(src / "other.jsonl", 30, 2)
    with pytest.raises(InputError, match=r"was built from --input \./caps\.jsonl .*other\.jsonl is a different input"):
        run_pipeline(cfg(["other.jsonl"], rows_per_partition=25), str(out), only="ingest")
    assert _state(out) == before, "a refused input must not touch OUT"
    replaced = run_pipeline(cfg(["other.jsonl"], rows_per_partition=25), str(out), from_stage="ingest",
                            to_stage="ingest").stages[0]
    assert replaced.rows_in == 30 and {r["source"] for r in _published(out)} == {"other.jsonl"}


def test_cli_refuses_a_different_input(ray_address, tmp_path):
    _write_caps(tmp_path / "a.jsonl", 20, 1)
    _write_caps(tmp_path / "b.jsonl", 20, 2)
    out = tmp_path / "out"
    base = [sys.executable, "-m", "editgen.cli.main", "run", "--only", "ingest", "--out", str(out), "--no-progress",
            "-q",
            "--ray-address", ray_address]
    assert subprocess.run(base + ["--input", str(tmp_path / "a.jsonl")], cwd=ROOT, env=cli_env(),
                          capture_output=True, timeout=300).returncode == 0
    proc = subprocess.run(base + ["--input", str(tmp_path / "b.jsonl")], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "a.jsonl" in lines[0] and "--from ingest" in lines[0]


def test_one_row_edit_recomputes_one_partition(ray_session, tmp_path):
    """Five files, one partition each: editing one row of one file recomputes and republishes only its
    partition; every other partition file is left untouched."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        _write_caps(src / f"f{i}.jsonl", 40, i)
    out = tmp_path / "out"
    run_pipeline(cfg([str(src)], rows_per_partition=40), str(out), only="ingest")
    before = _state(out)
    lines = (src / "f3.jsonl").read_text().splitlines()
    lines[7] = json.dumps({"TEXT": "A brand new caption about a yellow boat", "URL": "http://edited"})
    (src / "f3.jsonl").write_text("\n".join(lines) + "\n")
    st = run_pipeline(cfg([str(src)], rows_per_partition=40), str(out), only="ingest").stages[0]
    assert st.computed == 1
    after = _state(out)
    changed = sorted(k for k in after if before.get(k) != after[k] and "_scan" not in k)
    assert changed == ["ingest/_dedup/_done/global.json", "ingest/_dedup/drops.parquet", "ingest/_done/part-00003.json",
                       "ingest/_keys/part-00003.arrow", "ingest/_pre/_done/part-00003.json",
                       "ingest/_pre/part-00003.parquet", "ingest/part-00003.parquet"]
    assert "yellow boat" in [r["caption"] for r in _published(out)][3 * 40 + 7]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_one_row_edit_in_one_big_file_recomputes_one_partition(ray_session, tmp_path, fmt):
    """One file, five partitions: the edit moves the file's mtime (every partition key), but only the
    partition whose rows changed is recomputed; the others keep their output files untouched."""
    src = tmp_path / f"caps.{fmt}"
    _write_caps(tmp_path / "caps.jsonl", 200, 9)
    rows = [json.loads(line) for line in (tmp_path / "caps.jsonl").read_text().splitlines()]

    def write(rows: list[dict]) -> None:
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=40)
        else:
            src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(rows)
    out = tmp_path / "out"
    run_pipeline(cfg([str(src)], rows_per_partition=40), str(out), only="ingest")
    before = _state(out)
    rows[130] = {"TEXT": "A brand new caption about a yellow boat", "URL": "http://edited"}
    write(rows)
    st = run_pipeline(cfg([str(src)], rows_per_partition=40), str(out), only="ingest").stages[0]
    assert (st.computed, st.skipped) == (1, 4)
    after = _state(out)
    data = sorted(k for k in after if k.endswith(".parquet") and before.get(k) != after[k] and "_dedup" not in k)
    assert data == ["ingest/_pre/part-00003.parquet", "ingest/part-00003.parquet"]
    assert "yellow boat" in [r["caption"] for r in _published(out)][130]
    # a deleted keys file (dedup input) is never trusted: that partition is recomputed too
    (out / "ingest" / dd.KEYS_DIR / dd.keys_name(1)).unlink()
    rows[131] = {"TEXT": "Another fresh caption about a green bridge", "URL": "http://edited2"}
    write(rows)
    st = run_pipeline(cfg([str(src)], rows_per_partition=40), str(out), only="ingest").stages[0]
    assert st.computed == 2


def test_text_seek_points_read_exactly_the_whole_file(tmp_path):
    """Partitions that start mid-file (past several seek points) read the same rows as one whole-file
    read: jsonl with blank lines, csv with quoted newlines and empty records, txt with a BOM and CRLF."""
    rng = random.Random(3)
    (tmp_path / "a.jsonl").write_text("".join(
        json.dumps({"TEXT": caption(rng), "URL": f"u{i}"}) + ("\n  \n" if i % 97 == 0 else "\n") for i in range(3000)))
    with open(tmp_path / "b.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TEXT", "URL"])
        for i in range(2500):
            w.writerow([caption(rng) + ("\nsecond line" if i % 11 == 0 else ""), f"u{i}"])
            if i % 400 == 0:
                f.write("\r\n")
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbf" + "".join(f"{caption(rng)}\r\n" for _ in range(2200)).encode())
    files = discover([str(tmp_path)])
    stage = IngestStage(cfg([str(tmp_path)]))
    stage.preflight()
    for size in (333, 1024, 5000):
        parts = pack(stage._files, size)
        got = pa.concat_tables([read_segment(s, "TEXT", "URL") for p in parts for s in p.segments])
        want = pa.concat_tables([read_input(f, "TEXT", "URL" if f.fmt != "txt" else None) for f in files])
        assert got.equals(want), size
        assert max(p.rows for p in parts) <= size
