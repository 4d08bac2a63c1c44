"""The inpaint engine (issue 21 item 3) on the tiny models, CPU: both re-generation paths (a tiny 9-channel
inpainting UNet loaded through from_pretrained, and latent blending with the base UNet) keep every pixel outside
the mask equal to the source's, are deterministic and regenerate bit for bit from the stored record; the region
is where the changed word attends; out-of-range regions drop the pair with their reason before any inpainting UNet
call; a real photograph's region is DiffEdit's; and `editgen run --profile tiny --set render.engine=inpaint`
publishes shards `editgen validate` accepts."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from editgen.engines.base import PairRejected, engine_class
from editgen.engines.inpaint_pairs import shared_unet
from editgen.engines.record import CandidateRecord
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.p2p import masks
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import ConfigError
from tests.support import ROOT, cli_env, smooth_photo

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # tests/conftest.py

STEPS = 3
BASE = ["render.engine=inpaint", "render.device=cpu", f"render.steps={STEPS}", "render.candidates=2",
        "render.resources.num_cpus=1"]
ROW = {"id": "pair-1", "caption": "a photo of a cat sitting on a bench",
       "edited_caption": "a photo of a dog sitting on a bench"}


def _settings(*overrides: str, profile: str = "tiny"):
    return build_config(profile=profile, overrides=[*BASE, *overrides]).render


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """The tiny SD base model as a render actor loads it (shared by the module's engines)."""
    return Runtime.for_stage(_settings(), 1)


def _engine(runtime: Runtime, *overrides: str):
    engine = engine_class("inpaint")(runtime, _settings(*overrides))
    engine.setup()
    engine.begin(pa.table({"id": ["x"], "image": [b""]}))
    return engine


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _counting(module: torch.nn.Module, calls: list[str], name: str):
    return module.register_forward_pre_hook(lambda *_: calls.append(name))


@pytest.mark.parametrize("path", ["unet", "blend"])
def test_outside_the_mask_is_the_source_and_the_record_regenerates_it(runtime, path):
    overrides = ["render.inpaint.model=tiny-inpaint"] if path == "unet" else ["render.inpaint.model=null"]
    engine = _engine(runtime, *overrides)
    calls: list[str] = []
    hooks = [_counting(runtime.pipeline.pipe.unet, calls, "base")]
    if path == "unet":
        hooks.append(_counting(shared_unet(runtime, engine.unet_ref), calls, "inpaint"))
    try:
        records = engine.draw(ROW, 2)
        after_draw = list(calls)
        outs = engine.render(records)
    finally:
        for h in hooks:
            h.remove()
    assert after_draw == ["base"] * STEPS  # the source pass: one CFG call per step, before any candidate
    assert calls[STEPS:] == ["inpaint" if path == "unet" else "base"] * (2 * STEPS)
    assert [engine.mode(o.record) for o in outs] == ["inpaint" if path == "unet" else "inpaint_blend"] * 2
    for out in outs:
        source, edited, alpha = _pixels(out.input_image), _pixels(out.edited_image), _pixels(out.mask)
        outside = alpha == 0
        assert outside.any() and (edited[outside] == source[outside]).all()  # byte for byte
        assert (edited[alpha == 255] != source[alpha == 255]).any()  # the region was re-generated
        assert masks.checksum(alpha == 255) == out.record.mask["sha256"] == records[0].mask["sha256"]
        assert out.record.mask["source"] == "cross_attention" and out.record.mask["words"] == ["cat", "dog"]
        assert engine.row_steps(out.record) == 2 * STEPS
    assert [o.extra_row_steps for o in outs] == [2 * STEPS, 0.0]  # the source pass, charged once per pair
    assert outs[0].edited_image != outs[1].edited_image  # each candidate its own seed and guidance
    stored = [json.loads(o.record.to_json()) for o in outs]
    again = [regenerate(s, device="cpu") for s in stored]  # from the record alone: models loaded from it
    assert [(a.input_image, a.edited_image, a.mask) for a in again] == \
        [(o.input_image, o.edited_image, o.mask) for o in outs]
    twice = _engine(runtime, *overrides).render(records)  # deterministic
    assert [o.edited_image for o in twice] == [o.edited_image for o in outs]


def test_the_region_is_where_the_changed_word_attends(runtime, monkeypatch):
    """End to end on the tiny model: the source pass's accumulated maps of the changed words, captured as they
    are turned into the region, are the region (p2p.masks at the record's settings), and each word's strongest
    cell lies in it."""
    import editgen.p2p.generate as generate

    seen = []
    original = generate.regions

    def spy(recorder, plan):
        seen.append(None if recorder is None else recorder.acc.clone())
        return original(recorder, plan)

    monkeypatch.setattr(generate, "regions", spy)
    engine = _engine(runtime, "render.inpaint.model=null")
    rec = engine.draw({**ROW, "edited_caption": "a photo of a cat sitting on a sofa"}, 1)[0]
    (acc,) = seen
    words = rec.params["region"]["words"]
    assert words == ["bench", "sofa"] and acc.shape[0] == 2  # bench: source row; sofa: probed
    region = engine.sources[rec.pair_id].region.mask
    r = rec.params["region"]
    assert torch.equal(region, masks.union([masks.attention_region(g, tuple(region.shape), r["threshold"], r["dilate"],
                                                                   r["smooth"], r["normalize"]) for g in acc]))
    for grid in acc[:, 0]:
        top, side = int(grid.flatten().argmax()), grid.shape[-1]
        scale = region.shape[-1] // side
        assert region[top // side * scale, top % side * scale]  # the word's strongest cell is in the region
    assert 0 < rec.mask["area_fraction"] < 1


SMALL = ["render.inpaint.min_area=1.0", "render.inpaint.max_area=1.0"]  # no region covers it all (min-max)
LARGE = ["render.inpaint.max_area=0.0", "render.inpaint.min_area=0.0"]  # every region has its peak


@pytest.mark.parametrize(("area", "reason"), [(SMALL, "inpaint_mask_too_small"), (LARGE, "inpaint_mask_too_large")])
def test_out_of_range_regions_drop_the_pair_before_any_inpainting_unet_call(runtime, area, reason):
    from editgen.stages.render import RenderStage

    cfg = build_config(profile="tiny", overrides=[*BASE, "render.inpaint.model=tiny-inpaint", *area])
    stage = RenderStage(cfg)
    stage.runtime = runtime
    stage.engines = {"inpaint": engine_class("inpaint")(runtime, cfg.render)}
    stage.engines["inpaint"].setup()
    calls: list[str] = []
    hooks = [_counting(runtime.pipeline.pipe.unet, calls, "base"),
             _counting(shared_unet(runtime, stage.engines["inpaint"].unet_ref), calls, "inpaint")]
    try:
        out = stage.process_partition(pa.table({k: [v, v.replace("pair-1", "pair-2")] for k, v in ROW.items()}))
    finally:
        for h in hooks:
            h.remove()
    assert out.column("status").to_pylist() == ["dropped"] * 2
    assert out.column("drop_reason").to_pylist() == [reason] * 2
    assert calls == ["base"] * (2 * STEPS)  # two source passes, no inpainting UNet call
    assert stage.metrics["unet_row_steps"] == stage.metrics["inpaint_source_row_steps"] == 2 * 2 * STEPS
    assert stage.metrics["inpaint_dropped_pairs"] == 2


def test_pairs_without_a_region_to_locate_are_refused_before_the_source_pass(runtime):
    engine = _engine(runtime, "render.inpaint.model=null")
    calls: list[str] = []
    hook = _counting(runtime.pipeline.pipe.unet, calls, "base")
    try:
        with pytest.raises(PairRejected) as same:
            engine.draw({**ROW, "edited_caption": ROW["caption"] + "!"}, 1)
        long = " ".join(["word"] * 80)
        with pytest.raises(PairRejected) as cut:
            engine.draw({**ROW, "caption": f"{long} cat", "edited_caption": f"{long} dog"}, 1)
    finally:
        hook.remove()
    assert (same.value.reason, cut.value.reason) == ("inpaint_no_mask_words", "render_edit_truncated")
    assert calls == []


def test_a_real_photo_is_edited_inside_diffedits_region_only(runtime):
    photo = smooth_photo()
    engine = _engine(runtime, "render.source=real", "render.inpaint.model=tiny-inpaint",
                     "render.inpaint.diffedit.n_draws=2")
    (out,) = engine.render(engine.draw({**ROW, "image": photo}, 1))
    source, edited, alpha = _pixels(photo), _pixels(out.edited_image), _pixels(out.mask)
    assert out.input_image == photo  # the photograph's own pixels, re-encoded losslessly
    assert (edited[alpha == 0] == source[alpha == 0]).all() and (alpha == 0).any()
    assert out.record.mask["source"] == "diffedit" and out.extra_row_steps == 2 * 2  # DiffEdit's 2 x n_draws rows
    again = regenerate(json.loads(out.record.to_json()), device="cpu", image=photo)
    assert again.edited_image == out.edited_image and again.mask == out.mask
    with pytest.raises(ValueError, match="source image"):
        regenerate(json.loads(out.record.to_json()), device="cpu")


def test_sdxl_base_with_its_inpainting_unet(tmp_path):
    """SDXL's added conditioning reaches the SDXL inpainting UNet (auto picks the tiny SDXL one)."""
    rt = Runtime.for_stage(_settings("render.model=tiny-sdxl", "render.scheduler=ddim"), 1)
    engine = _engine(rt)
    assert engine.unet_label == "tiny-sdxl-inpaint"
    (out,) = engine.render(engine.draw(ROW, 1))
    source, edited, alpha = _pixels(out.input_image), _pixels(out.edited_image), _pixels(out.mask)
    assert (edited[alpha == 0] == source[alpha == 0]).all()
    again = regenerate(json.loads(out.record.to_json()), rt)
    assert again.edited_image == out.edited_image


def test_bad_inpaint_settings_are_one_line(runtime):
    base = runtime.model.model  # a 4-channel model: not an inpainting UNet
    with pytest.raises(ConfigError, match="takes 9 input channels, this one 4"):
        _engine(runtime, f"render.inpaint.model={base}")
    edits = 'render.model_edits=[{kind: erase, concept: cat, anchor: ""}]'
    for bad, words in [(["render.inpaint.min_area=0.5", "render.inpaint.max_area=0.4"], "min_area 0.5 is above"),
                       (["render.inpaint.mask.dilate=2"], "dilate must be odd"),
                       ([edits], "model_edits change the base UNet only")]:
        with pytest.raises(ConfigError, match=words):
            _settings(*bad)
    _settings(edits, "render.inpaint.model=null")  # latent blending uses the edited base model


def test_record_round_trips_and_names_everything_it_renders_from(runtime):
    engine = _engine(runtime, "render.inpaint.model=tiny-inpaint")
    rec = engine.draw(ROW, 1)[0]
    row = json.loads(rec.to_json())
    assert CandidateRecord.from_row(row) == rec and row["format"] == "editgen.inpaint/1"
    assert {"source_prompt", "prompt", "guidance", "steps", "scheduler", "height", "width", "source", "region",
            "feather_px", "min_area", "max_area", "unet"} <= set(row)
    assert row["source"]["kind"] == "generated" and row["unet"]["tiny_variant"] == "sd"
    assert 7.5 <= row["guidance"] <= 15 and 7.5 <= row["source"]["guidance"] <= 15


@pytest.mark.slow
def test_cli_run_with_the_inpaint_engine_gives_valid_shards(tmp_path):
    out = tmp_path / "out"
    settings = ["render.engine=inpaint", "ingest.limit=6", "render.steps=2", "render.candidates=2"]
    run = subprocess.run([sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input",
                          str(ROOT / "examples" / "demo_captions.jsonl"), "--out", str(out), "--no-progress",
                          *[a for kv in settings for a in ("--set", kv)]],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    check = subprocess.run([sys.executable, "-m", "editgen.cli.main", "validate", str(out)], cwd=ROOT, env=cli_env(),
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] > 0, manifest
