"""P2P rendering on a tiny random SD 1.x pipeline (CPU, 64 px, 6 DDIM steps).

Exactness notes: on CPU, SDPA computes every (batch row, head) independently and our processors feed
plain rows the same projections as diffusers' ``AttnProcessor2_0``, so rows are bit-identical to a
plain diffusers call *with the same batch layout*. A different batch size is not bit-stable: oneDNN/
MKL pick different GEMM kernels for small row counts (seen in the feed-forward ``Linear`` of a 2x2
layer), giving ~1e-7 differences per op that grow to ~1e-5 over the loop; such comparisons use a
1e-4 tolerance on latents whose scale is ~1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from editgen.p2p.controls import BlendConfig, CompiledEdit, EditControl
from editgen.p2p.generate import RenderRequest, initial_noise, render, render_one
from editgen.p2p.processors import EditRow, ExplicitP2PProcessor, FusedP2PProcessor, P2PController
from tests.support import plain_generation

SRC = "a photo of a cat sitting on a bench"
EDIT = "a photo of a dog sitting on a bench"
REFINED = "a photo of a fluffy cat sitting on a wooden bench"
STEPS, SIZE, SEED = 6, 64, 3
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py


def request(*edits: EditControl, source: str = SRC, **kw) -> RenderRequest:
    kw = {"seed": SEED, "steps": STEPS, "height": SIZE, "width": SIZE, **kw}
    return RenderRequest(source, list(edits), **kw)


def plain(p2p, prompts: list[str], output_type: str = "latent", seed: int = SEED):
    """Plain diffusers StableDiffusionPipeline call (default processors) from our seeded noise."""
    return plain_generation(p2p, prompts, steps=STEPS, size=SIZE, seed=seed, output_type=output_type)


def test_source_row_equals_plain_generation(p2p):
    res = render_one(p2p, request(EditControl(EDIT, self_replace=0.5)))
    ref = plain(p2p, [SRC, EDIT])
    assert torch.equal(res.latents[0], ref[0])  # exact, same batch layout
    assert not torch.allclose(res.latents[1], ref[1], atol=1e-3)  # the edit row really was edited
    images = plain(p2p, [SRC, EDIT], output_type="np")
    assert np.array_equal(res.images[0], images[0])
    single = plain(p2p, [SRC])  # batch of one: GEMM kernel choice differs (module docstring)
    assert torch.allclose(res.latents[0], single[0], atol=TOL, rtol=0)
    assert all(isinstance(p, AttnProcessor2_0) for p in p2p.pipe.unet.attn_processors.values())


@pytest.mark.parametrize("edit", [EDIT, REFINED])
def test_zero_windows_reproduce_unedited_edit_prompt(p2p, edit):
    res = render_one(p2p, request(EditControl(edit, cross_replace=0.0, self_replace=0.0)))
    ref = plain(p2p, [SRC, edit])
    assert torch.equal(res.latents, ref)
    assert np.array_equal(res.images, plain(p2p, [SRC, edit], output_type="np"))


@pytest.mark.parametrize(
    "control",
    [
        EditControl(SRC, mode="replace", cross_replace=1.0, self_replace=1.0),
        EditControl(SRC, mode="refine", cross_replace=0.7, self_replace=0.3),
        EditControl(SRC, mode="reweight", reweight={"cat": 1.0}),
    ],
    ids=["replace", "refine", "reweight1"],
)
def test_identical_prompts_reproduce_source(p2p, control):
    res = render_one(p2p, request(control))
    assert torch.equal(res.latents[1], res.latents[0])
    assert np.array_equal(res.images[1], res.images[0])


def test_local_blend_keeps_source_outside_mask(p2p):
    blend = BlendConfig(["cat", "dog"], threshold=0.9, start=0.3, downscale=1)
    res = render_one(p2p, request(EditControl(EDIT, blend=blend)))
    mask = res.masks[0]
    assert mask is not None and mask.shape == (SIZE // 8, SIZE // 8) and mask.dtype == torch.bool
    assert 0.0 < mask.float().mean().item() < 1.0
    src, edit = res.latents[0], res.latents[1]
    assert torch.equal(edit[:, ~mask], src[:, ~mask])
    assert (edit[:, mask] - src[:, mask]).abs().max() > 1e-3


FUSED_VS_EXPLICIT = {
    "replace": EditControl(EDIT),
    "refine": EditControl(REFINED, cross_replace=0.9),
    "reweight": EditControl(SRC, mode="reweight", reweight={"cat": 2.5, "bench": 0.5}),
    "replace+reweight": EditControl(EDIT, reweight={"dog": 2.0}),
    "word-windows": EditControl(EDIT, cross_replace={"default_": 0.8, "dog": (0.2, 0.5)}),
    "self-lowres": EditControl(EDIT, cross_replace=0.0, self_replace=0.7, self_max_res=2),
    "local-blend": EditControl(EDIT, blend=BlendConfig(["cat", "dog"], threshold=0.85, start=0.2, downscale=2)),
    "ip2p": EditControl(EDIT, mode="ip2p", self_replace=0.6),
}


@pytest.mark.parametrize("name", list(FUSED_VS_EXPLICIT))
def test_fused_matches_explicit(p2p, name):
    req = request(FUSED_VS_EXPLICIT[name])
    fused, explicit = render_one(p2p, req), render_one(p2p, req, explicit=True)
    assert torch.allclose(fused.latents, explicit.latents, atol=TOL, rtol=0)
    assert np.abs(fused.images - explicit.images).max() < 1e-3
    prompt = FUSED_VS_EXPLICIT[name].prompt
    unedited = render_one(p2p, request(EditControl(prompt, cross_replace=0.0, self_replace=0.0)))
    assert (fused.latents[1] - unedited.latents[1]).abs().max() > 1e-3  # the edit did something
    if name == "local-blend":
        assert torch.equal(fused.masks[0], explicit.masks[0])


def test_self_max_res_limits_injection(p2p):
    low = render_one(p2p, request(EditControl(EDIT, cross_replace=0.0, self_replace=1.0, self_max_res=2)))
    everywhere = render_one(p2p, request(EditControl(EDIT, cross_replace=0.0, self_replace=1.0, self_max_res=None)))
    assert not torch.allclose(low.latents[1], everywhere.latents[1], atol=1e-3)


def _compiled(alpha: torch.Tensor, mapper, weights, self_steps=(0, 0)) -> CompiledEdit:
    return CompiledEdit("refine", alpha, mapper, weights, self_steps, None, None)


@pytest.mark.parametrize("cfg", [True, False])
def test_processor_algebra_single_layer(cfg):
    """Fused == explicit on one attention layer with fractional alpha, a dense mapper and reweighting;
    rows that must stay plain equal diffusers' own processor bit for bit."""
    g = torch.Generator().manual_seed(0)
    L, T = 77, 2
    cross = Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=8).eval()
    self_attn = Attention(query_dim=32, heads=2, dim_head=8).eval()
    mapper = torch.rand(L, L, generator=g) * (torch.rand(L, L, generator=g) < 0.05)
    edits = [
        EditRow(1, 0, _compiled(torch.rand(T, L, generator=g), mapper, 0.5 + torch.rand(L, generator=g), (0, 1))),
        EditRow(2, 0, _compiled(torch.ones(T, L), None, None, (0, 1))),  # full replace: one SDPA row
        EditRow(3, 0, _compiled(torch.zeros(T, L), None, 1 + torch.rand(L, generator=g))),  # reweight only
    ]
    n = 4
    ctrl = P2PController(n, cfg, edits, T, (4, 4), torch.device("cpu"), torch.float32)
    batch = 2 * n if cfg else n
    hidden = torch.randn(batch, 16, 32, generator=g)
    context = torch.randn(batch, L, 16, generator=g)
    with torch.no_grad():
        for attn, ctx in ((cross, context), (self_attn, None)):
            fused = FusedP2PProcessor(ctrl)(attn, hidden, ctx)
            explicit = ExplicitP2PProcessor(ctrl)(attn, hidden, ctx)
            default = AttnProcessor2_0()(attn, hidden, ctx)
            assert torch.allclose(fused, explicit, atol=1e-5, rtol=0)
            plain_rows = list(range(n + 1)) if cfg else [0]
            assert torch.equal(fused[plain_rows], default[plain_rows])
            edited = [ctrl.offset + e.row for e in edits if ctx is not None or e.edit.self_steps[1] > 0]
            assert not torch.allclose(fused[edited], default[edited], atol=1e-4)
        ctrl.begin_step(1)  # self window over, alpha of row 2 still 1
        fused = FusedP2PProcessor(ctrl)(self_attn, hidden, None)
        assert torch.equal(fused, AttnProcessor2_0()(self_attn, hidden, None))


def test_batched_requests_match_separate_renders(p2p):
    a = request(EditControl(EDIT), EditControl(REFINED), seed=1)
    b = request(EditControl("a photo of a cat sitting on a sofa"), seed=2, guidance=11.0)
    together = render(p2p, [a, b])
    alone = [render_one(p2p, a), render_one(p2p, b)]
    for t, s in zip(together, alone, strict=True):
        assert torch.allclose(t.latents, s.latents, atol=TOL, rtol=0)
        assert t.modes == s.modes
    assert together[0].modes == ["replace", "refine"]
    assert not torch.allclose(together[0].latents[0], together[1].latents[0], atol=1e-2)


def test_stochastic_sampler_shares_noise_within_group(p2p):
    req = request(EditControl(SRC, mode="replace", cross_replace=1.0, self_replace=1.0), scheduler="euler_a")
    res = render_one(p2p, req)
    assert torch.equal(res.latents[1], res.latents[0])
    again = render_one(p2p, req)
    assert torch.equal(again.latents, res.latents)


def test_without_cfg_source_row_equals_plain(p2p):
    res = render_one(p2p, request(EditControl(EDIT), guidance=1.0))
    ref = plain_generation(p2p, [SRC, EDIT], steps=STEPS, size=SIZE, seed=SEED, guidance=1.0)
    assert torch.equal(res.latents[0], ref[0]) and not torch.allclose(res.latents[1], ref[1], atol=1e-3)


def test_incompatible_batch_rejected(p2p):
    with pytest.raises(ValueError, match="share"):
        render(p2p, [request(EditControl(EDIT)), request(EditControl(EDIT), steps=STEPS + 1)])


def test_prepared_latents_are_the_seeded_noise_or_the_given_start(p2p):
    """prepare_latents draws the seeded noise by default and takes a given start (e.g. an inverted latent)."""
    from editgen.p2p.generate import prepare_latents, prepare_timesteps

    req = request(source=SRC)
    sched = prepare_timesteps(p2p, req)
    drawn, _ = prepare_latents(p2p, [req], [(0, 1)], sched)
    z, _ = initial_noise(SEED, tuple(drawn.shape))
    assert torch.equal(drawn, z * sched.init_noise_sigma)
    given, _ = prepare_latents(p2p, [req], [(0, 1)], sched, [torch.ones_like(z)])
    assert torch.equal(given, torch.ones_like(z) * sched.init_noise_sigma)


@pytest.fixture(scope="module")
def p2p_dpm(tmp_path_factory):
    from editgen.p2p.generate import make_scheduler
    from tests.support import tiny_pipeline

    p2p = tiny_pipeline(tmp_path_factory, "sd", "dpmpp_2m")
    p2p.pipe.scheduler = make_scheduler("dpmpp_2m", p2p.base_scheduler_config)  # for the plain diffusers call
    return p2p


def test_dpm_solver_keeps_zero_windows_and_identical_prompts(p2p_dpm):
    """The production profiles' DPM-Solver++ (2M): P2P windows are fractions of the steps, so they
    transfer; zero windows still give the plain generation and identical prompts the source (issue 15)."""
    zero = render_one(p2p_dpm, request(EditControl(EDIT, cross_replace=0.0, self_replace=0.0), scheduler="dpmpp_2m"))
    assert torch.equal(zero.latents, plain(p2p_dpm, [SRC, EDIT]))
    same = render_one(p2p_dpm, request(EditControl(SRC, mode="replace", cross_replace=1.0, self_replace=1.0),
                                       scheduler="dpmpp_2m"))
    assert torch.equal(same.latents[0], same.latents[1])
    edited = render_one(p2p_dpm, request(EditControl(EDIT, cross_replace=0.8, self_replace=0.4), scheduler="dpmpp_2m"))
    assert torch.equal(edited.latents[0], zero.latents[0]) and not torch.equal(edited.latents[1], zero.latents[1])
