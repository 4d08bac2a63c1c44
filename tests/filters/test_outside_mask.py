"""The change-outside-the-mask pair metric, its threshold (`changed_outside_mask`) and its place in the
filter stage's score cache."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editgen.filters.pairs.outside_mask import CHANGED_OUTSIDE_MASK, outside_change
from editgen.filters.pairs.select import Thresholds, select
from editgen.tiny.synthetic import encode, render_table


def _images(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    before = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[10:20, 12:30] = 255
    return before, mask


def test_outside_mask_metric():
    before, mask = _images()
    inside = before.copy()
    inside[10:20, 12:30] = 255 - inside[10:20, 12:30]  # changes only inside the mask
    assert outside_change(encode(before), encode(inside), encode(mask), 0.03) == (0.0, 1.0)
    spill = inside.copy()
    spill[30:, :] = 0  # and a band far outside it
    l1, ssim_v = outside_change(encode(before), encode(spill), encode(mask), 0.03)
    assert l1 > 0.1 and ssim_v < 0.5
    # A change just beyond the mask's edge: spill without dilation, inside the dilated mask with it.
    edge = before.copy()
    edge[20:22, 12:30] = 0
    assert outside_change(encode(before), encode(edge), encode(mask), 0.0)[0] > 0
    assert outside_change(encode(before), encode(edge), encode(mask), 0.05) == (0.0, 1.0)  # 3 px at 48
    # Undefined (null): no mask, the whole image, nothing outside the dilated mask, sizes that differ, bad bytes.
    whole, most = np.full_like(mask, 255), np.full_like(mask, 255)
    most[:2] = 0
    for args in ((None, 0.03), (encode(whole), 0.03), (encode(most), 0.05), (encode(mask[:40]), 0.03),
                 (b"junk", 0.03)):
        assert all(math.isnan(v) for v in outside_change(encode(before), encode(spill), *args)), args


def test_threshold_drops_changed_outside_mask_and_ignores_maskless_pairs():
    good = {"sim_image": np.full(4, 0.9), "sim_direction": np.array([0.5, 0.4, 0.3, 0.2]),
            "sim_0": np.full(4, 0.3), "sim_1": np.full(4, 0.3),
            "outside_mask_l1": np.array([0.0, 0.2, math.nan, 0.01]),
            "outside_mask_ssim": np.array([1.0, 0.3, math.nan, 0.95])}
    ids, cands = ["p"] * 4, [0, 1, 2, 3]
    assert select(ids, cands, good, Thresholds(), None)[0] == [None] * 4  # default: off
    reasons, ranks = select(ids, cands, good, Thresholds(outside_l1=0.05), None)
    assert reasons == [None, CHANGED_OUTSIDE_MASK, None, None] and ranks == [0, None, 1, 2]
    reasons, _ = select(ids, cands, good, Thresholds(outside_ssim=0.97), None)
    assert reasons == [None, CHANGED_OUTSIDE_MASK, None, CHANGED_OUTSIDE_MASK]


# ---- the filter stage: columns, threshold and score cache (function level: no Ray) --------------------
def _stage(tmp_path, **over):
    from editgen.pipeline.config import build_config
    from editgen.stages.filter import FilterStage

    filt = {"clip_model": "tiny-clip", "clip_pretrained": "seed:0", "device": "cpu",
            "clip_cache_dir": str(tmp_path / "clip"), "min_sim_0": -1.0, "min_sim_1": -1.0,
            "min_sim_direction": -1.0, "min_sim_image": -1.0, "top_k": None, "resources": {"num_gpus": 0}, **over}
    return FilterStage(build_config(extra={"filter": filt}))


def _run(stage, storage):
    from editgen.pipeline.stage import Partition, PartitionSpec, part_name
    from editgen.pipeline.storage import sha256_bytes

    sha = sha256_bytes(storage.read_bytes("render", part_name(0)))
    part = Partition(PartitionSpec(pid=0, input_key="k", input_sha=sha), storage, "filter")
    return stage.process_partition(stage.load_input(part, "render"), part)


def _render(tmp_path):
    """Pair 0: edits inside their masks; pair 1: the same plus a spill; pair 2: no mask (whole image)."""
    from editgen.pipeline.storage import Storage

    t = render_table(n_pairs=3, candidates=2, size=32)
    rows = t.to_pylist()
    for r in rows[2:4]:
        img = np.asarray(Image.open(io.BytesIO(r["edited_image"]))).copy()
        img[28:, :] = 0
        r["edited_image"] = encode(img)
    for r in rows[4:]:
        r["mask"] = None
    storage = Storage(str(tmp_path / "out"))
    storage.write_table(pa.Table.from_pylist(rows, schema=t.schema), "render", "part-00000.parquet")
    return storage


def test_filter_stores_the_metric_and_caches_it(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    storage = _render(tmp_path)
    out = _run(_stage(tmp_path), storage)
    l1, ssim_v = out["outside_mask_l1"].to_pylist(), out["outside_mask_ssim"].to_pylist()
    assert l1[:2] == [0.0, 0.0] and ssim_v[:2] == [1.0, 1.0]
    assert min(l1[2:4]) > 0.05 and max(ssim_v[2:4]) < 0.99 and l1[4:] == ssim_v[4:] == [None, None]
    assert out["status"].to_pylist() == ["kept"] * 6  # no threshold by default

    def no_clip(*a, **k):
        raise AssertionError("CLIP must not be loaded: its scores are cached")

    monkeypatch.setattr("editgen.stages.filter.ClipScorer.from_config", no_clip)
    again = _stage(tmp_path, max_outside_mask_l1=0.05)
    dropped = _run(again, storage)
    assert again.metrics == {"score_cache_hits": 1.0}  # outside-mask scores cached too
    assert dropped["drop_reason"].to_pylist() == [None, None, CHANGED_OUTSIDE_MASK, CHANGED_OUTSIDE_MASK, None, None]
    assert dropped["outside_mask_l1"].equals(out["outside_mask_l1"])

    # Another dilation: the outside-mask scores again (CLIP still cached).
    wider = _stage(tmp_path, outside_mask={"dilation": 0.2})
    _run(wider, storage)
    assert wider.metrics["score_cache_hits"] == 1.0 and wider.metrics["outside_mask_scored"] == 4

    # A cache written before the metric existed (CLIP scores only): still used, the metric computed and added.
    path = tmp_path / "out" / "filter" / "_scores" / "part-00000.parquet"
    cached = pq.read_table(path)
    meta = {k: v for k, v in cached.schema.metadata.items() if not k.startswith(b"editgen.outside")}
    pq.write_table(cached.drop_columns(["outside_mask_l1", "outside_mask_ssim"]).replace_schema_metadata(meta), path)
    old = _stage(tmp_path)
    assert _run(old, storage).equals(out)
    assert old.metrics["score_cache_hits"] == 1.0 and old.metrics["outside_mask_scored"] == 4
    assert "outside_mask_l1" in pq.read_table(path).column_names

    # A changed cached outside-mask score fails its digest: computed again, never used.
    cached = pq.read_table(path)
    forged = pa.array([0.0] * 6, pa.float32())
    pq.write_table(cached.set_column(cached.column_names.index("outside_mask_l1"), "outside_mask_l1", forged)
                   .replace_schema_metadata(cached.schema.metadata), path)
    checked = _stage(tmp_path)
    assert _run(checked, storage).equals(out) and checked.metrics["outside_mask_scored"] == 4
