"""Few-step generators under Prompt-to-Prompt (issue 26 item 2): LCM on the tiny SD and SDXL-Turbo's sampler
(Euler ancestral, trailing timesteps, guidance 0 = no CFG) on the tiny SDXL, 2 steps at 64 px, CPU.

The few-step window rule (p2p.controls.few_step_window), CFG-free batches of one UNet row per prompt,
zero windows = the plain diffusers generation, identical prompts = identical rows, and packed and
shared-source records regenerated bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from editgen.engines.p2p_records import render_records, render_shared, sample_candidates, share_sources
from editgen.engines.record import ModelRef
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.p2p.candidates import CandidateSpace
from editgen.p2p.compute import record_compute
from editgen.p2p.controls import EditControl, compile_edit, cross_window_steps, few_step_window, window_steps
from editgen.p2p.generate import RenderRequest, initial_noise, make_scheduler, render, render_one
from editgen.p2p.seq_align import tokenize
from tests.support import tiny_pipeline

SRC = "a photo of a cat sitting on a bench"
EDIT = "a photo of a dog sitting on a bench"
STEPS, SIZE, SEED = 2, 64, 4
#: (fixture, scheduler): LCM on the tiny SD, SDXL-Turbo's sampler on the tiny SDXL.
KINDS = [("sd", "lcm"), ("sdxl", "euler_a_trailing")]

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return {variant: tiny_pipeline(tmp_path_factory, variant, sched) for variant, sched in KINDS}


def _req(control: EditControl, scheduler: str, **kw) -> RenderRequest:
    kw = {"seed": SEED, "steps": STEPS, "height": SIZE, "width": SIZE, "guidance": 0.0, **kw}
    return RenderRequest(SRC, [control], scheduler=scheduler, **kw)


def _plain(p2p, scheduler: str, prompts: list[str]) -> torch.Tensor:
    """The diffusers pipeline itself, guidance 0, from our seeded noise, each row's sampler noise from a
    clone of the group's generator (as the render loop draws it)."""
    z, gen = initial_noise(SEED, (1, 4, SIZE // 8, SIZE // 8))
    gens = []
    for _ in prompts:
        g = torch.Generator("cpu")
        g.set_state(gen.get_state())
        gens.append(g)
    p2p.pipe.scheduler = make_scheduler(scheduler, p2p.base_scheduler_config)
    return p2p.pipe(prompts, latents=z.expand(len(prompts), -1, -1, -1), num_inference_steps=STEPS, guidance_scale=0.0,
                    height=SIZE, width=SIZE, generator=gens, output_type="latent").images


def test_few_step_window_rule():
    assert few_step_window(0.0, 2) == (0, 0) and few_step_window((0.5, 0.5), 4) == (0, 0)  # zero windows
    assert few_step_window(0.1, 1) == (0, 1) and few_step_window(0.1, 4) == (0, 1)  # at least one step
    assert few_step_window(0.3, 2) == (0, 1) and few_step_window(0.6, 2) == (0, 2)
    assert few_step_window(0.3, 10) == (0, 3)  # 0.3 * 10 is 3.0000000000000004: no extra step
    assert few_step_window((0.5, 1.0), 4) == (2, 4) and few_step_window((0.9, 1.0), 2) == (1, 2)
    assert few_step_window(1.0, 3) == (0, 3)
    # the many-step rules are unchanged (records of other samplers render as before)
    assert window_steps(0.3, 2) == (0, 0) and cross_window_steps(0.3, 2) == (0, 0)


def test_windows_compile_by_the_rule(pipes):
    tok = pipes["sd"].tokenizer
    src, tgt = tokenize(tok, SRC), tokenize(tok, EDIT)
    few = compile_edit(EditControl(EDIT, cross_replace=0.3, self_replace=0.3), src, tgt, 2, few_step=True)
    many = compile_edit(EditControl(EDIT, cross_replace=0.3, self_replace=0.3), src, tgt, 2)
    assert few.self_steps == (0, 1) and many.self_steps == (0, 0)
    assert few.alpha[0].any() and not few.alpha[1].any() and not many.alpha.any()


@pytest.mark.parametrize(("variant", "scheduler"), KINDS)
def test_zero_window_is_plain_generation_and_identical_prompts_identical_rows(pipes, variant, scheduler):
    p2p = pipes[variant]
    zero = render_one(p2p, _req(EditControl(EDIT, cross_replace=0.0, self_replace=0.0), scheduler))
    assert torch.equal(zero.latents, _plain(p2p, scheduler, [SRC, EDIT]))
    for control in (EditControl(SRC, mode="replace", cross_replace=1.0, self_replace=1.0),
                    EditControl(SRC, mode="replace", cross_replace=0.3, self_replace=0.3)):
        same = render_one(p2p, _req(control, scheduler))
        assert torch.equal(same.latents[1], same.latents[0])
    edited = render_one(p2p, _req(EditControl(EDIT, cross_replace=0.5, self_replace=0.5), scheduler))
    assert torch.equal(edited.latents[0], zero.latents[0]) and not torch.equal(edited.latents[1], zero.latents[1])


def test_cfg_free_batch_has_one_row_per_prompt(pipes):
    p2p = pipes["sdxl"]
    seen: list[int] = []
    hook = p2p.pipe.unet.register_forward_pre_hook(lambda mod, args: seen.append(int(args[0].shape[0])))
    try:
        reqs = [_req(EditControl(EDIT, cross_replace=0.5), "euler_a_trailing"),
                _req(EditControl(EDIT, cross_replace=0.5), "euler_a_trailing", guidance=7.5)]
        render(p2p, reqs[:1])
        assert seen == [2] * STEPS  # source + edit, no unconditional half
        seen.clear()
        render(p2p, reqs[1:])
        assert seen == [4] * STEPS
    finally:
        hook.remove()
    params = {"guidance": 0.0, "edits": [{}], "steps": STEPS, "scheduler": "euler_a_trailing"}
    assert record_compute(params, 1).unet_row_steps == 2 * STEPS
    assert record_compute(params, 1, share=4).unet_row_steps == 1.25 * STEPS


@pytest.mark.parametrize(("variant", "scheduler"), KINDS)
def test_packed_and_shared_records_regenerate_bit_for_bit(pipes, variant, scheduler):
    p2p = pipes[variant]
    model = ModelRef(p2p.model, "float32")
    space = CandidateSpace(steps=STEPS, height=SIZE, width=SIZE, scheduler=scheduler, guidance_range=(0.0, 0.0))
    recs = sample_candidates("pair-fs", SRC, EDIT, 4, model=model, space=space)
    assert all(r.params["guidance"] == 0.0 and r.params["scheduler"] == scheduler for r in recs)
    packed = render_records(p2p, recs[:2], max_rows=4)
    shared = render_shared(p2p, share_sources(recs, 2)[2:])
    for out in (*packed, *shared):
        again = regenerate(json.loads(out.record.to_json()), Runtime.wrap(p2p, model))
        assert (again.input_image, again.edited_image) == (out.input_image, out.edited_image)
        assert torch.equal(again.result.latents, out.result.latents)
    assert "packed" in packed[0].record.params and "shared_source" in shared[0].record.params
    assert shared[0].input_image == shared[1].input_image  # one source for the group


def test_sdxl_turbo_profile_validates():
    from editgen.engines.p2p import P2PEngine
    from editgen.p2p import compute
    from editgen.pipeline.config import build_config
    from tests.support import ROOT

    cfg = build_config("sdxl-turbo")
    r = cfg.render
    assert (r.model, r.scheduler, tuple(r.guidance_range), r.height) == ("stabilityai/sdxl-turbo",
                                                                        "euler_a_trailing", (0.0, 0.0), 512)
    assert 1 <= r.steps <= 4
    P2PEngine.check_settings(r)
    recipe = compute.profile_recipe(r, cfg.filter.top_k)
    assert recipe.rows_per_candidate == 1 + 1 / r.shared_sources  # CFG-free: one row per prompt
    # the tiny SDXL with the same render recipe (examples/turbo-tiny.yaml) validates on the tiny profile
    tiny = build_config("tiny", files=[str(ROOT / "examples" / "turbo-tiny.yaml")])
    assert (tiny.render.model, tiny.render.scheduler, tiny.render.guidance_range[1]) == ("tiny-sdxl",
                                                                                         "euler_a_trailing", 0.0)
    P2PEngine.check_settings(tiny.render)


@pytest.mark.slow  # counts FLOPs of SD 1.5's and SDXL's UNets (meta device): ~30-50 s on 2 busy cores
def test_sdxl_turbo_costs_under_a_hundredth_of_ip2p_per_kept_sample():
    from bench.bench_render import turbo_estimate
    from editgen.p2p import compute

    sd15 = compute.measure_unet_flops(compute.sd15_unet(), 512, 512).total
    est = turbo_estimate(sd15)
    assert est["unet_flops"]["total"] > 1.5 * sd15  # SDXL's UNet, not SD 1.5's
    assert est["pass"] and est["ratio"] <= 0.01 and est["ip2p"]["flops_per_row"] == sd15


def test_lcm_distilled_unet_is_refused_in_one_line(tmp_path):
    """A UNet with a guidance embedding (time_cond_proj_dim) would render without it: refused on the
    driver (a local folder) and on load, while the fused-LCM-LoRA (plain UNet) path renders above."""
    import shutil

    from editgen.engines.runtime import prepare_models
    from editgen.p2p.models import refuse_guidance_embedding, resolve_model
    from editgen.pipeline.config import build_config
    from editgen.pipeline.errors import ConfigError

    folder = tmp_path / "lcm-unet"
    shutil.copytree(resolve_model("tiny")[0], folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    settings = build_config("tiny", overrides=[f"render.model={folder}"]).render
    prepare_models(settings)  # a plain UNet passes
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "time_cond_proj_dim": 256}))
    with pytest.raises(ConfigError, match="time_cond_proj_dim=256.*LCM-LoRA") as err:
        prepare_models(settings)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="guidance embedding"):
        refuse_guidance_embedding({"time_cond_proj_dim": 8}, "m")
