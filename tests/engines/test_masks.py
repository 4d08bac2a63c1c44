"""Edit masks (issue 21 items 3 and 5): the pure mask functions on constructed maps (p2p.masks), the word maps
gathered during a render (p2p.word_maps) changing no image, and the mask every P2P pair now carries (its PNG
and its description in the record), regenerated from the record."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from editgen.engines.record import CandidateRecord
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.p2p import masks
from editgen.p2p.controls import BlendConfig, EditControl
from editgen.p2p.generate import RenderRequest, render
from editgen.p2p.local_blend import LocalBlend
from editgen.p2p.word_maps import MapRequest
from tests.support import smooth_photo

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py

SRC, EDIT = "a photo of a cat sitting on a bench", "a photo of a dog sitting on a bench"


def _square_map(side: int = 16, box: tuple[int, int, int, int] = (3, 5, 7, 10), floor: float = 0.05,
                seed: int = 0) -> torch.Tensor:
    """A word's accumulated attention on a side x side grid: a noisy floor, high inside rows y0..y1,
    columns x0..x1 (exclusive ends), as a word attending to one object would give."""
    gen = torch.Generator().manual_seed(seed)
    grid = floor * torch.rand(side, side, generator=gen)
    x0, y0, x1, y1 = box
    grid[y0:y1, x0:x1] += 1.0 + 0.2 * torch.rand(y1 - y0, x1 - x0, generator=gen)
    return grid


@pytest.mark.parametrize("normalize", ["max", "minmax"])
def test_region_covers_the_words_attention_on_a_constructed_map(normalize):
    """The region covers exactly where the word attends (grown by the dilation), and nothing else."""
    box = (3, 5, 7, 10)  # x0, y0, x1, y1 on the 16x16 attention grid; latent 64x64, image 512x512
    grid = _square_map(box=box)
    plain = masks.attention_region(grid, (64, 64), 0.3, dilate=1, normalize=normalize)
    img = masks.image_mask(plain, (512, 512))
    assert masks.bbox(img) == [3 * 32, 5 * 32, 7 * 32, 10 * 32]  # the square, at image scale
    assert masks.describe(img, "cross_attention", ["cat"])["area_fraction"] == pytest.approx(4 * 5 / 256)
    grown = masks.attention_region(grid, (64, 64), 0.3, dilate=3, normalize=normalize)
    assert masks.bbox(masks.image_mask(grown, (512, 512))) == [2 * 32, 4 * 32, 8 * 32, 11 * 32]  # one cell more
    assert bool((grown | ~plain).all())  # dilation only adds
    smooth = masks.attention_region(grid, (64, 64), 0.3, dilate=3, smooth=1.0, normalize=normalize)
    assert smooth[24:36, 16:24].all() and not smooth[:8].any() and not smooth[:, 48:].any()


def test_minmax_ignores_the_floor_that_max_normalisation_keeps():
    """A word attended everywhere at 0.8 of its peak: max-normalised at 0.3 the region is the whole image
    (too large); min-max normalised it is the peak's square again."""
    grid = 0.8 + 0.2 * (_square_map(floor=0.0) > 0.5).float()
    assert masks.attention_region(grid, (16, 16), 0.3, dilate=1, normalize="max").all()
    assert masks.attention_region(grid, (16, 16), 0.3, dilate=1, normalize="minmax").float().mean() == 20 / 256


def test_local_blend_mask_is_the_mask_function_op_for_op():
    """LocalBlend's mask (what P2P's images depend on) is `attention_region` at its settings: the same bits as
    the ops LocalBlend always ran, written out here."""
    src_cols = torch.zeros(77)
    src_cols[5] = 1.0
    from editgen.p2p.controls import CompiledBlend

    blend = LocalBlend([(1, 0, CompiledBlend(src_cols, None, 0.3, 0, 4))], 2, (16, 16), {4}, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    blend.acc = torch.rand(1, 1, 4, 4, generator=gen) ** 3
    for threshold in (0.1, 0.3, 0.6):
        m = F.max_pool2d(blend.acc[0:1], kernel_size=3, stride=1, padding=1)
        m = F.interpolate(m, size=(16, 16), mode="nearest")
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
        assert torch.equal(blend._word_mask(0, threshold), m[0, 0] > threshold)


def test_feather_and_paste_keep_the_source_outside_exactly():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 48), dtype=bool)
    mask[10:20, 12:30] = True
    alpha = masks.feather_alpha(mask, 4)
    assert (alpha[mask] == 255).all() and alpha[4, 20] == 0 and alpha[9, 20] == 204 and alpha[6, 20] == 51
    ring = (alpha > 0) & ~mask
    assert ring.sum() == (18 + 8) * (10 + 8) - 18 * 10 and (alpha[ring] < 255).all()  # a 4 px chessboard ring
    source, edited = (rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(2))
    out = masks.paste(source, edited, alpha)
    assert (out[alpha == 0] == source[alpha == 0]).all() and (out[alpha == 255] == edited[alpha == 255]).all()
    mid = out[ring].astype(int)
    lo, hi = np.minimum(source[ring], edited[ring]), np.maximum(source[ring], edited[ring])
    assert ((mid >= lo) & (mid <= hi)).all()
    assert (masks.feather_alpha(mask, 0) == np.where(mask, 255, 0)).all()
    png = np.asarray(Image.open(io.BytesIO(masks.encode_png(alpha))))
    assert (png == alpha).all()


def test_description_checks_and_checksum():
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:16, 32:40] = True
    d = masks.describe(mask, "diffedit", ["cat"], feather_px=2)
    assert d["bbox"] == [32, 8, 40, 16] and d["area_fraction"] == 64 / 4096 and d["size"] == [64, 64]
    assert d["source"] == "diffedit" and d["words"] == ["cat"] and d["feather_px"] == 2
    flipped = mask.copy()
    flipped[0, 0] = True
    assert masks.checksum(flipped) != d["sha256"] == masks.checksum(mask.copy())
    assert masks.area_check(0.005, 0.01, 0.9) == "too_small" and masks.area_check(0.95, 0.01, 0.9) == "too_large"
    assert masks.area_check(0.5, 0.01, 0.9) is None and masks.bbox(np.zeros((4, 4), bool)) is None
    with pytest.raises(ValueError, match="mask source"):
        masks.describe(mask, "guess", [])
    with pytest.raises(ValueError, match="odd"):
        masks.attention_region(torch.ones(4, 4), (8, 8), 0.3, dilate=2)


# ---- word maps during a render: masks at no UNet cost, the images unchanged ----------------------------
def _request(blend: bool = False, steps: int = 3) -> RenderRequest:
    edit = EditControl(prompt=EDIT, cross_replace=0.6, self_replace=0.4,
                       blend=BlendConfig(["cat", "dog"], threshold=0.5, downscale=1) if blend else None)
    return RenderRequest(SRC, [edit.resolve(SRC)], seed=11, steps=steps, guidance=7.5, height=64, width=64)


@pytest.mark.parametrize(("explicit", "blend"), [(False, False), (True, False), (False, True)])
def test_word_maps_change_no_image(p2p, explicit, blend):
    """Gathering the maps (fused and reference processors, with and without LocalBlend) leaves every row's
    pixels and latents bit-identical, and gives the edit row a mask on the latent grid."""
    req = _request(blend)
    plain = render(p2p, [req], explicit=explicit)[0]
    mapped = render(p2p, [req], explicit=explicit, maps=[MapRequest(("cat", "dog"), downscale=1)])[0]
    assert np.array_equal(plain.images, mapped.images) and torch.equal(plain.latents, mapped.latents)
    assert mapped.masks[0] is not None and mapped.masks[0].shape == (8, 8) and mapped.mask_words == ["cat", "dog"]
    if blend:  # LocalBlend's own mask stays the one given
        assert torch.equal(mapped.masks[0], plain.masks[0])
    else:
        assert plain.masks == [None] and mapped.source_mask is not None


def test_probe_reads_words_the_source_caption_lacks(p2p):
    """A source render (no edit rows) finds an added word through the probe (the edited caption's keys read
    with the source row's queries); words in no prompt give no mask."""
    req = RenderRequest("a photo of a cat", [], seed=5, steps=2, guidance=7.5, height=64, width=64)
    probe = MapRequest(("hat",), 0.3, 1, 0.0, "minmax", 1, probe="a photo of a cat wearing a hat")
    plain, res = render(p2p, [req])[0], render(p2p, [req], maps=[probe])[0]
    assert np.array_equal(plain.images, res.images)
    assert res.source_mask is not None and res.source_mask.any() and res.mask_words == ["hat"]
    none = render(p2p, [req], maps=[MapRequest(("zebra",), probe="a photo of a cat")])[0]
    assert none.source_mask is None and none.mask_words == []


# ---- the P2P engine: every pair's mask, described in its record ---------------------------------------
def _p2p_stage(*overrides: str):
    from editgen.pipeline.config import build_config
    from editgen.stages.render import RenderStage

    cfg = build_config(profile="tiny", overrides=["render.steps=2", "render.candidates=2", "render.device=cpu",
                                                  "render.resources.num_cpus=1", *overrides])
    stage = RenderStage(cfg)
    stage.setup()
    return stage


ROWS = {"id": ["a", "b"], "caption": [SRC, "a red car in the street"],
        "edited_caption": [EDIT, "a blue car in the street"], "edit_kind": ["replace", "replace"],
        "source_words": [["cat"], ["red"]], "target_words": [["dog"], ["blue"]]}


REAL = ["render.source=real", "render.inversion.method=negative_prompt"]


@pytest.mark.parametrize(("overrides", "source"), [([], "cross_attention"),
                                                    (["render.local_blend=true"], "local_blend"),
                                                    ([*REAL, "render.inversion.mask=diffedit"], "diffedit")])
def test_every_p2p_pair_has_a_mask_and_regenerates_it(overrides, source):
    import pyarrow as pa

    rows = dict(ROWS)
    photo = smooth_photo() if "render.source=real" in overrides else None
    if photo is not None:
        rows.update(image=[photo] * 2, image_width=[32, 32], image_height=[32, 32])
    out = [r for r in _p2p_stage(*overrides).process_partition(pa.table(rows)).to_pylist() if r["status"] == "kept"]
    assert len(out) == 4
    size = [32, 32] if photo is not None else [64, 64]
    for r in out:
        stored = json.loads(r["params"])
        m = stored["mask"]
        assert m["source"] == source and m["words"] in (["cat", "dog"], ["red", "blue"])
        assert 0 <= m["area_fraction"] <= 1 and m["size"] == size
        png = np.asarray(Image.open(io.BytesIO(r["mask"]))) > 0
        assert masks.checksum(png) == m["sha256"] and png.mean() == m["area_fraction"]
        again = regenerate(stored, device="cpu", image=photo)
        assert (again.edited_image, again.input_image, again.mask) == (r["edited_image"], r["input_image"], r["mask"])
        assert again.record.mask == m
        old = {k: v for k, v in stored.items() if k != "mask"}  # a record from before masks: no mask, same images
        before = regenerate(old, device="cpu", image=photo)
        assert before.edited_image == r["edited_image"] and before.record.mask is None
        assert (before.mask is None) == (source == "cross_attention")


def test_p2p_mask_costs_no_unet_row_and_keeps_the_images(p2p):
    """With LocalBlend off the mask comes with the render: the same UNet calls and the same pixels as a render
    of the record without its mask."""
    from editgen.engines.p2p_records import render_records, sample_candidates

    rec = sample_candidates("pair-1", SRC, EDIT, 1, model=Runtime.wrap(p2p).model)[0]
    rec = rec.with_params(steps=3, height=64, width=64)
    masked = CandidateRecord.from_row({**json.loads(rec.to_json()), "mask": {
        "source": "cross_attention", "words": ["cat", "dog"], "threshold": 0.3, "dilate": 3, "downscale": 4}})
    calls = []
    hook = p2p.pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        (a,), n_plain = render_records(p2p, [rec]), len(calls)
        (b,) = render_records(p2p, [masked])
    finally:
        hook.remove()
    assert len(calls) == 2 * n_plain == 2 * 3
    assert a.edited_image == b.edited_image and a.input_image == b.input_image
    assert a.mask is None and b.mask is not None and b.record.mask["sha256"]
