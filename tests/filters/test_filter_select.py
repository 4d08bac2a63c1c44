"""Selection (thresholds, top-k, named reasons), early stop, and the filter stage's score cache."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from editgen.filters.pairs.early_stop import EarlyStop, pair_done
from editgen.filters.pairs.select import BAD_IMAGE, NOT_TOP_K, Thresholds, select, threshold_reason
from editgen.pipeline.config import build_config

GOOD = {"sim_image": 0.9, "sim_direction": 0.3, "sim_0": 0.3, "sim_1": 0.3}


def test_defaults_are_instructpix2pix():
    cfg = build_config().filter
    assert (cfg.clip_model, cfg.clip_pretrained, cfg.top_k) == ("ViT-L-14", "openai", 4)
    assert Thresholds.from_config(cfg) == Thresholds(0.75, 0.2, 0.2, 0.2, recon_psnr=20.0)


def test_poor_inversion_is_checked_first_and_only_on_real_pairs():
    import math

    th = Thresholds(recon_psnr=20.0, recon_ssim=0.5)
    good = {"sim_image": 0.9, "sim_direction": 0.5, "sim_0": 0.3, "sim_1": 0.3}
    assert threshold_reason({**good, "recon_psnr": math.nan, "recon_ssim": math.nan}, th) is None  # generated
    assert threshold_reason({**good, "recon_psnr": 25.0, "recon_ssim": 0.8}, th) is None
    assert threshold_reason({**good, "recon_psnr": 19.9, "recon_ssim": 0.8}, th) == "poor_inversion"
    assert threshold_reason({**good, "recon_psnr": 25.0, "recon_ssim": 0.4}, th) == "poor_inversion"
    assert threshold_reason({**good, "sim_image": 0.1, "recon_psnr": 5.0, "recon_ssim": 0.8}, th) == "poor_inversion"
    assert threshold_reason({**good, "recon_psnr": 5.0}, Thresholds()) is None  # no threshold set


def test_image_fidelity_of_stored_images():
    import io

    import numpy as np
    from PIL import Image

    from editgen.filters.pairs.fidelity import fidelity_scores, image_fidelity

    def png(arr):
        buf = io.BytesIO()
        Image.fromarray(arr.astype("uint8")).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3))
    b = np.clip(a + rng.integers(-8, 9, a.shape), 0, 255)
    p, s = image_fidelity(png(a), png(b))
    mse = np.mean(((a - b) / 255.0) ** 2)
    assert abs(p - 10 * np.log10(1 / mse)) < 1e-9 and 0 < s < 1
    assert image_fidelity(png(a), png(a))[0] == float("inf")
    assert all(np.isnan(v) for v in image_fidelity(png(a), b"junk"))
    assert all(np.isnan(v) for v in image_fidelity(png(a), png(a[:8])))
    scores = fidelity_scores([png(a), png(a)], [None, png(b)])
    assert np.isnan(scores["recon_psnr"][0]) and scores["recon_psnr"][1] == p


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"sim_image": 0.74}, "below_sim_image"),
        ({"sim_direction": 0.19}, "below_sim_direction"),
        ({"sim_0": 0.1}, "below_sim_0"),
        ({"sim_1": -0.5}, "below_sim_1"),
        ({"sim_image": 0.1, "sim_1": 0.1}, "below_sim_image"),  # first failing check names it
        ({"sim_0": math.nan}, BAD_IMAGE),
        ({"sim_image": 0.75, "sim_direction": 0.2}, None),  # thresholds are inclusive
    ],
)
def test_threshold_reasons(change, reason):
    assert threshold_reason({**GOOD, **change}, Thresholds()) == reason


def _scores(direction, image=None):
    n = len(direction)
    return {
        "sim_direction": np.array(direction, np.float32),
        "sim_image": np.array(image if image is not None else [0.9] * n, np.float32),
        "sim_0": np.full(n, 0.3, np.float32),
        "sim_1": np.full(n, 0.3, np.float32),
    }


def test_top_k_per_pair_by_direction():
    ids = ["a"] * 5 + ["b"] * 3
    cands = [0, 1, 2, 3, 4, 0, 1, 2]
    direction = [0.30, 0.50, 0.25, 0.50, 0.10, 0.40, 0.21, 0.9]
    image = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5]
    reasons, ranks = select(ids, cands, _scores(direction, image), Thresholds(), top_k=2)
    # pair a: passing = c0 .3, c1 .5, c2 .25, c3 .5 (c4 below direction); tie c1/c3 -> lower candidate first
    assert reasons[:5] == [NOT_TOP_K, None, NOT_TOP_K, None, "below_sim_direction"]
    assert ranks[:5] == [2, 0, 3, 1, None]
    # pair b: c2 has the best direction but fails sim_image, so it cannot take a top-k slot
    assert reasons[5:] == [None, None, "below_sim_image"]
    assert ranks[5:] == [0, 1, None]
    reasons_all, _ = select(ids, cands, _scores(direction, image), Thresholds(), top_k=None)
    assert NOT_TOP_K not in reasons_all


def test_pair_done_and_early_stop():
    assert not pair_done(passed=3, drawn=10, k=4, max_candidates=100)
    assert pair_done(passed=4, drawn=10, k=4, max_candidates=100)
    assert pair_done(passed=0, drawn=100, k=4, max_candidates=100)
    assert not pair_done(passed=4, drawn=5, k=4, max_candidates=100, min_candidates=8)
    es = EarlyStop.from_config(build_config().filter, max_candidates=6)
    bad = {**GOOD, "sim_direction": 0.0}
    assert es.remaining("p") == 4
    for s in (GOOD, bad, GOOD, GOOD):
        assert es.add("p", s) is False
    assert es.remaining("p") == 1
    assert es.add("p", GOOD) is True and es.drawn("p") == 5 and es.passed("p") == 4
    assert es.remaining("p") == 0
    for _ in range(6):  # a pair that never passes stops at max_candidates
        done = es.add("q", bad)
    assert done and es.drawn("q") == 6 and es.passed("q") == 0


# ---- the filter stage's score cache (function level: no Ray) -------------------------------
def _filter_cfg(tmp_path, **over):
    filt = {"clip_model": "tiny-clip", "clip_pretrained": "seed:0", "device": "cpu",
            "clip_cache_dir": str(tmp_path / "clip"), "min_sim_0": -1.0, "min_sim_1": -1.0,
            "min_sim_direction": -1.0, "min_sim_image": -1.0, "top_k": 2,
            "resources": {"num_gpus": 0}, **over}
    return build_config(extra={"filter": filt})


def _run_partition(stage, storage, pid, key):
    from editgen.pipeline.stage import Partition, PartitionSpec, part_name
    from editgen.pipeline.storage import sha256_bytes

    sha = sha256_bytes(storage.read_bytes("render", part_name(pid)))  # what its record holds: the read checks it
    part = Partition(PartitionSpec(pid=pid, input_key=key, input_sha=sha), storage, "filter")
    return stage.process_partition(stage.load_input(part, "render"), part)


def test_threshold_change_reuses_scores_and_never_touches_render(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    from editgen.pipeline.stage import count_reasons
    from editgen.pipeline.storage import Storage
    from editgen.stages.filter import FilterStage
    from editgen.tiny.synthetic import render_table

    storage = Storage(str(tmp_path / "out"))
    render = render_table(n_pairs=3, candidates=4, size=32)
    sha, _ = storage.write_table(render, "render", "part-00000.parquet")
    render_file = tmp_path / "out" / "render" / "part-00000.parquet"
    before = (render_file.read_bytes(), render_file.stat().st_mtime_ns)

    first = FilterStage(_filter_cfg(tmp_path))
    out1 = _run_partition(first, storage, 0, sha)
    assert first.metrics["clip_scored"] == 12
    assert (tmp_path / "out" / "filter" / "_scores" / "part-00000.parquet").exists()
    assert count_reasons(out1) == (6, {NOT_TOP_K: 6})
    for col in ("sim_0", "sim_1", "sim_direction", "sim_image", "filter_rank", "clip_model"):
        assert col in out1.column_names

    # New thresholds/top_k: scores must come from the cache; loading CLIP would fail here.
    def no_clip(*a, **k):
        raise AssertionError("CLIP must not be loaded when only thresholds change")

    monkeypatch.setattr("editgen.stages.filter.ClipScorer.from_config", no_clip)
    median = float(np.median(out1["sim_direction"].to_numpy()))
    second = FilterStage(_filter_cfg(tmp_path, top_k=3, min_sim_direction=median))
    out2 = _run_partition(second, storage, 0, sha)
    assert second.metrics == {"score_cache_hits": 1.0}
    for col in ("sim_0", "sim_1", "sim_direction", "sim_image"):
        assert out2[col].equals(out1[col])
    kept, dropped = count_reasons(out2)
    assert kept + sum(dropped.values()) == 12 and dropped.get("below_sim_direction", 0) > 0
    assert (render_file.read_bytes(), render_file.stat().st_mtime_ns) == before

    # A different render partition checksum, or another CLIP, is a cache miss.
    monkeypatch.undo()
    third = FilterStage(_filter_cfg(tmp_path))
    _run_partition(third, storage, 0, "0" * 64)
    assert third.metrics["clip_scored"] == 12


def test_empty_partition(tmp_path):
    pytest.importorskip("open_clip")
    from editgen.stages.filter import FilterStage
    from editgen.tiny.synthetic import RENDER_SCHEMA

    out = FilterStage(_filter_cfg(tmp_path)).process_partition(RENDER_SCHEMA.empty_table().drop_columns(
        ["status", "drop_reason"]))
    assert out.num_rows == 0 and "status" in out.column_names
    assert isinstance(out, pa.Table)


def test_preflight_names_the_bad_key(tmp_path):
    pytest.importorskip("open_clip")
    from editgen.pipeline.errors import ConfigError
    from editgen.stages.filter import FilterStage

    with pytest.raises(ConfigError, match="filter.clip_model"):
        FilterStage(_filter_cfg(tmp_path, clip_model="ViT-Nope")).preflight()
    with pytest.raises(ConfigError, match="filter.clip_pretrained"):
        FilterStage(_filter_cfg(tmp_path, clip_model="ViT-B-32", clip_pretrained="nope")).preflight()
    FilterStage(_filter_cfg(tmp_path)).preflight()
