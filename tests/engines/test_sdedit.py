"""The sdedit engine (issue 21 item 2) on the tiny models: P2P's seeds and source images, determinism and
bit-exact regeneration from the stored record (generated and real sources, SD and SDXL), strength 0 and 1,
UNet row-steps per candidate as the UNet ran them, its settings, and a tiny run through the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from editgen.engines.base import PairRejected
from editgen.engines.p2p import P2PEngine
from editgen.engines.record import CandidateRecord
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.engines.sdedit import SDEditEngine
from editgen.p2p.real import pixels_sha256
from editgen.pipeline.config import build_config
from editgen.pipeline.runner import stage_hashes
from tests.support import ROOT, cli_env, tiny_pipeline

pytestmark = pytest.mark.usefixtures("p2p_one_thread")

ROW = {"id": "pair-1", "caption": "a photo of a house by a lake", "edited_caption": "a watercolor painting of a "
       "house by a lake", "edit_kind": "refine", "changed_words": ["watercolor", "painting"]}
SMALL = ["render.steps=4", "render.height=32", "render.width=32", "render.candidates=3"]


def engine(p2p, *overrides: str, cls=SDEditEngine):
    cfg = build_config(profile="tiny", overrides=[*SMALL, *(["render.engine=sdedit"] if cls is SDEditEngine else []),
                                                  *overrides])
    return cls(Runtime.wrap(p2p), cfg.render)


def photo(size: int = 32, phase: float = 0.0) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx + phase) * np.cos(5 * yy)], -1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def real_row(image: bytes, size: int = 32) -> dict:
    return {**ROW, "image": image, "image_width": size, "image_height": size}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def stored(rec: CandidateRecord) -> dict:
    return json.loads(rec.to_json())


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory, "sdxl", "ddim")


def test_draws_p2ps_seed_and_scale_and_renders_its_source(p2p):
    """Candidate i's seed and source CFG scale are what P2P draws for candidate i (untied windows and shared
    sources too), so its generated source is the p2p engine's image: the same bytes, or pixels within 1/255
    where the source renders in a batch of its own (P2P batches it with its edit row: GEMM rounding, latents
    ~3e-5 apart on CPU float32)."""
    for extra in ([], ["render.tie_windows=false"], ["render.shared_sources=3"]):
        sd, pp = engine(p2p, *extra), engine(p2p, *extra, cls=P2PEngine)
        mine, theirs = sd.draw(ROW, 3), pp.draw(ROW, 3)
        assert [(r.params["source"]["seed"], r.params["source"]["guidance"]) for r in mine] == \
            [(r.seed, r.params["guidance"]) for r in theirs], extra
        assert all(0.5 <= r.params["strength"] <= 0.8 for r in mine) and sd.draw(ROW, 3) == mine
    sd, pp = engine(p2p), engine(p2p, cls=P2PEngine)
    assert sd.draw(ROW, 1, start=1) == sd.draw(ROW, 3)[1:2]  # early stop's rounds draw the same candidates
    for a, b in zip(sd.render(sd.draw(ROW, 3)), pp.render(pp.draw(ROW, 3)), strict=True):
        assert np.abs(pixels(a.input_image) - pixels(b.input_image)).max() <= 1
    assert {r.params["guidance"] for r in engine(p2p, "render.sdedit.guidance_range=[3, 3]").draw(ROW, 3)} == {3.0}


@pytest.mark.parametrize("extra", [[], ["render.scheduler=euler_a"], ["render.shared_sources=3"]],
                         ids=["ddim", "euler_a", "shared"])
def test_deterministic_and_regenerates_bit_for_bit(p2p, extra):
    """Rendered twice: the same bytes; each record, from its stored JSON alone, regenerates them (a stochastic
    sampler's noise comes from the record's seed; a shared source is re-rendered from its group's seed)."""
    sd = engine(p2p, *extra)
    recs = sd.draw(ROW, 3)
    first, second = sd.render(recs), sd.render(recs)
    assert [(o.input_image, o.edited_image) for o in first] == [(o.input_image, o.edited_image) for o in second]
    assert len({o.edited_image for o in first}) == 3
    for out in first:
        again = regenerate(stored(out.record), Runtime.wrap(p2p))
        assert (again.input_image, again.edited_image) == (out.input_image, out.edited_image)
    if extra == ["render.shared_sources=3"]:
        assert len({o.input_image for o in first}) == 1


def test_real_source_regenerates_from_the_record_and_the_photograph(p2p):
    sd = engine(p2p, "render.source=real")
    sd.begin(pa.table({"id": ["x"], "image": [b""]}))
    outs = sd.render(sd.draw(real_row(photo()), 2))
    for out in outs:
        assert (pixels(out.input_image) == pixels(photo())).all()  # the photograph itself is the input
        assert out.record.params["source"] == {"kind": "real", "pixels_sha256": pixels_sha256(
            Image.open(io.BytesIO(photo())))}
        again = regenerate(stored(out.record), Runtime.wrap(p2p), image=photo())
        assert (again.input_image, again.edited_image) == (out.input_image, out.edited_image)
    with pytest.raises(ValueError, match="are not the record's"):
        regenerate(stored(outs[0].record), Runtime.wrap(p2p), image=photo(phase=1.0))
    with pytest.raises(ValueError, match="only with its source image"):
        regenerate(stored(outs[0].record), Runtime.wrap(p2p))


def test_strength_zero_returns_the_source(p2p):
    """Strength 0 runs no UNet step: a generated source comes back as the same bytes; a photograph as one VAE
    round trip of it (posterior mean, decoded by diffusers' VAE directly: within 1/255, scaling rounding)."""
    sd = engine(p2p)
    rec = sd.draw(ROW, 1)[0].with_params(strength=0.0)
    out = sd.render([rec])[0]
    assert out.result.evals == 0 and out.edited_image == out.input_image
    real = engine(p2p, "render.source=real")
    real.begin(pa.table({"image": [b""]}))
    rec = real.draw(real_row(photo()), 1)[0].with_params(strength=0.0)
    out = real.render([rec])[0]
    pipe = p2p.pipe
    with torch.no_grad():
        x = pipe.image_processor.preprocess(Image.open(io.BytesIO(photo())).convert("RGB"))
        trip = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean, return_dict=False)[0]
    trip = pipe.image_processor.postprocess(trip, output_type="np")[0]
    assert out.result.evals == 0
    assert np.abs(pixels(out.edited_image) - (trip * 255).round()).max() <= 1


def test_strength_one_does_not_read_the_source(p2p):
    """Strength 1 starts from pure noise (the paper's t0 = 1; module docstring of engines/sdedit_render.py):
    two different sources, the same record seed give exactly the same edit; at 0.7 they do not."""
    sd = engine(p2p)
    rec = sd.draw(ROW, 1)[0]
    other = rec.with_params(source={**rec.params["source"], "seed": 12345})
    for strength, same in ((1.0, True), (0.7, False)):
        a, b = sd.render([rec.with_params(strength=strength), other.with_params(strength=strength)])
        assert a.input_image != b.input_image and (a.edited_image == b.edited_image) is same, strength
    real = engine(p2p, "render.source=real")
    real.begin(pa.table({"image": [b""]}))
    one = real.draw(real_row(photo()), 1)[0].with_params(strength=1.0)
    other_photo = real.draw({**real_row(photo(phase=2.0)), "id": "pair-2"}, 1)[0]
    two = replace(one, pair_id=other_photo.pair_id, params={**one.params, "source": other_photo.params["source"]})
    a, b = real.render([one, two])
    assert a.input_image != b.input_image and a.edited_image == b.edited_image


class UNetRows:
    """Counts the rows the UNet is called on (a forward pre-hook): the UNet row-steps actually run."""

    def __init__(self, unet) -> None:
        self.rows = 0
        self.handle = unet.register_forward_pre_hook(self.count)

    def count(self, module, args) -> None:
        self.rows += int(args[0].shape[0])


@pytest.mark.parametrize("extra", [[], ["render.scheduler=pndm"], ["render.shared_sources=3"],
                                   ["render.sdedit.guidance_range=[1, 1]"], ["render.source=real"]],
                         ids=["ddim", "pndm", "shared", "no-cfg", "real"])
def test_row_steps_are_the_rows_the_unet_ran(p2p, extra):
    """row_steps(record) summed over a group is the UNet rows x evaluations its render ran: (2 E / k for a
    generated source) + 2 E(t0), E(t0) = E - (steps - int(steps t0)); a real source costs no UNet row."""
    sd = engine(p2p, *extra)
    row = real_row(photo()) if "render.source=real" in extra else ROW
    sd.begin(pa.table({"image": [b""]}))
    recs = sd.draw(row, 3)
    counter = UNetRows(p2p.pipe.unet)
    try:
        outs = sd.render(recs)
    finally:
        counter.handle.remove()
    assert sum(sd.row_steps(r) for r in recs) == counter.rows > 0
    for out in outs:
        req, steps = sd.request(out.record), 4
        evals = steps + (1 if "pndm" in str(extra) else 0)
        own = evals - (steps - int(steps * req.strength))
        assert out.result.evals == own
        halves = 1 if req.guidance <= 1 else 2
        source = 0 if not req.generated else 2 * evals / req.source["shared_by"]
        assert sd.row_steps(out.record) == source + halves * own


def test_stage_records_compute_and_regenerate(p2p):
    """Through the render stage: kept rows carry the sdedit record with its compute (row_steps x FLOPs per row),
    and each regenerates from json.loads(params) with the model loaded from the record."""
    from editgen.stages.render import RenderStage

    cfg = build_config(profile="tiny", overrides=[*SMALL, "render.candidates=2", "render.engine=sdedit",
                                                  "render.device=cpu", "render.resources.num_cpus=1"])
    stage = RenderStage(cfg)
    stage.setup()
    rows = pa.table({k: [v, v] if k != "id" else ["a", "b"] for k, v in ROW.items()})
    out = [r for r in stage.process_partition(rows).to_pylist() if r["status"] == "kept"]
    assert len(out) == 4 and {r["render_mode"] for r in out} == {"sdedit"}
    for r in out:
        rec = CandidateRecord.from_row(json.loads(r["params"]))
        engine_ = stage.engines["sdedit"]
        assert rec.format == "editgen.sdedit/1" and rec.compute.unet_row_steps == engine_.row_steps(rec)
        again = regenerate(json.loads(r["params"]), device="cpu")
        assert (again.input_image, again.edited_image) == (r["input_image"], r["edited_image"])


def test_sdxl_generated_and_real_regenerate(xl):
    """SDXL through the same path (its pooled and time conditioning from P2P's encode_prompts; its VAE in its
    own dtype): deterministic and regenerated bit for bit, generated and real."""
    for extra, row in (([], ROW), (["render.source=real"], real_row(photo()))):
        sd = engine(xl, *extra)
        sd.begin(pa.table({"image": [b""]}))
        outs = sd.render(sd.draw(row, 2))
        for out in outs:
            again = regenerate(stored(out.record), Runtime.wrap(xl), image=photo())
            assert (again.input_image, again.edited_image) == (out.input_image, out.edited_image), extra


def test_edit_past_the_token_window_is_dropped_before_rendering(p2p):
    long = " ".join(["a photo of a house by a lake"] * 12)
    sd = engine(p2p)
    rec = sd.draw({**ROW, "caption": long + " at noon", "edited_caption": long + " at night"}, 1)[0]
    with pytest.raises(PairRejected) as err:
        sd.check(rec)
    assert err.value.reason == "render_edit_truncated"
    sd.check(sd.draw(ROW, 1)[0])


@pytest.mark.parametrize(("overrides", "words"), [
    (["render.steps=1"], "render.sdedit.strength_range: a strength of 0.5 re-runs int(1 x 0.5) = 0"),
    (["render.sdedit.strength_range=[0.9, 0.2]"], "strength_range: lower bound 0.9 is above upper bound 0.2"),
    (["render.sdedit.strength_range=[0.5, 1.5]"], "render.sdedit.strength_range"),
    (["render.source=real", "render.shared_sources=3"], "shared_sources > 1 is for generated sources"),
])
def test_bad_settings_are_one_config_line(overrides, words, capsys):
    from editgen.cli.main import main as cli_main

    args = [a for kv in ["render.engine=sdedit", *overrides] for a in ("--set", kv)]
    assert cli_main(["config", "--profile", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_settings_hash_only_where_they_matter():
    base = stage_hashes(build_config(profile="tiny"))
    assert stage_hashes(build_config(profile="tiny", overrides=["render.sdedit.strength_range=[0.5, 0.8]"])) == base
    moved = stage_hashes(build_config(profile="tiny", overrides=["render.engine=sdedit"]))
    assert moved["render"] != base["render"] and moved["instruct"] == base["instruct"]
    tuned = stage_hashes(build_config(profile="tiny", overrides=["render.engine=sdedit",
                                                                  "render.sdedit.strength_range=[0.3, 0.6]"]))
    assert tuned["render"] != moved["render"]


@pytest.mark.slow
def test_cli_run_gives_valid_shards(tmp_path, ray_address):
    """`editgen run --profile tiny --set render.engine=sdedit` end to end (6 captions, 2 candidates of 3 steps),
    then `editgen validate`: every published sample's record is an sdedit one with its compute."""
    out = tmp_path / "out"
    sets = ["render.engine=sdedit", "ingest.limit=6", "render.steps=3", "render.candidates=2"]
    run = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input",
           str(ROOT / "examples" / "demo_captions.jsonl"), "--out", str(out), "--no-progress", "-q",
           "--ray-address", ray_address, *[a for kv in sets for a in ("--set", kv)]]
    proc = subprocess.run(run, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    valid = subprocess.run([sys.executable, "-m", "editgen.cli.main", "validate", str(out)], cwd=ROOT,
                           env=cli_env(), capture_output=True, text=True, timeout=300)
    assert valid.returncode == 0 and "valid: " in valid.stdout, valid.stdout + valid.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"], manifest
