"""P2P on a tiny random SDXL pipeline (two text encoders, text_time conditioning), CPU, 64 px."""

from __future__ import annotations

import pytest
import torch

from models.tiny_sd import build_tiny_sd
from p2p.controls import BlendConfig, EditControl
from p2p.generate import RenderRequest, initial_noise, load_pipeline, render_one

SRC = "a photo of a cat sitting on a bench"
EDIT = "a photo of a dog sitting on a bench"
STEPS, SIZE, SEED = 5, 64, 5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    path = build_tiny_sd(tmp_path_factory.getbasetemp() / "tiny-sdxl", "sdxl")
    p2p = load_pipeline(path, "cpu", "float32", "euler")
    assert p2p.is_sdxl and p2p.cross_downscales == {2, 4}
    return p2p


def _plain(xl, prompts):
    z, _ = initial_noise(SEED, (1, 4, SIZE // 8, SIZE // 8))
    return xl.pipe(
        prompts,
        latents=z.expand(len(prompts), -1, -1, -1),
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        height=SIZE,
        width=SIZE,
        output_type="latent",
    ).images


def test_sdxl_pair_source_row_equals_plain(xl):
    blend = BlendConfig(["cat", "dog"], threshold=0.9, start=0.2, downscale=2)
    req = RenderRequest(
        SRC,
        [EditControl(EDIT, self_replace=0.6, blend=blend)],
        seed=SEED,
        steps=STEPS,
        height=SIZE,
        width=SIZE,
        scheduler="euler",
    )
    res = render_one(xl, req)
    ref = _plain(xl, [SRC, EDIT])
    assert torch.equal(res.latents[0], ref[0])
    assert not torch.allclose(res.latents[1], ref[1], atol=1e-3)
    assert res.images.shape == (2, SIZE, SIZE, 3) and res.masks[0] is not None
    explicit = render_one(xl, req, explicit=True)
    assert torch.allclose(res.latents, explicit.latents, atol=1e-4, rtol=0)


def test_sdxl_zero_windows_and_refine(xl):
    zero = RenderRequest(
        SRC,
        [EditControl(EDIT, cross_replace=0.0, self_replace=0.0)],
        seed=SEED,
        steps=STEPS,
        height=SIZE,
        width=SIZE,
        scheduler="euler",
    )
    assert torch.equal(render_one(xl, zero).latents, _plain(xl, [SRC, EDIT]))
    refine = RenderRequest(
        SRC,
        [EditControl("a photo of a fluffy cat sitting on a bench", reweight={"fluffy": 2})],
        seed=SEED,
        steps=STEPS,
        height=SIZE,
        width=SIZE,
        scheduler="dpmpp_2m",
    )
    res, explicit = render_one(xl, refine), render_one(xl, refine, explicit=True)
    assert res.modes == ["refine"]
    assert torch.allclose(res.latents, explicit.latents, atol=1e-4, rtol=0)


def test_tiny_builder_is_deterministic_and_cached(tmp_path):
    a = build_tiny_sd(tmp_path / "a", "sd", seed=0)
    stamp = (a / "editgen_tiny.json").stat().st_mtime_ns
    assert build_tiny_sd(tmp_path / "a", "sd", seed=0) == a
    assert (a / "editgen_tiny.json").stat().st_mtime_ns == stamp  # cached, not rebuilt
    b = build_tiny_sd(tmp_path / "b", "sd", seed=0)
    c = build_tiny_sd(tmp_path / "c", "sd", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-built leftovers
