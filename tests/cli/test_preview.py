"""`editgen preview OUT`: page, thumbnails and plots; rendered in headless Chromium; text escaped."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet
import pytest

from editgen.cli import preview
from editgen.pipeline.records import write_record
from editgen.pipeline.storage import Storage
from tests.support import filter_partitions

#: Would mark <body> if it ever ran (no alert(): a modal dialog hangs headless Chromium).
EVIL = ("<script>document.body.setAttribute('data-pwned','1')</script>"
        "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def out(tmp_path) -> Path:
    storage = Storage(str(tmp_path))

    def evil_caption(t: pa.Table) -> pa.Table:
        return t.set_column(t.column_names.index("caption"), "caption", pa.array([EVIL] + t["caption"].to_pylist()[1:]))

    for rec in filter_partitions(tmp_path, pairs=3, edit=evil_caption):
        write_record(storage, "filter", rec)
        write_record(storage, "ingest", {"partition": rec["partition"], "rows_in": 20, "rows_out": 15,
                                         "dropped": {"too_short": 3, "not_english": 2}})
    storage.write_text("filter:\n  min_sim_direction: 0.25\n", "config.yaml")
    return tmp_path


def build(out: Path) -> None:
    parser = argparse.ArgumentParser()
    preview.add_arguments(parser)
    assert preview.main(parser.parse_args([str(out), "--limit", "6", "--rejected", "3"])) == 0


def test_page_files_and_escaping(out):
    build(out)
    page = (out / "preview.html").read_text()
    assert "<script>document.body" not in page and "&lt;script&gt;document.body" in page
    assert "onerror=\"document" not in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 2 + 2 * (6 + 3)  # two plots + before/after per shown card
    for src in srcs:
        assert (out / src).is_file() and (out / src).read_bytes()[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")
    assert "ingest: 40 in, 30 kept" in page and "not_english" in page
    assert preview.load_thresholds(Storage(str(out))).sim_direction == 0.25
    assert preview.stage_drops(Storage(str(out)))["filter"]["rows_in"] == 18


def test_page_without_filter_output(tmp_path):
    write_record(Storage(str(tmp_path)), "ingest", {"partition": 0, "rows_in": 5, "rows_out": 5, "dropped": {}})
    build(tmp_path)
    assert "Kept pairs (0 shown)" in (tmp_path / "preview.html").read_text()


def test_mask_overlay(tmp_path):
    """A region mask is a tint over both thumbnails (the mask's pixels, at thumbnail size), with its area
    and words (escaped); a pair without one, or with a whole-image mask, has none; one checkbox hides all."""
    import io
    import json

    import numpy as np
    from PIL import Image

    def masks(t: pa.Table) -> pa.Table:
        white = io.BytesIO()
        Image.new("L", (32, 32), 255).save(white, format="PNG")
        m = [None if i % 3 == 0 else white.getvalue() if i % 3 == 1 else b for i, b in enumerate(t["mask"].to_pylist())]
        params = [json.dumps({**json.loads(p), "mask": {"words": [EVIL, "box"]}}) for p in t["params"].to_pylist()]
        t = t.set_column(t.column_names.index("params"), "params", pa.array(params))
        return t.set_column(t.column_names.index("mask"), "mask", pa.array(m, pa.binary()))

    storage = Storage(str(tmp_path))
    for rec in filter_partitions(tmp_path, parts=1, pairs=3, keep_fraction=1.0, edit=masks):
        write_record(storage, "filter", rec)
    preview.build_preview(str(tmp_path), limit=9, rejected=0)
    stored = pa.parquet.read_table(tmp_path / "filter" / "part-00000.parquet")["mask"].to_pylist()
    page = (tmp_path / "preview.html").read_text()
    assert 'id="mask-toggle"' in page and "classList.toggle('hide-masks'" in page and "body.hide-masks img.mask" in page
    cards = re.findall(r'<div class="card .*?</div></div>', page)
    assert len(cards) == 9
    for i, card in enumerate(cards):
        tints = re.findall(r'<img class="mask" src="([^"]+)"', card)
        assert len(tints) == (2 if i % 3 == 2 else 0), card
        if tints:
            assert "edit mask: 6.2% of the image" in card and "&lt;script&gt;document.body" in card
            tint = np.asarray(Image.open(tmp_path / tints[0]))
            region = np.asarray(Image.open(io.BytesIO(stored[i]))) >= 128
            assert tint.shape == (*region.shape, 4) and ((tint[..., 3] > 0) == region).all()
    assert "<script>document.body" not in page


def test_cards_show_the_consistency_scores(tmp_path):
    """`dinov2_sim` / `ssim` (issue 23 item 1) are on each card where the filter stored them."""
    def consistency(t: pa.Table) -> pa.Table:
        n = t.num_rows
        t = t.append_column("dinov2_sim", pa.array([0.25 + i / 100 for i in range(n)], pa.float32()))
        return t.append_column("ssim", pa.array([None] + [0.5] * (n - 1), pa.float32()))

    storage = Storage(str(tmp_path))
    for rec in filter_partitions(tmp_path, parts=1, pairs=2, keep_fraction=1.0, edit=consistency):
        write_record(storage, "filter", rec)
    preview.build_preview(str(tmp_path), limit=6, rejected=0)
    cards = re.findall(r'<div class="card .*?</div></div>', (tmp_path / "preview.html").read_text())
    shown = sorted(v for c in cards for v in re.findall(r"dinov2_sim=(\d\.\d{3})", c))
    assert len(cards) == 6 and shown == [f"{0.25 + i / 100:.3f}" for i in range(6)]
    assert sum("ssim=0.500" in c and "outside_mask_ssim=0.500" not in c for c in cards) == len(cards) - 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian `chromium` (apt-get install chromium)")
def test_renders_in_headless_chromium(out, tmp_path):
    build(out)
    cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
           "--dump-dom", (out / "preview.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    ok = int(re.search(r'data-images-ok="(\d+)"', body).group(1))
    # every thumbnail, plot and mask tint (every synthetic pair has a region) decoded (naturalWidth > 0)
    assert total == 20 + 2 * 9 and ok == total, body
    assert "data-pwned" not in body and "&lt;script&gt;document.body" in dom  # text, never run
