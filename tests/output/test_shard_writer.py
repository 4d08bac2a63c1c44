"""WebDataset shards: keys, layout, limits, determinism, readers (webdataset and tarfile), manifest."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from editgen.output.manifest import read_manifest
from editgen.output.shard_writer import TAR_MTIME, iter_rows, sample_key
from editgen.pipeline.stage import part_name
from editgen.pipeline.storage import Storage
from editgen.tiny.synthetic import render_table
from tests.support import filter_partitions, shard_path, tar_files, write_shards

wds = pytest.importorskip("webdataset")


def make_filter_out(root: Path, parts: int = 3, pairs: int = 4, fmt: str = "png", **kw) -> list[dict]:
    return filter_partitions(root, parts=parts, pairs=pairs, fmt=fmt, **kw)


@pytest.mark.parametrize(
    "record_id",
    ["abc123", "a.b.c", "../../etc/passwd", "/abs/path", "..", "", "__key__", "ünïcode id", "x" * 300, "a b\tc\n"],
)
def test_sample_keys_are_safe(record_id):
    key = sample_key(record_id, 7)
    assert key.endswith("-c0007")
    assert "." not in key and "/" not in key and not key.startswith(("_", "-"))
    assert len(key) < 90 and all(ch.isalnum() or ch in "_-" for ch in key)


def test_sample_keys_stay_unique_after_sanitizing():
    ids = ["a/b", "a_b", "a.b", "a b", "a__b", "A/b"]
    assert len({sample_key(i, 0) for i in ids}) == len(ids)
    assert sample_key("a_b", 0) == "a_b-c0000"  # clean ids are kept readable


def test_shards_readable_by_webdataset_and_tarfile(tmp_path):
    records = make_filter_out(tmp_path, fmt="png")
    summary = write_shards(tmp_path, records, samples_per_shard=5)
    manifest = read_manifest(Storage(str(tmp_path)))
    kept = sum(r["rows_out"] for r in records)
    assert summary["rows_in"] == kept == summary["rows_out"] == manifest["samples"]
    assert summary["shards"] == len(manifest["shards"]) == -(-kept // 5)
    assert manifest["config_hash"] and manifest["bytes"] == sum(s["bytes"] for s in manifest["shards"])
    shards = tar_files(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in shards] == [s["name"] for s in manifest["shards"]]
    assert all(s["name"].startswith(f"shards/{manifest['generation']}/edits-") for s in manifest["shards"])
    for p, entry in zip(shards, manifest["shards"], strict=True):
        data = p.read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        with tarfile.open(p) as tar:
            members = tar.getmembers()
            assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
                (TAR_MTIME, 0, 0, "", "", 0o444)}
            assert all(m.isreg() and not m.name.startswith("/") and ".." not in m.name for m in members)

    ds = wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil")
    samples = list(ds)
    assert len(samples) == kept
    s = samples[0]
    assert {"input.png", "edited.png", "mask.png", "txt", "json"} <= set(s)
    assert s["input.png"].size == (32, 32)
    meta = s["json"]
    assert meta["instruction"] == s["txt"] and meta["status"] == "kept"
    for field in ("caption", "edited_caption", "seed", "url", "source", "source_row", "id", "candidate",
                  "sim_0", "sim_1", "sim_direction", "sim_image", "render_model", "clip_model"):
        assert field in meta, field
    assert meta["params"]["guidance_scale"] == 7.5 and meta["params"]["scheduler"] == "ddim"
    assert s["__key__"] == sample_key(meta["id"], meta["candidate"])
    assert "input_image" not in meta and meta["mask"] == "region"


def test_jpeg_members_and_a_mask_in_every_sample(tmp_path):
    """Rows with and without a LocalBlend mask: every sample has the same members (Ray Data builds one
    schema per dataset); a row without one gets an all-white mask at its image size."""
    def half_masks(t: pa.Table) -> pa.Table:
        masks = [m if i % 2 else None for i, m in enumerate(t["mask"].to_pylist())]
        return t.set_column(t.column_names.index("mask"), "mask", pa.array(masks, pa.binary()))

    records = make_filter_out(tmp_path, parts=1, fmt="jpeg", keep_fraction=1.0, size=24, edit=half_masks)
    write_shards(tmp_path, records)
    samples = list(wds.WebDataset(str(shard_path(tmp_path, 0)), shardshuffle=False))
    assert len(samples) == 12 and {frozenset(k for k in s if not k.startswith("__")) for s in samples} == {
        frozenset({"input.jpg", "edited.jpg", "mask.png", "txt", "json"})}
    kinds = [json.loads(s["json"])["mask"] for s in samples]
    assert kinds == ["whole_image", "region"] * 6
    for s, kind in zip(samples, kinds, strict=True):
        mask, image = Image.open(io.BytesIO(s["mask.png"])), Image.open(io.BytesIO(s["input.jpg"]))
        assert mask.size == image.size == (24, 24) and mask.mode == "L"
        assert (mask.getextrema() == (255, 255)) == (kind == "whole_image")


def test_sample_json_describes_the_mask(tmp_path):
    """mask_rle / mask_bbox / mask_area computed from mask.png (the RLE decodes to it), words and kind from
    the record's mask description; whole-image masks described as such; a mask that does not decode drops
    the sample as bad_mask."""
    import numpy as np

    from editgen.filters.pairs.masks import decode_mask, mask_geometry, rle_decode

    def described(t: pa.Table) -> pa.Table:
        masks, params = t["mask"].to_pylist(), t["params"].to_pylist()
        for i in range(len(masks)):
            p = json.loads(params[i])
            if i % 3 == 0:
                masks[i] = None
            elif i % 3 == 1:
                p["mask"] = {"words": ["red", "box"], "kind": "cross_attention", "area": 0.5}
            params[i] = json.dumps(p)
        masks[-1] = b"\x89PNG not really"
        t = t.set_column(t.column_names.index("mask"), "mask", pa.array(masks, pa.binary()))
        return t.set_column(t.column_names.index("params"), "params", pa.array(params))

    records = make_filter_out(tmp_path, parts=1, keep_fraction=1.0, size=20, edit=described)
    assert write_shards(tmp_path, records)["dropped"] == {"bad_mask": 1}
    samples = list(wds.WebDataset(str(shard_path(tmp_path, 0)), shardshuffle=False))
    assert len(samples) == 11
    for i, s in enumerate(samples):
        meta = json.loads(s["json"])
        region = decode_mask(s["mask.png"])
        assert (rle_decode(meta["mask_rle"]) == region).all() and meta["mask_rle"]["size"] == [20, 20]
        g = mask_geometry(s["mask.png"])
        assert (meta["mask_bbox"], meta["mask_area"]) == (g.bbox, g.area)
        if i % 3 == 0:
            assert meta["mask"] == "whole_image" and meta["mask_rle"]["counts"] == [0, 400]
            assert (meta["mask_bbox"], meta["mask_area"]) == ([0, 0, 20, 20], 1.0)
        else:
            ys, xs = np.nonzero(region)
            assert meta["mask_bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert meta["mask"] == "region" and 0 < meta["mask_area"] < 1
        words, kind = (["red", "box"], "cross_attention") if i % 3 == 1 else (None, None)
        assert (meta["mask_words"], meta["mask_kind"]) == (words, kind)


def test_byte_identical_across_runs_and_concurrency(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    recs_a, recs_b = make_filter_out(a), make_filter_out(b)
    assert [r["sha256"] for r in recs_a] == [r["sha256"] for r in recs_b]
    write_shards(a, recs_a, samples_per_shard=4, resources={"concurrency": 1})
    write_shards(b, recs_b, samples_per_shard=4, resources={"concurrency": 3})
    files_a = _shard_files(a)
    assert files_a == _shard_files(b) and "manifest.json" in files_a and len(files_a) > 3
    write_shards(a, recs_a, samples_per_shard=4)  # rerun in place: same bytes again
    assert _shard_files(a) == files_a


def _shard_files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in [*(out / "shards").rglob("*"), out / "manifest.json"]
            if p.is_file()}


def test_size_limit_and_stale_shards(tmp_path):
    records = make_filter_out(tmp_path)
    write_shards(tmp_path, records, samples_per_shard=1)
    n_small = len(tar_files(tmp_path))
    first_gen = read_manifest(Storage(str(tmp_path)))["generation"]
    limit = 40_960
    write_shards(tmp_path, records, samples_per_shard=1000, max_shard_bytes=limit)
    manifest = read_manifest(Storage(str(tmp_path)))
    assert all(s["bytes"] <= limit for s in manifest["shards"]) and len(manifest["shards"]) > 1
    on_disk = [str(p.relative_to(tmp_path)) for p in tar_files(tmp_path)]
    assert on_disk == [s["name"] for s in manifest["shards"]] and len(on_disk) < n_small
    assert manifest["generation"] != first_gen and not (tmp_path / "shards" / first_gen).exists()
    assert not list((tmp_path / "shards").rglob(".tmp-*"))


def test_export_rejected_and_missing_images(tmp_path):
    records = make_filter_out(tmp_path, parts=2)
    storage = Storage(str(tmp_path))
    t = storage.read_table("filter", part_name(0))
    kept_idx = t["status"].to_pylist().index("kept")
    images = t["edited_image"].to_pylist()
    images[kept_idx] = None
    t = t.set_column(t.column_names.index("edited_image"), "edited_image", pa.array(images, pa.binary()))
    sha, nbytes = storage.write_table(t, "filter", part_name(0))
    records[0].update(sha256=sha, bytes=nbytes)  # the stage's record of what it wrote (the shard stage checks it)
    summary = write_shards(tmp_path, records, export_rejected=True)
    manifest = read_manifest(storage)
    total = sum(storage.read_table("filter", part_name(p)).num_rows for p in range(2))
    assert summary["dropped"] == {"missing_image": 1}
    assert summary["rows_out"] == summary["rows_in"] - 1
    assert manifest["samples"] + manifest["rejected"]["samples"] == total - 1
    rej = list(wds.WebDataset(str(shard_path(tmp_path, 0, rejected=True)), shardshuffle=False))
    meta = json.loads(rej[0]["json"])
    assert meta["status"] == "dropped" and meta["drop_reason"] == "below_sim_direction"


def test_iter_rows_streams_in_file_order(tmp_path):
    storage = Storage(str(tmp_path))
    t = render_table(5, 2, 16)
    sha, _ = storage.write_table(t, "x", "part-00000.parquet")
    rows = list(iter_rows(storage, [("x", "part-00000.parquet", sha)], batch_rows=3))
    assert [(r["id"], r["candidate"]) for r in rows] == list(zip(t["id"].to_pylist(), t["candidate"].to_pylist(),
                                                                    strict=True))
    assert isinstance(rows[0]["input_image"], bytes) and io.BytesIO(rows[0]["input_image"]).read(4) == b"\x89PNG"
