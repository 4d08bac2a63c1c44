"""Consistency metrics beside CLIP (issue 23 item 1): DINOv2 similarity through the real transformers loading
path (the tiny random DINOv2 built in code), whole-image SSIM, their min/max bounds and drop reasons, and
their place in the filter stage's score cache and output."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from editgen.filters.pairs.consistency import range_reason, whole_ssim
from editgen.filters.pairs.fidelity import image_fidelity
from editgen.filters.pairs.select import Thresholds, select
from editgen.tiny.synthetic import encode, render_table

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    edit = noise.copy()
    edit[10:20, 10:20] = 255  # a small local change
    gradient = np.tile(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], (48, 1, 3))
    return {"noise": encode(noise), "edit": encode(edit), "gradient": encode(gradient),
            "other": encode(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)), "small": encode(noise[:40, :40])}


def test_whole_image_ssim_of_constructed_pairs():
    im = _images()
    assert whole_ssim(im["noise"], im["noise"]) == 1.0
    assert abs(whole_ssim(im["noise"], im["other"])) < 0.05 and abs(whole_ssim(im["noise"], im["gradient"])) < 0.05
    local = whole_ssim(im["noise"], im["edit"])
    assert 0.8 < local < 1.0
    # The one SSIM implementation (outside_mask.ssim_map) agrees with the reconstruction check's.
    assert local == pytest.approx(image_fidelity(im["noise"], im["edit"])[1], abs=1e-5)
    assert math.isnan(whole_ssim(im["noise"], im["small"])) and math.isnan(whole_ssim(im["noise"], b"junk"))


def test_tiny_dinov2_through_the_transformers_loading_path():
    from transformers import AutoImageProcessor, AutoModel

    from editgen.filters.pairs.dino_score import DinoScorer, DinoSpec
    from editgen.tiny.dino import build_tiny_dino

    im = _images()
    scorer = DinoScorer(DinoSpec("tiny-dino", device="cpu"), batch_size=2)  # batches cross pairs
    assert type(scorer.model).__name__ == "Dinov2Model"
    inputs = [im["noise"], im["noise"], im["noise"], im["gradient"], b"junk", None]
    edited = [im["noise"], im["edit"], im["gradient"], im["other"], im["noise"], im["noise"]]
    got = scorer.score(inputs, edited)["dinov2_sim"]
    assert got[0] == pytest.approx(1.0, abs=1e-5)
    assert got[1] > 0.9 and got[2] < 0.8 and got[1] > got[2]  # a local edit keeps far more than another picture
    assert np.isnan(got[4:]).all()
    half = DinoScorer(DinoSpec("tiny-dino", device="cpu", precision="fp16"))  # a GPU's default, here on CPU
    assert half.model.dtype == torch.float16
    assert np.allclose(half.score(inputs[:4], edited[:4])["dinov2_sim"], got[:4], atol=5e-3)
    assert half.spec.cache_key() != scorer.spec.cache_key()  # cached fp32 scores are not fp16 ones
    # The same numbers as the model run directly, one pair at a time (no dedup, no batching).
    path = str(build_tiny_dino())
    model, proc = AutoModel.from_pretrained(path, use_safetensors=True).eval(), AutoImageProcessor.from_pretrained(path)
    from editgen.filters.pairs.clip_score import decode_image

    for i in range(4):
        x = proc(images=[decode_image(inputs[i]), decode_image(edited[i])], return_tensors="pt")
        with torch.inference_mode():
            e = model(**x).pooler_output
        assert got[i] == pytest.approx(float(torch.nn.functional.cosine_similarity(e[:1], e[1:])), abs=1e-5)


def test_a_dinov2_that_does_not_load_is_one_line(tmp_path):
    from editgen.filters.pairs.dino_score import DinoScorer, DinoSpec
    from editgen.pipeline.errors import ConfigError

    (tmp_path / "model.safetensors").write_bytes(b"not weights")  # passes preflight, fails loading
    with pytest.raises(ConfigError, match=r"^filter.dino_model: cannot load '.*': [^\n]+$"):
        DinoScorer(DinoSpec(str(tmp_path), device="cpu"))


def test_bounds_name_their_reasons_in_a_fixed_order():
    bounds = {"dinov2": (0.3, 0.9), "ssim": (0.4, 0.95)}
    cases = {(0.2, 0.5): "below_dinov2", (0.95, 0.5): "above_dinov2", (0.5, 0.3): "below_ssim",
             (0.5, 0.99): "above_ssim", (0.5, 0.5): None, (0.2, 0.3): "below_dinov2",
             (math.nan, 0.99): "above_ssim", (math.nan, math.nan): None, (0.3, 0.95): None}
    for (dino, ssim_v), reason in cases.items():
        assert range_reason({"dinov2_sim": dino, "ssim": ssim_v}, bounds) == reason, (dino, ssim_v)
    assert range_reason({}, bounds) is None  # metrics off: never checked
    # In select: after CLIP's checks (a CLIP drop keeps its name), NaN never dropped, off bounds never checked.
    scores = {"sim_image": np.full(5, 0.9), "sim_direction": np.array([0.5, 0.4, 0.1, 0.3, 0.2]),
              "sim_0": np.full(5, 0.3), "sim_1": np.full(5, 0.3),
              "dinov2_sim": np.array([0.5, 0.95, 0.1, np.nan, 0.2]), "ssim": np.array([0.6, 0.6, 0.6, 0.99, 0.6])}
    ids, cands = ["p"] * 5, list(range(5))
    reasons, ranks = select(ids, cands, scores, Thresholds(ssim=(None, 0.95)), None)
    assert reasons == [None, "above_dinov2", "below_sim_direction", "above_ssim", "below_dinov2"]
    assert ranks == [0, None, None, None, None]
    reasons, _ = select(ids, cands, scores, Thresholds(dinov2=(None, None)), None)
    assert reasons == [None, None, "below_sim_direction", None, None]


def test_bounds_are_validated_and_hash_neutral():
    from editgen.pipeline.config import build_config, section_hash
    from editgen.pipeline.errors import ConfigError

    # The hashes of before the metrics existed (the defaults leave them off): no OUT is recomputed.
    assert section_hash(build_config(), "filter", "up", "1") == "b1f8522a71f02394"
    assert section_hash(build_config(profile="tiny"), "filter", "up", "1") == "4f0444fa4b1c023d"
    on = build_config(profile="tiny", overrides=["filter.dino_model=tiny-dino"])
    assert section_hash(on, "filter", "up", "1") != "4f0444fa4b1c023d"
    for bad, words in (("filter.min_ssim=0.9", "above max_ssim"), ("filter.min_dinov2=0.95", "above max_dinov2")):
        with pytest.raises(ConfigError, match=words):
            build_config(overrides=[bad, "filter.max_ssim=0.5"])
    assert build_config(overrides=["filter.min_ssim=0.5"]).filter.ssim_on  # a bound turns its metric on
    from editgen.stages.filter import FilterStage

    for model in ("no such model", "/nonexistent/folder"):
        with pytest.raises(ConfigError, match="filter.dino_model: .*not a folder"):
            FilterStage(build_config(extra={"filter": {"dino_model": model}})).preflight()


# ---- the filter stage under the tiny profile, DINOv2 and SSIM on (function level: no Ray) ------------------
def _stage(**over):
    from editgen.pipeline.config import build_config
    from editgen.stages.filter import FilterStage

    filt = {"device": "cpu", "min_sim_image": -1.0, "min_sim_direction": -1.0, "top_k": None, **over}
    return FilterStage(build_config(profile="tiny", extra={"filter": filt}))


def _run(stage, storage):
    from editgen.pipeline.stage import Partition, PartitionSpec, part_name
    from editgen.pipeline.storage import sha256_bytes

    sha = sha256_bytes(storage.read_bytes("render", part_name(0)))
    part = Partition(PartitionSpec(pid=0, input_key="k", input_sha=sha), storage, "filter")
    return stage.process_partition(stage.load_input(part, "render"), part)


def test_filter_stage_stores_consistency_scores_and_reselects_from_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    from editgen.output.shard_writer import sample_metadata
    from editgen.pipeline.storage import Storage

    t = render_table(n_pairs=3, candidates=2, size=32)
    rows = t.to_pylist()
    rows[0]["edited_image"] = rows[0]["input_image"]  # an "edit" that changed nothing
    rows[5]["edited_image"] = encode(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    storage = Storage(str(tmp_path / "out"))
    storage.write_table(pa.Table.from_pylist(rows, schema=t.schema), "render", "part-00000.parquet")

    first = _stage(dino_model="tiny-dino", ssim=True)
    first.preflight()
    out = _run(first, storage)
    assert first.metrics["dinov2_scored"] == first.metrics["ssim_scored"] == 6
    dino, ssim_v = out["dinov2_sim"].to_pylist(), out["ssim"].to_pylist()
    assert dino[0] == pytest.approx(1.0, abs=1e-5) and ssim_v[0] == 1.0 and ssim_v[5] < 0.2
    th = Thresholds.from_config(first.settings)
    assert out["drop_reason"].to_pylist() == [range_reason(r, {"dinov2": th.dinov2}) for r in out.to_pylist()]
    assert out["drop_reason"][0].as_py() == "above_dinov2"
    meta = sample_metadata(out.to_pylist()[1])  # every column goes into the sample's JSON
    assert (meta["dinov2_sim"], meta["ssim"]) == (dino[1], ssim_v[1])

    def no_model(*a, **k):
        raise AssertionError("no model may load: the scores are cached")

    monkeypatch.setattr("editgen.stages.filter.ClipScorer.from_config", no_model)
    monkeypatch.setattr("editgen.stages.filter.DinoScorer.from_config", no_model)
    bounds = _stage(dino_model="tiny-dino", ssim=True, min_dinov2=None, max_dinov2=None, min_ssim=0.5,
                    max_ssim=0.99)
    again = _run(bounds, storage)
    assert bounds.metrics == {"score_cache_hits": 1.0}
    assert again["dinov2_sim"].equals(out["dinov2_sim"]) and again["ssim"].equals(out["ssim"])
    assert again["drop_reason"][0].as_py() == "above_ssim" and again["drop_reason"][5].as_py() == "below_ssim"

    # Off (the tiny profile's default): no consistency column, nothing computed, the cache still used.
    off = _stage()
    plain = _run(off, storage)
    assert off.metrics == {"score_cache_hits": 1.0}
    assert "dinov2_sim" not in plain.column_names and "ssim" not in plain.column_names
    assert plain["status"].to_pylist() == ["kept"] * 6
