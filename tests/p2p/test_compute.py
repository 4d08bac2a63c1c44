"""UNet compute accounting (p2p/compute.py): FLOP counts, caching, per-candidate and per-kept figures,
the acceptance model vs simulation, the InstructPix2Pix recipe, and DPM-Solver++ (2M) P2P invariants."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from editgen.p2p import compute
from editgen.p2p.compute import (
    IP2P,
    AcceptanceModel,
    CandidateCompute,
    ComputeSummary,
    count_flops,
    early_stop_draws,
    expected_drawn,
    expected_kept,
    ip2p_flops_per_pair,
    measure_unet_flops,
    production_estimate,
    recipe_cost,
    record_compute,
    rows_per_candidate,
    simulate_acceptance,
    unet_flops,
)

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py

SD15_DENSE = 677_221_171_200  # convs + linears: the figure (a CPU count, where SDPA is invisible)
SD15_ATTENTION = 126_052_270_080  # QK^T and PV of every attention layer


# ------------------------------------------------------------------------------------------ counting
def test_counter_matches_analytic_conv_linear():
    conv, lin = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 5)

    def run(side: int):
        x = torch.zeros(2, 3, side, side)
        return count_flops(lambda: lin(conv(x).permute(0, 2, 3, 1)))

    total, by_op = run(16)
    conv_flops = 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)  # 2 x outputs x (C_in k k) multiply-adds
    lin_flops = 2 * (2 * 16 * 16) * 8 * 5
    assert by_op.pop("aten.convolution") == conv_flops
    assert sum(by_op.values()) == lin_flops and set(by_op) <= {"aten.mm", "aten.addmm"}  # bias: not a FLOP here
    assert total == conv_flops + lin_flops
    assert run(32)[0] == 4 * total  # no size-independent part: exactly quadratic in the side


def test_cpu_sdpa_is_counted_like_its_math_path():
    q, k = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 77, 8)
    expected = 2 * 2 * (2 * 3 * 40 * 77 * 8)  # QK^T and PV, 2 FLOPs per multiply-add each
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, k))[0] == expected
    meta = [t.to("meta") for t in (q, k)]
    assert count_flops(lambda: F.scaled_dot_product_attention(meta[0], meta[1], meta[1]))[0] == expected


def _analytic_attention(unet, side: int) -> int:
    """4 x N x L x inner per attention call, read off the calls themselves (forward hooks)."""
    total = []

    def hook(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        ctx = kwargs.get("encoder_hidden_states")
        n, length = hidden.shape[1], (ctx if ctx is not None else hidden).shape[1]
        total.append(2 * 2 * hidden.shape[0] * n * length * mod.to_q.out_features)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in unet.modules() if isinstance(m, Attention)]
    try:
        measure_unet_flops(unet, side, side, meta=False)
    finally:
        for h in handles:
            h.remove()
    return sum(total)


def test_tiny_unet_meta_twin_equals_live_count(p2p):
    unet = p2p.pipe.unet
    meta, live = measure_unet_flops(unet, 64, 64), measure_unet_flops(unet, 64, 64, meta=False)
    assert meta == live
    assert meta.attention == _analytic_attention(unet, 64) > 0  # bmm is attention and nothing else
    assert meta.latent_hw == (8, 8) and meta.text_len == 77


def test_tiny_unet_flops_are_exact_polynomials_of_latent_pixels(p2p):
    f = {s: measure_unet_flops(p2p.pipe.unet, s, s) for s in (64, 128, 256)}  # n = 64, 256, 1024 latent px
    # dense = A + B n (A: time embedding, text K/V projections): differences scale with the n differences
    assert f[256].dense - f[128].dense == 4 * (f[128].dense - f[64].dense)
    assert f[64].dense * 4 != f[128].dense  # ...and there is a size-independent part
    # attention = B' n (cross, 77 keys) + C n^2 (self): attention / n is linear in n
    per = {s: Fraction(f[s].attention, (s // 8) ** 2) for s in f}
    assert per[256] - per[128] == 4 * (per[128] - per[64])


def test_sd15_real_architecture_at_512():
    f = measure_unet_flops(compute.sd15_unet(), 512, 512)
    assert (f.dense, f.attention) == (SD15_DENSE, SD15_ATTENTION)
    assert round(f.dense / 1e9) == 677  # the figure
    assert ip2p_flops_per_pair(f.dense) == pytest.approx(27.09e15, rel=1e-3)


def test_cache_measures_once(p2p, monkeypatch, tmp_path):
    calls = []
    real = compute.measure_unet_flops

    def counting(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(compute, "measure_unet_flops", counting)
    monkeypatch.setattr(compute, "_CACHE", {})
    path = tmp_path / "flops.json"
    unet = p2p.pipe.unet
    first = unet_flops(unet, 64, 64, cache_file=path)
    assert unet_flops(unet, 64, 64, cache_file=path) == first and len(calls) == 1
    assert compute.unet_flops_per_row(unet, 64, 64, include_attention=False) == first.dense and len(calls) == 1
    unet_flops(unet, 64, 128, cache_file=path)
    assert len(calls) == 2  # another size is another measurement
    monkeypatch.setattr(compute, "_CACHE", {})  # a new process: only the disk cache is left
    assert unet_flops(unet, 64, 64, cache_file=path) == first and len(calls) == 2
    assert len(json.loads(path.read_text())) == 2
    path.write_text("{not json")
    monkeypatch.setattr(compute, "_CACHE", {})
    assert unet_flops(unet, 64, 64, cache_file=path) == first and len(calls) == 3  # corrupt file: re-measured


# ---------------------------------------------------------------------------------------- accounting
def test_candidate_and_summary_accounting():
    assert rows_per_candidate() == 4 and rows_per_candidate(cfg=False) == 2
    assert rows_per_candidate(share=4) == 2.5  # (1 + 4) prompts x 2 halves per 4 candidates
    c = CandidateCompute(rows=4, steps=20, flops_per_row=10, inversion_row_steps=6, scoring_row_steps=2)
    assert c.unet_row_steps == 88 and c.unet_flops == 880
    rec = {"guidance": 9.0, "steps": 50, "scheduler": "pndm", "edits": [{}]}
    assert record_compute(rec, 10).unet_row_steps == 4 * 51  # PLMS: one extra evaluation per run
    assert record_compute({**rec, "guidance": 1.0, "scheduler": "ddim"}, 10).unet_row_steps == 2 * 50
    a = ComputeSummary.from_candidates([c, c, CandidateCompute(4, 20, 10)], kept=2, gpu_seconds=3.0)
    assert (a.candidates, a.unet_row_steps, a.unet_flops) == (3, 256, 2560)
    assert (a.flops_per_kept, a.row_steps_per_kept, a.candidates_per_kept, a.gpu_seconds_per_kept) == (
        1280, 128, 1.5, 1.5)
    b = a + ComputeSummary.from_candidates([c], kept=0)
    assert (b.candidates, b.kept, b.unet_flops, b.gpu_seconds) == (4, 2, 3440, 3.0)
    d = json.loads(json.dumps(b.to_dict()))
    assert ComputeSummary.from_dict(d) == b and d["unet_flops_per_kept"] == 1720
    assert ComputeSummary.from_candidates([c], kept=0).to_dict()["candidates_per_kept"] is None


# ------------------------------------------------------------------------------------ acceptance model
@pytest.mark.parametrize("model", [AcceptanceModel(0.2), AcceptanceModel(0.05), AcceptanceModel(beta=(2, 8))],
                         ids=["p0.2", "p0.05", "beta2-8"])
@pytest.mark.parametrize("early, group", [(False, 1), (True, 1), (True, 3)])
def test_acceptance_formula_matches_simulation(model, early, group):
    k, n = 4, 100
    drawn, kept = simulate_acceptance(model, k, n, pairs=40_000, seed=1, early_stop=early, group=group)
    assert expected_drawn(model, k, n, early, group) == pytest.approx(drawn, rel=0.015)
    assert expected_kept(model, k, n) == pytest.approx(kept, rel=0.01)


def test_acceptance_exact_cases():
    assert expected_drawn(AcceptanceModel(1.0), 4, 100) == 4 and expected_kept(AcceptanceModel(1.0), 4, 100) == 4
    assert expected_drawn(AcceptanceModel(0.0), 4, 100) == 100 and expected_kept(AcceptanceModel(0.0), 4, 100) == 0
    assert expected_drawn(AcceptanceModel(0.5), 4, 3) == 3  # cap below k
    assert expected_drawn(AcceptanceModel(1.0), 4, 100, group=3) == 6  # whole rounds
    assert expected_drawn(AcceptanceModel(1.0), 4, 100, min_candidates=10) == 10
    assert expected_drawn(AcceptanceModel(0.3), 4, 100, early_stop=False) == 100
    assert expected_kept(AcceptanceModel(0.3), None, 10) == pytest.approx(3.0)


def test_simulated_draws_follow_the_stage_early_stop_rule():
    from editgen.filters.pairs.early_stop import EarlyStop
    from editgen.filters.pairs.select import Thresholds

    ok = {"sim_image": 0.9, "sim_direction": 0.3, "sim_0": 0.3, "sim_1": 0.3}
    bad = {**ok, "sim_direction": 0.0}
    passes = np.random.default_rng(0).random((300, 30)) < 0.25
    es = EarlyStop(k=4, max_candidates=30, thresholds=Thresholds())
    for p, row in enumerate(passes):
        for outcome in row:
            if es.add(str(p), ok if outcome else bad):
                break
    assert early_stop_draws(passes, 4).tolist() == [es.drawn(str(p)) for p in range(len(passes))]


# ------------------------------------------------------------------------------------------- recipes
def test_ip2p_recipe():
    model = AcceptanceModel(0.2)
    cost = recipe_cost(IP2P, SD15_DENSE, model)
    assert cost.flops_per_pair == ip2p_flops_per_pair(SD15_DENSE) == 100 * 100 * 4 * SD15_DENSE
    assert cost.flops_per_pair / 1e15 == pytest.approx(27.09, abs=0.01)
    assert cost.flops_per_kept == pytest.approx(cost.flops_per_pair / expected_kept(model, 4, 100))
    assert cost.candidates_per_kept == pytest.approx(25.0, abs=1e-3)  # at p=0.2 nearly every pair reaches 4


def test_production_estimate_of_profiles():
    from editgen.pipeline.config import build_config

    model = AcceptanceModel(0.2)
    cfg = build_config("sd15", overrides=["render.scheduler=ddim", "render.steps=50", "render.candidates=4",
                                          "render.early_stop=false"])
    est = production_estimate(cfg.render, cfg.filter.top_k, SD15_DENSE, model)
    # 4 drawn, 0.8 kept per pair: 50 steps x 4 rows x 5 drawn per kept, vs IP2P 100 x 4 x 100 / E[kept]
    ip2p_kept = expected_kept(model, 4, 100)
    assert est["ratio"] == pytest.approx((50 * 4 * 5) / (100 * 4 * 100 / ip2p_kept), rel=1e-9)
    fast = build_config("sd15", overrides=["render.scheduler=dpmpp_2m", "render.steps=20", "render.candidates=100",
                                           "render.early_stop=true"])
    est_fast = production_estimate(fast.render, fast.filter.top_k, SD15_DENSE, model)
    assert est_fast["pass"] and est_fast["ratio"] < est["ratio"] / 2
    shared = production_estimate(fast.render, fast.filter.top_k, SD15_DENSE, model, share=4)
    assert shared["profile"]["recipe"]["rows_per_candidate"] == 2.5 and shared["ratio"] < est_fast["ratio"]
    json.dumps(shared)


# -------------------------------------------------------------------------------- DPM-Solver++ (2M)
SRC = "a photo of a cat sitting on a bench"
EDIT = "a photo of a dog sitting on a bench"
STEPS, SIZE, SEED = 20, 64, 3


@pytest.fixture(scope="module")
def p2p_dpm(tmp_path_factory, p2p_one_thread):
    from editgen.p2p.generate import make_scheduler
    from tests.support import tiny_pipeline

    p2p = tiny_pipeline(tmp_path_factory, "sd", "dpmpp_2m")
    p2p.pipe.scheduler = make_scheduler("dpmpp_2m", p2p.base_scheduler_config)  # the plain baseline's sampler
    return p2p


def _dpm_render(p2p, control):
    from editgen.p2p.generate import RenderRequest, render_one

    req = RenderRequest(SRC, [control], seed=SEED, steps=STEPS, height=SIZE, width=SIZE, scheduler="dpmpp_2m")
    return render_one(p2p, req)


@pytest.mark.parametrize("cross, self_", [(0.0, 0.0), (1.0, 1.0), (0.7, 0.3)])
def test_dpmpp_2m_identical_prompts_reproduce_source(p2p_dpm, cross, self_):
    from editgen.p2p.controls import EditControl

    res = _dpm_render(p2p_dpm, EditControl(SRC, mode="replace", cross_replace=cross, self_replace=self_))
    assert torch.equal(res.latents[1], res.latents[0])
    assert np.array_equal(res.images[1], res.images[0])


def test_dpmpp_2m_zero_windows_reproduce_plain_generation(p2p_dpm):
    from editgen.p2p.controls import EditControl
    from tests.support import plain_generation

    res = _dpm_render(p2p_dpm, EditControl(EDIT, cross_replace=0.0, self_replace=0.0))
    ref = plain_generation(p2p_dpm, [SRC, EDIT], steps=STEPS, size=SIZE, seed=SEED)
    assert torch.equal(res.latents, ref)
    edited = _dpm_render(p2p_dpm, EditControl(EDIT, cross_replace=0.8, self_replace=0.4))
    assert torch.equal(edited.latents[0], ref[0])  # the source row is a plain generation
    assert not torch.allclose(edited.latents[1], ref[1], atol=1e-3)  # windows do edit under this solver
