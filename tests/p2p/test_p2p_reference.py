"""editgen's fused P2P render against the independent explicit-probability reference (tests/p2p_reference.py).

Same tiny SD model, same seeded noise, same DDIM steps; the reference shares no code with ``p2p/``.
Step counts: 4, where the cross window int(0.8 * 5) = 4 differs from floor(0.8 * 4) = 3 and the ip2p
rule p > i / (N - 1) differs from int(p * N); and 5, where both pairs agree. Latents are ~1 in scale;
the matched algebra agrees to ~1e-5, every rule difference moves them by >= 1e-3.
"""

from __future__ import annotations

import pytest
import torch

from editgen.p2p.controls import BlendConfig, EditControl
from editgen.p2p.generate import RenderRequest, render_one
from tests import p2p_reference as ref

SEED, TOL = 5, 2e-4
SRC = "a photo of a cat sitting on a bench"
DOG = "a photo of a dog sitting on a bench"

CASES = {
    "replace-equal": (SRC, ref.RefEdit(DOG, "replace", cross=0.4)),
    "replace-grow-punct": (
        "a cat, sitting on a wooden bench.",
        ref.RefEdit("a hippopotamus, sitting on a wooden bench!", "replace"),
    ),
    "replace-shrink-punct": (
        "a hippopotamus sitting on a bench, at night",
        ref.RefEdit("a cat sitting on a bench at night", "replace", cross=0.6),
    ),
    "refine-add": ("a cat on a bench", ref.RefEdit("a fluffy cat on a wooden bench", "refine")),
    "refine-remove": ("a fluffy cat on a wooden bench", ref.RefEdit("a cat on a bench", "refine")),
    "refine-repeated": ("a cat and a dog", ref.RefEdit("a dog and a cat and a dog", "refine", cross=0.6)),
    "reweight-x2": (SRC, ref.RefEdit(SRC, "reweight", cross=0.6, reweight={"cat": 2.0})),
    "reweight-x0": (SRC, ref.RefEdit(SRC, "reweight", cross=0.5, reweight={"bench": 0.0})),
    "ip2p": (SRC, ref.RefEdit(DOG, "ip2p", self_=0.45)),
}
SECOND_STEPS = ("replace-grow-punct", "refine-remove", "reweight-x2", "ip2p")


pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py


def editgen(p2p, source: str, e: ref.RefEdit, steps: int, size: int):
    blend = None
    if e.blend_words:
        blend = BlendConfig(list(e.blend_words), e.blend_threshold, e.blend_start, e.blend_downscale)
    control = EditControl(e.prompt, mode=e.mode, cross_replace=e.cross, self_replace=e.self_,
                          reweight=dict(e.reweight), blend=blend)
    req = RenderRequest(source, [control], seed=SEED, steps=steps, height=size, width=size)
    return render_one(p2p, req)


@pytest.mark.parametrize(
    ("name", "steps"), [(n, 4) for n in CASES] + [(n, 5) for n in SECOND_STEPS]
)
def test_matches_reference(p2p, name, steps):
    source, e = CASES[name]
    ours = editgen(p2p, source, e, steps, 64)
    theirs, _ = ref.render(p2p.pipe, source, e, seed=SEED, steps=steps, size=64)
    assert torch.allclose(ours.latents, theirs, atol=TOL, rtol=0), (ours.latents - theirs).abs().max()


@pytest.mark.parametrize(
    ("steps", "edit", "word"),
    [(4, DOG, "dog"), (5, "a photo of a hippopotamus sitting on a bench", "hippopotamus")],
)
def test_local_blend_matches_reference(p2p, steps, edit, word):
    """Blend on the edit word only: the source has no mask to OR in, so the edit row's maps decide the
    mask, and inside the cross window its post-edit maps are the source's mapped ones."""
    e = ref.RefEdit(edit, "replace", blend_words=(word,), blend_threshold=0.9, blend_start=0.25,
                    blend_downscale=2)  # 8x8 maps at 128 px; 4x4 ones saturate after the 3x3 max-pool
    ours = editgen(p2p, SRC, e, steps, 128)
    theirs, mask = ref.render(p2p.pipe, SRC, e, seed=SEED, steps=steps, size=128)
    assert mask is not None and 0.0 < mask.float().mean().item() < 1.0  # a partial mask
    assert torch.equal(ours.masks[0], mask)
    assert torch.allclose(ours.latents, theirs, atol=TOL, rtol=0), (ours.latents - theirs).abs().max()
