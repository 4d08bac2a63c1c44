"""P2P on a tiny random SDXL pipeline (two text encoders, text_time conditioning), CPU, 64 px."""

from __future__ import annotations

import pytest
import torch

from editgen.p2p.controls import BlendConfig, EditControl
from editgen.p2p.generate import RenderRequest, render_one
from editgen.tiny.sd import build_tiny_sd
from tests.support import plain_generation, tiny_pipeline

SRC = "a photo of a cat sitting on a bench"
EDIT = "a photo of a dog sitting on a bench"
STEPS, SIZE, SEED = 5, 64, 5


pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    p2p = tiny_pipeline(tmp_path_factory, "sdxl", "euler")
    assert p2p.is_sdxl and p2p.cross_downscales == {2, 4}
    return p2p


def _plain(xl, prompts):
    return plain_generation(xl, prompts, steps=STEPS, size=SIZE, seed=SEED)


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
