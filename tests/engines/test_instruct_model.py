"""The `instruct_model` engine (issue 21 item 4) on the tiny IP2P model: the diffusers pipeline is called with
the recorded arguments (a spy around the real call), records regenerate bit for bit, generated sources are
P2P's, real sources are the photograph, UNet rows are counted honestly, and every refusal is one line."""

from __future__ import annotations

import inspect
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from editgen.cli.main import main as cli_main
from editgen.engines import instruct_model as im
from editgen.engines import instruct_model_kinds as kinds
from editgen.engines.record import CandidateRecord
from editgen.engines.regenerate import regenerate
from editgen.p2p.candidates import CandidateSpace, sample_requests
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import ConfigError
from tests.support import ROOT, cli_env, error_line

pytestmark = pytest.mark.usefixtures("p2p_one_thread")

DEMO = ROOT / "examples" / "demo_captions.jsonl"
SMALL = ["render.steps=2", "render.candidates=2", "render.device=cpu", "render.resources.num_cpus=1"]
ROWS = {"id": ["a", "b", "long", "none"], "caption": ["a photo of a cat on a bench"] * 4,
        "edited_caption": ["a photo of a dog on a bench", "a photo of a cat on a sofa"] * 2,
        "edit_kind": ["replace"] * 4,
        "instruction": ["make the cat a dog", "put it on a sofa", "make it " + "very " * 90 + "red", None]}


def _photo(width: int = 48, height: int = 32) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx) * np.cos(5 * yy)], -1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def _stage(*overrides: str):
    from editgen.stages.render import RenderStage

    stage = RenderStage(build_config(profile="tiny", overrides=["render.engine=instruct_model", *SMALL, *overrides]))
    stage.preflight()
    stage.setup()
    return stage


class Spy:
    """Records the arguments of every call of the real pipeline class's __call__, then makes the real call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from diffusers import StableDiffusionInstructPix2PixPipeline as cls

        self.calls: list[dict] = []
        real = cls.__call__

        def spy(pipe, *args, **kwargs):
            self.calls.append({**kwargs, "seed": kwargs["generator"].initial_seed()})
            return real(pipe, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)


class RowCounter:
    """UNet rows actually evaluated (batch rows per forward call), per UNet, while installed."""

    def __init__(self, **unets) -> None:
        self.rows = dict.fromkeys(unets, 0)
        self.hooks = [u.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, u in unets.items()]

    def _hook(self, name):
        def count(module, args, kwargs):
            self.rows[name] += int(kwargs.get("sample", args[0] if args else None).shape[0])
        return count

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


@pytest.fixture(scope="module")
def generated():
    stage = _stage()
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        engine = stage.engines["instruct_model"]
        counter = RowCounter(base=stage.runtime.pipeline.pipe.unet, edit=engine.model.pipe.unet)
        try:
            out = stage.process_partition(pa.table(ROWS)).to_pylist()
        finally:
            counter.remove()
    return stage, out, spy.calls, counter.rows


def _kept(out):
    return [r for r in out if r["status"] == "kept"]


def test_the_pipeline_is_called_with_the_recorded_arguments(generated):
    _, out, calls, _ = generated
    kept = _kept(out)
    assert len(kept) == 4 and len(calls) == 4
    for r, call in zip(kept, calls, strict=True):
        rec = CandidateRecord.from_row(json.loads(r["params"]))
        p = rec.params
        assert rec.format == "editgen.instruct_model/1" and r["render_mode"] == "instruct_model:ip2p"
        assert call["prompt"] == p["instruction"] == ROWS["instruction"][ROWS["id"].index(r["id"])]
        assert call["guidance_scale"] == p["guidance_scale"]
        assert call["image_guidance_scale"] == p["image_guidance_scale"]
        assert 5.0 <= p["guidance_scale"] <= 10.0 and 1.2 <= p["image_guidance_scale"] <= 1.8  # ip2p's default draws
        assert call["num_inference_steps"] == p["steps"] == 2 and call["seed"] == rec.seed == r["seed"]
        assert call["negative_prompt"] is None and call["output_type"] == "np"
        assert {k: v for k, v in call.items() if k not in ("image", "generator", "output_type", "seed")} == \
            kinds.edit_call(p)
        assert p["edit_model"]["class"] == "StableDiffusionInstructPix2PixPipeline" and p["edit_model"]["tiny"]
    assert len({json.loads(r["params"])["guidance_scale"] for r in kept}) == 4  # drawn per candidate


def test_pairs_refused_before_any_unet_work(generated):
    _, out, calls, _ = generated
    reasons = {r["id"]: r["drop_reason"] for r in out if r["status"] == "dropped"}
    assert reasons == {"long": "render_edit_truncated", "none": "render_invalid_pair"}
    assert {c["prompt"] for c in calls} == set(ROWS["instruction"][:2])


def test_records_regenerate_bit_for_bit_and_renders_are_deterministic(generated):
    stage, out, _, _ = generated
    again = stage.process_partition(pa.table(ROWS)).to_pylist()  # the same partition, rendered again
    assert [(r["params"], r["input_image"], r["edited_image"]) for r in again] == \
        [(r["params"], r["input_image"], r["edited_image"]) for r in out]
    for r in _kept(out):
        stored = json.loads(r["params"])
        regen = regenerate(stored, device="cpu")  # a fresh runtime: both models loaded from the record
        assert (regen.input_image, regen.edited_image) == (r["input_image"], r["edited_image"])
        assert regen.record.params == CandidateRecord.from_row(stored).params
        assert r["edited_image"] != r["input_image"]


def test_unet_row_steps_are_the_rows_actually_evaluated(generated):
    """IP2P with both guidances on: 3 rows per evaluation; the generated source: 2 (CFG) per evaluation."""
    _, out, _, rows = generated
    kept = [CandidateRecord.from_row(json.loads(r["params"])) for r in _kept(out)]
    assert rows == {"base": 4 * 2 * 2, "edit": 4 * 3 * 2}  # 4 candidates, 2 steps
    assert [r.compute.unet_row_steps for r in kept] == [(rows["base"] + rows["edit"]) / 4] * 4 == [10.0] * 4
    assert all(r.compute.flops_per_row_step > 0 for r in kept)


def test_generated_source_is_p2ps_source_for_the_same_candidate(generated):
    """Same seed and CFG scale as P2P's candidate of the same index, on P2P's generation path: the same
    pixels up to one 8-bit level (P2P renders the source in one batch with its edit rows)."""
    from editgen.stages.render import RenderStage

    _, out, _, _ = generated
    p2p = RenderStage(build_config(profile="tiny", overrides=SMALL))
    p2p.setup()
    theirs = {(r["id"], r["candidate"]): r for r in _kept(p2p.process_partition(pa.table(ROWS)).to_pylist())}
    for r in _kept(out):
        p2p_row = theirs[(r["id"], r["candidate"])]
        p2p_rec = json.loads(p2p_row["params"])
        src = json.loads(r["params"])["source"]
        assert (r["seed"], src["guidance"], src["source_prompt"]) == (p2p_row["seed"], p2p_rec["guidance"],
                                                                      p2p_rec["source_prompt"])
        a, b = (np.asarray(Image.open(io.BytesIO(x)), dtype=int) for x in (r["input_image"], p2p_row["input_image"]))
        assert np.abs(a - b).max() <= 1


def test_the_engine_and_its_config_import_no_torch():
    """The config check imports the engine by name: validating a config must not pull torch in."""
    code = ("import sys; from editgen.pipeline.config import build_config; "
            "import editgen.engines.instruct_model_load; "
            "build_config(profile='tiny', overrides=['render.engine=instruct_model']); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_settings_leave_todays_hashes_and_recompute_render_on():
    from editgen.pipeline.runner import stage_hashes

    base = stage_hashes(build_config(profile="tiny"))
    assert stage_hashes(build_config(profile="tiny", overrides=["render.instruct_model.pipeline=ip2p"])) == base
    for change in (["render.engine=instruct_model"], ["render.engine=instruct_model", "render.instruct_model.steps=3"]):
        moved = stage_hashes(build_config(profile="tiny", overrides=change))
        assert [k for k in base if moved[k] != base[k]] == ["render", "filter", "shard"], change


@pytest.mark.parametrize("tie", [True, False])
def test_source_draws_are_p2ps_draws(tie):
    settings = build_config(profile="tiny", overrides=[f"render.tie_windows={str(tie).lower()}"]).render
    space = CandidateSpace(p_range=tuple(settings.p_range), guidance_range=tuple(settings.guidance_range),
                           tie_windows=tie)
    reqs = sample_requests("pair-9", "a cat", "a dog", 5, space=space)
    assert [im.source_draw("pair-9", i, settings) for i in range(5)] == [(r.seed, r.guidance) for r in reqs]


def test_real_source_is_the_photograph_and_regenerates_with_it(monkeypatch):
    stage = _stage("render.source=real")
    rows = {k: v[:2] for k, v in ROWS.items()}
    photo = _photo()
    rows.update(image=[photo] * 2, image_width=[48, 48], image_height=[32, 32])
    spy = Spy(monkeypatch)
    out = _kept(stage.process_partition(pa.table(rows)).to_pylist())
    assert len(out) == 4 and len(spy.calls) == 4
    assert stage.runtime._pipeline is None  # a real source never loads the base model
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    for r, call in zip(out, list(spy.calls), strict=True):
        rec = CandidateRecord.from_row(json.loads(r["params"]))
        assert call["guidance_scale"] == rec.params["guidance_scale"] and call["seed"] == rec.seed
        assert np.array_equal(np.asarray(call["image"]), pixels)  # the edit model saw the photograph
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r["input_image"]))), pixels)
        assert Image.open(io.BytesIO(r["edited_image"])).size == (48, 32)
        assert rec.params["source"]["kind"] == "real" and rec.compute.unet_row_steps == 3 * 2  # no source rows
        regen = regenerate(json.loads(r["params"]), device="cpu", image=photo)
        assert (regen.input_image, regen.edited_image) == (r["input_image"], r["edited_image"])
    with pytest.raises(ValueError, match="only with its source image"):
        regenerate(json.loads(out[0]["params"]), device="cpu")
    with pytest.raises(ValueError, match="pixels sha256"):
        regenerate(json.loads(out[0]["params"]), device="cpu", image=_photo(40, 32))


def test_without_cfg_one_row_per_evaluation():
    """guidance <= 1 turns IP2P's guidance off (its rule: guidance > 1 and image guidance >= 1): 1 row."""
    stage = _stage("render.instruct_model.guidance_range=[1.0, 1.0]", "render.candidates=1")
    counter = RowCounter(edit=stage.engines["instruct_model"].model.pipe.unet)
    try:
        out = _kept(stage.process_partition(pa.table({k: v[:1] for k, v in ROWS.items()})).to_pylist())
    finally:
        counter.remove()
    rec = CandidateRecord.from_row(json.loads(out[0]["params"]))
    assert counter.rows["edit"] == 1 * 2 and kinds.edit_rows(rec.params) == 1
    assert rec.compute.unet_row_steps == 1 * 2 + kinds.source_rows(rec.params["source"]) == 2 + 4


def test_call_arguments_and_rows_of_each_pipeline_kind():
    base = {"instruction": "make it snow", "steps": 28, "guidance_scale": 2.5, "image_guidance_scale": None,
            "negative_prompt": None, "height": 512, "width": 768}
    flux = {**base, "pipeline": "flux_kontext"}
    assert kinds.edit_call(flux) == {"prompt": "make it snow", "num_inference_steps": 28, "guidance_scale": 2.5,
                                     "height": 512, "width": 768, "max_area": 512 * 768}
    qwen = {**base, "pipeline": "qwen_image_edit", "guidance_scale": 4.0, "negative_prompt": " "}
    assert kinds.edit_call(qwen) == {"prompt": "make it snow", "num_inference_steps": 28, "true_cfg_scale": 4.0,
                                     "negative_prompt": " ", "height": 512, "width": 768}
    no_negative = {**qwen, "negative_prompt": None}
    assert (kinds.edit_rows(flux), kinds.edit_rows(qwen), kinds.edit_rows(no_negative)) == (1, 2, 1)
    ip2p = {**base, "pipeline": "ip2p", "guidance_scale": 7.5, "image_guidance_scale": 1.5}
    import diffusers

    for params in (flux, qwen, ip2p):  # every argument is one the installed class's __call__ takes
        takes = inspect.signature(getattr(diffusers, kinds.PIPELINES[params["pipeline"]].class_name).__call__)
        assert {*kinds.edit_call(params), "image", "generator", "output_type"} <= set(takes.parameters), params
    assert [kinds.edit_rows({**ip2p, "guidance_scale": g, "image_guidance_scale": i})
            for g, i in ((7.5, 1.5), (7.5, 1.0), (7.5, 0.9), (1.0, 1.5))] == [3, 3, 1, 1]


@pytest.mark.parametrize(("setting", "words"), [
    (["pipeline=flux_kontext", "image_guidance_range=[1, 2]"], "image_guidance_range: render.instruct_model."
     "pipeline=flux_kontext has no image guidance"),
    (["pipeline=qwen_image_edit", "scheduler=ddim"], "scheduler: render.instruct_model.pipeline=qwen_image_edit "
     "runs the sampler it ships with"),
    (["pipeline=flux_kontext", "negative_prompt=blurry"], "negative_prompt: render.instruct_model.pipeline="
     "flux_kontext takes none"),
    (["pipeline=flux_kontext", "model=tiny"], "model: the tiny test model is an ip2p model, not flux_kontext"),
    (["guidance_range=[9, 2]"], "guidance_range: lower bound 9.0 is above upper bound 2.0"),
    (["pipeline=nope"], "render.instruct_model.pipeline: input should be 'ip2p', 'flux_kontext' or"),
])
def test_bad_settings_are_one_config_line(setting, words, capsys):
    sets = [a for kv in ["render.engine=instruct_model", *[f"render.instruct_model.{s}" for s in setting]]
            for a in ("--set", kv)]
    assert cli_main(["config", "--profile", "tiny", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def _run(tmp_path, capsys, *sets: str) -> str:
    """`editgen run` that must stop before any stage: exit 2, one line, nothing written to OUT."""
    out = tmp_path / "out"
    args = [a for kv in ["render.engine=instruct_model", *sets] for a in ("--set", kv)]
    assert cli_main(["run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out), "--no-progress",
                     *args]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("editgen:")]
    assert len(err) == 1 and not out.exists(), err
    return err[0]


def test_a_pipeline_class_diffusers_lacks_is_one_line(tmp_path, capsys, monkeypatch):
    kind = kinds.PIPELINES["flux_kontext"]
    monkeypatch.setitem(kinds.PIPELINES, "flux_kontext", type(kind)(**{**kind.__dict__, "class_name": "FluxKontextV9"}))
    line = _run(tmp_path, capsys, "render.instruct_model.pipeline=flux_kontext")
    assert "render.instruct_model.pipeline: flux_kontext needs diffusers.FluxKontextV9, which the installed " \
           "diffusers" in line and "lacks" in line


def test_a_model_that_cannot_load_is_one_line(tmp_path, capsys):
    from editgen.tiny.sd import build_tiny_sd

    sd = build_tiny_sd()  # a pipeline folder of another class
    assert f"model: {sd} holds a StableDiffusionPipeline, not the StableDiffusionInstructPix2PixPipeline" in \
        _run(tmp_path, capsys, f"render.instruct_model.model={sd}")
    assert f"model: {tmp_path} is not a diffusers pipeline folder" in \
        _run(tmp_path, capsys, f"render.instruct_model.model={tmp_path}")
    assert "model: '/no/such/model' is neither a local folder nor a hub id" in \
        _run(tmp_path, capsys, "render.instruct_model.model=/no/such/model")


def test_a_hub_id_offline_is_one_line_through_the_cli(tmp_path):
    """No hub here: the default model of `flux_kontext` cannot be fetched; one line naming model and setting."""
    proc = subprocess.run(
        [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO), "--out",
         str(tmp_path / "out"), "--no-progress", "--set", "render.engine=instruct_model", "--set",
         "render.instruct_model.pipeline=flux_kontext"],
        cwd=ROOT, env={**cli_env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "render.instruct_model.model: cannot load 'black-forest-labs/FLUX.1-Kontext-dev' (render.instruct_model." \
           "pipeline=flux_kontext): not a local folder, not in the Hugging Face cache" in error_line(proc)


def test_weights_that_fail_to_load_in_the_actor_are_one_line(tmp_path):
    from editgen.engines.instruct_model_load import load_edit_model
    from editgen.tiny.ip2p import build_tiny_ip2p

    broken = tmp_path / "broken"
    shutil.copytree(build_tiny_ip2p(), broken)
    for f in (broken / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConfigError) as err:
        load_edit_model({"class": "StableDiffusionInstructPix2PixPipeline", "model": str(broken),
                         "dtype": "float32"}, "cpu")
    assert len(str(err.value).splitlines()) == 1 and f"cannot load '{broken}' as Stable" in str(err.value)


def test_a_transformers_flops_are_measured_on_its_first_call():
    """The FLOP count taken around a denoiser's first real call (how flux/qwen transformers are measured)
    is the count of its weightless twin, on the tiny IP2P UNet; the output is unchanged by counting."""
    import torch

    from editgen.engines.instruct_model_render import first_call_flops
    from editgen.p2p.compute import unet_flops

    stage = _stage()
    unet = stage.engines["instruct_model"].model.pipe.unet
    sink: dict = {}
    x = torch.randn(3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        with first_call_flops(unet, sink, (64, 64)):
            counted = unet(x, 10, encoder_hidden_states=text).sample
        plain = unet(x, 10, encoder_hidden_states=text).sample
    assert torch.equal(counted, plain)
    assert sink[(64, 64)] == unet_flops(unet, 64, 64, 77, None, 8).total


@pytest.mark.slow
def test_tiny_run_through_the_cli_gives_valid_shards(tmp_path, ray_address):
    out = tmp_path / "out"
    sets = ["render.engine=instruct_model", "ingest.limit=4", "render.steps=2", "render.candidates=2"]
    run = subprocess.run([sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO),
                          "--out", str(out), "--no-progress", "--ray-address", ray_address,
                          *[a for kv in sets for a in ("--set", kv)]],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    valid = subprocess.run([sys.executable, "-m", "editgen.cli.main", "validate", str(out)], cwd=ROOT, env=cli_env(),
                           capture_output=True, text=True, timeout=300)
    assert valid.returncode == 0 and "valid:" in valid.stdout, valid.stdout + valid.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compute"]["candidates"] == 8 and manifest["compute"]["unet_row_steps"] == 8 * 10.0
