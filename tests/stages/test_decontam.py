"""Decontamination (ingest.exclude, ingest.canary) and run-wide image near-duplicate removal (issue 24
items 4, 5): the pHash's robustness, the banded search against brute force across partitions, planted
benchmark captions/URLs/images dropped and nothing else through the runner, an edited benchmark file
recomputing what it keys, and a bad benchmark file as one line, exit 2."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from editgen.cli.main import main as cli_main
from editgen.filters.images import neardup as nd
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import InputError
from editgen.pipeline.runner import run_pipeline
from editgen.pipeline.settings.fetch import FetchConfig
from editgen.pipeline.settings.ingest import IngestConfig
from editgen.pipeline.stage import KEPT, part_name
from editgen.pipeline.storage import Storage
from editgen.sources.exclude import load_exclude
from editgen.sources.phash import hamming, phash, phash_bytes, to_hex
from editgen.stages.ingest import IngestStage
from tests.image_server import ImageServer

NEAR = FetchConfig().near_dup_distance
BENCH = IngestConfig().exclude_distance
FAST = {"timeout": 2, "max_seconds": 5, "retries": 0, "backoff": 0.01, "threads": 4}


def scene(seed: int, w: int = 320, h: int = 240) -> Image.Image:
    """A structured picture (background and overlapping shapes), unlike noise in how it compresses."""
    r = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(x) for x in r.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(r.integers(0, w)), int(r.integers(0, h))
        box = [x0, y0, x0 + int(r.integers(w // 8, w // 2)), y0 + int(r.integers(h // 8, h // 2))]
        (draw.rectangle if r.integers(2) else draw.ellipse)(box, fill=tuple(int(x) for x in r.integers(0, 256, 3)))
    return img


def jpeg(img: Image.Image, size: tuple[int, int] | None = None, quality: int = 60) -> bytes:
    buf = io.BytesIO()
    (img.resize(size, Image.Resampling.BILINEAR) if size else img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_phash_survives_resize_and_reencoding_and_separates_pictures():
    assert NEAR is not None and NEAR >= 4 and BENCH >= 4
    hashes = [phash(scene(s)) for s in range(30)]
    for s in range(30):
        for size, quality in ((None, 90), ((160, 120), 60), ((640, 480), 30), ((200, 150), 75)):
            assert hamming(hashes[s], phash_bytes(jpeg(scene(s), size, quality))) <= min(NEAR, BENCH), (s, size)
    assert min(hamming(a, b) for a, b in itertools.combinations(hashes, 2)) > 2 * max(NEAR, BENCH)


def flip(value: int, bits: int, rng: np.random.Generator) -> int:
    for b in rng.choice(64, bits, replace=False).tolist():
        value ^= 1 << b
    return value


def test_banded_search_equals_brute_force_across_partitions(tmp_path):
    """Copies at exactly the distance are found whichever bits moved, one bit further are not; the first
    occurrence wins, a copy of a dropped row is kept only when no kept row is close; benchmark wins; a
    damaged hash file is rebuilt from its partition."""
    rng, d = np.random.default_rng(0), 4
    base = [int(x) for x in rng.integers(0, 2**63, 60, dtype=np.int64)]
    rows = base + [flip(h, d, rng) for h in base[:20]] + [flip(h, d + 1, rng) for h in base[20:40]]
    rows += [base[0], base[59] ^ 0b110]  # an exact copy; a copy (2 bits) of a row the benchmark drops
    bench = np.array([base[59] ^ 0b1], np.uint64)  # 1 bit from row 59, 3 from row 101
    storage, pids, shas = Storage(str(tmp_path)), [], {}
    for pid, start in enumerate(range(0, len(rows), 25)):
        chunk = rows[start:start + 25]
        table = pa.table({"status": [KEPT] * len(chunk), nd.HASH_COLUMN: [to_hex(h) for h in chunk]})
        shas[pid] = storage.write_table(table, "fetch/_pre", part_name(pid))[0]
        pids.append(pid)
    pairs = [nd.bucket_pairs(str(tmp_path), {}, "fetch", "fetch/_pre", pids, shas, bench, d, b, 3) for b in range(3)]
    nd.resolve(str(tmp_path), {}, "fetch", d, 1, *pairs)
    got = dict(zip(*pq.read_table(tmp_path / "fetch" / "_dedup" / "drops.parquet").to_pydict().values(), strict=True))
    ordinal = [(i // 25) << 32 | (i % 25) for i in range(len(rows))]
    want = {ordinal[i]: nd.NEAR_DUP for i in [*range(60, 80), 100]} | {ordinal[59]: nd.BENCHMARK}
    assert got == want
    # the hash files (here rebuilt from the partitions, as when a worker's file is lost) are what the tasks
    # read; a flipped byte in one is found by its digest and rebuilt, never read as other hashes
    damaged = tmp_path / "fetch" / nd.HASHES_DIR / nd.hashes_name(1)
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0x10
    damaged.write_bytes(bytes(data))
    again = [nd.bucket_pairs(str(tmp_path), {}, "fetch", "fetch/_pre", pids, shas, bench, d, b, 3) for b in range(3)]
    assert all((x == y).all() for p, q in zip(pairs, again, strict=True) for x, y in zip(p, q, strict=True))
    assert damaged.read_bytes() != bytes(data)


def write_benchmark(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def served():
    with ImageServer() as s:
        for seed in range(6):
            s.add_image(f"s{seed}.png", scene(seed))
        s.add_image("s0-copy.jpg", jpeg(scene(0), (640, 480), 50), fmt="JPEG")
        yield s


@pytest.mark.slow
def test_planted_benchmark_rows_are_dropped_and_nothing_else(ray_session, served, tmp_path):
    from editgen.cli.status import collect

    things = ("red bicycle", "small wooden boat", "green apple", "old stone bridge", "yellow taxi", "white cat",
              "blue door", "tall lighthouse", "quiet harbour")
    captions = [f"a photo of a {w} on a sunny afternoon" for w in things]
    names = ["s0.png", "s1.png", "s2.png", "s3.png", "s0-copy.jpg", "s4.png", "s5.png", "s1.png", "s5.png"]
    captions[6] += " BENCHMARK DATA SHOULD NEVER APPEAR canary-1234"
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"TEXT": captions, "URL": [served.url(n) for n in names]}), data)
    bench_img = tmp_path / "bench.parquet"  # scene 3, smaller and re-encoded, as Hugging Face stores images
    pq.write_table(pa.table({"image": [{"bytes": jpeg(scene(3), (200, 150), 70), "path": None}]}), bench_img)
    bench_txt = write_benchmark(tmp_path / "bench.jsonl", [
        {"caption": "A PHOTO of a green-apple, on a sunny afternoon!"},  # row 2, normalised like dedup
        {"url": served.url("s4.png").replace("http://", "HTTP://")},  # row 5, normalised like dedup
        {"url": served.url("s5.png") + "?size=2", "caption": "a photo of a blue cat"}])  # matches nothing
    cfg = build_config(profile="tiny", extra={
        "ingest": {"input": [str(data)], "rows_per_partition": 3, "exclude": [str(bench_txt), str(bench_img)],
                   "canary": ["canary-1234"], "dedup_urls": False},
        "render": {"source": "real"}, "fetch": FAST, "run": {"progress": False}})
    out = tmp_path / "out"
    ingest, fetch = run_pipeline(cfg, str(out), to_stage="fetch").stages
    assert ingest.dropped == {"benchmark_caption": 1, "benchmark_url": 1, "benchmark_canary": 1}
    # row 3 is the benchmark's picture; row 4 a resized JPEG of row 0 (another partition); row 7 row 1's URL
    assert fetch.dropped == {"benchmark_image": 1, "near_duplicate_image": 2} and fetch.rows_out == 3
    kept = pq.read_table(out / "fetch", filters=[("status", "=", KEPT)]).column("caption").to_pylist()
    assert sorted(kept) == sorted(captions[i] for i in (0, 1, 8))
    assert len(list((out / "fetch" / nd.HASHES_DIR).glob("part-*.bin"))) == 3  # the workers' hash files
    status = {s["stage"]: s["dropped"] for s in collect(str(out))["stages"] if s["present"]}
    assert status["fetch"] == fetch.dropped and status["ingest"]["benchmark_url"] == 1
    write_benchmark(bench_txt, [{"url": served.url("s2.png")}])  # edited in place: same path, new content
    ingest, fetch = run_pipeline(cfg, str(out), to_stage="fetch").stages
    assert ingest.dropped == {"benchmark_url": 1, "benchmark_canary": 1}
    assert fetch.dropped == {"benchmark_image": 1, "near_duplicate_image": 2} and fetch.rows_out == 4


def test_benchmark_columns_are_found_by_name_and_normalised_like_dedup(tmp_path):
    photo = jpeg(scene(7), (160, 120), 80)
    pq.write_table(pa.table({"Caption": ["Red  BICYCLE &amp; a dog!"], "IMAGE_URL": ["HTTPS://Example.COM/a/B.jpg"],
                             "source_img": [{"bytes": photo, "path": "x.jpg"}], "target_img": [photo],
                             "instruction": ["make it snowy"]}), tmp_path / "b.parquet")
    write_benchmark(tmp_path / "c.jsonl", [{"phash": to_hex(phash(scene(8))).upper()}, {"text": None}])
    got = load_exclude([str(tmp_path / "b.parquet"), str(tmp_path / "c.jsonl")])
    assert got.captions == {"red bicycle a dog"}  # the instruction is not a caption
    assert got.urls == {"https://example.com/a/B.jpg"}
    assert got.hash_array().tolist() == sorted({phash_bytes(photo), phash(scene(8))})
    words = load_exclude([str(tmp_path / "b.parquet")], images=False)
    assert not words.hashes and words.digest == load_exclude([str(tmp_path / "b.parquet")]).digest
    pq.write_table(pa.table({"image": [photo]}), tmp_path / "only.parquet")  # images only: fine on a worker
    assert load_exclude([str(tmp_path / "only.parquet")], images=False).captions == set()
    again = load_exclude([str(tmp_path / "b.parquet"), str(tmp_path / "b.parquet")])  # the same values twice
    assert again.captions == got.captions


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text('{"question": "q"}\n'), "no caption, url, image or hash column"),
    (lambda p: p.write_text('{"phash": "xyz"}\n'), "row 0, column phash: not a 64-bit hex hash"),
    (lambda p: p.write_text("{not json\n"), "line 1: not JSON"),
    (lambda p: p.write_text('{"caption": null}\n{"caption": 3}\n'), "no usable value in its columns caption"),
])
def test_a_bad_benchmark_file_is_one_line(make, words, tmp_path):
    path = tmp_path / "bench.jsonl"
    make(path)
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"TEXT": ["a photo of a red bicycle"], "URL": ["http://x/a.png"]}), data)
    cfg = build_config(extra={"ingest": {"input": [str(data)], "exclude": [str(path)]}})
    with pytest.raises(InputError, match=words) as exc:
        IngestStage(cfg).preflight()
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_a_bad_benchmark_image_stops_the_run_with_exit_2(tmp_path, capsys):
    bench = tmp_path / "bench.parquet"
    pq.write_table(pa.table({"image": [b"not an image"]}), bench)
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"TEXT": ["a photo of a red bicycle"], "URL": ["http://x/a.png"]}), data)
    rc = cli_main(["run", "--profile", "tiny", "--input", str(data), "--out", str(tmp_path / "out"), "-q",
                   "--no-progress", "--set", f'ingest.exclude=["{bench}"]'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "row 0, column image: not a decodable image" in err[0], err
    assert not (tmp_path / "out" / "ingest").exists()
