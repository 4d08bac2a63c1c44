"""Prompt-to-Prompt on real images (issue 13 items 2-3) through p2p.real and the P2P engine's real-image
records (engines/p2p_real.py) on the tiny SD model, CPU.

The inversion's own invariants (DDIM reconstruction bound, null-text beating DDIM at guidance 7.5,
negative-prompt's definition, DiffEdit's mask) are in tests/p2p/test_p2p_inversion.py; here: the render from
an inverted latent. Identical prompts reproduce the reconstruction exactly, every P2P mode runs from
the inverted latent, masks keep latents outside them equal to the reconstruction's (bit for bit), and a
record plus the image bytes regenerates the candidate bit for bit.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from editgen.engines.p2p_real import REAL as SOURCE_KEY
from editgen.engines.p2p_real import render_real, source_params
from editgen.engines.p2p_records import sample_candidates
from editgen.engines.record import ModelRef
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.p2p.real import decode_image, pixels_sha256, prepare_source
from editgen.pipeline.settings.render import InversionConfig

SRC = "a photo of a cat sitting on a bench"
DST = "a photo of a dog sitting on a bench"
SIZE, STEPS, G = 32, 6, 7.5

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # tests/conftest.py


def _photo() -> bytes:
    """A smooth synthetic 'photo' as PNG bytes (what the fetch stage stores)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx) * np.cos(5 * yy)], -1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def _records(p2p, edit: str, n: int, config: InversionConfig, image: bytes, **space) -> list[dict]:
    from editgen.p2p.candidates import CandidateSpace

    blend = space.pop("blend", None)
    reweight = {"cat": 2.0} if space.get("mode") == "reweight" else None
    sp = CandidateSpace(steps=STEPS, height=SIZE, width=SIZE, guidance_range=(G, G), **space)
    recs = sample_candidates("pair-1", SRC, edit, n, model=ModelRef(p2p.model, "float32"), space=sp, blend=blend,
                             reweight=reweight)
    meta = source_params(config, pixels_sha256(decode_image(image)), 0.2)
    return [r.with_params(**{SOURCE_KEY: meta}) for r in recs]


@pytest.fixture(scope="module")
def photo() -> bytes:
    return _photo()


@pytest.mark.parametrize("method", ["ddim", "negative_prompt", "null_text"])
def test_identical_prompts_reproduce_the_reconstruction(p2p, photo, method):
    config = InversionConfig(method=method, inner_steps=2)
    src = prepare_source(p2p, decode_image(photo), SRC, STEPS, G, config)
    out = render_real(p2p, _records(p2p, SRC, 1, config, photo)[0], src)
    assert out.edited_image == out.reconstruction  # the edit row with the source prompt IS the reconstruction
    lat = out.result.latents
    assert torch.equal(lat[0], lat[1])
    rec = out.record.params["reconstruction"]
    assert np.isfinite(rec["psnr"]) and -1 <= rec["ssim"] <= 1
    cost = out.record.params["inversion_cost"]
    assert cost["forward_rows"] >= STEPS and (cost["backward_rows"] > 0) == (method == "null_text")


def test_input_is_the_real_image(p2p, photo):
    config = InversionConfig(method="negative_prompt")
    src = prepare_source(p2p, decode_image(photo), SRC, STEPS, G, config)
    out = render_real(p2p, _records(p2p, DST, 1, config, photo)[0], src)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out.input_image))), np.asarray(decode_image(photo)))
    assert out.edited_image != out.reconstruction


@pytest.mark.parametrize("mode,edit", [("replace", DST), ("refine", "a photo of a fluffy cat sitting on a bench"),
                                        ("reweight", SRC), ("ip2p", DST)])
def test_every_mode_runs_from_the_inverted_latent(p2p, photo, mode, edit):
    config = InversionConfig(method="negative_prompt")
    src = prepare_source(p2p, decode_image(photo), SRC, STEPS, G, config)
    out = render_real(p2p, _records(p2p, edit, 1, config, photo, mode=mode)[0], src)
    assert out.result.modes == [mode]
    assert Image.open(io.BytesIO(out.edited_image)).size == (SIZE, SIZE)


def test_diffedit_mask_keeps_the_reconstruction_outside(p2p, photo):
    config = InversionConfig(method="negative_prompt", mask="diffedit", diffedit={"n_draws": 2, "threshold": 0.9})
    src = prepare_source(p2p, decode_image(photo), SRC, STEPS, G, config)
    out = render_real(p2p, _records(p2p, DST, 1, config, photo)[0], src)
    mask = out.result.masks[0]
    assert mask is not None and 0 < int(mask.sum()) < mask.numel()
    lat = out.result.latents
    assert torch.equal(lat[1][:, ~mask], lat[0][:, ~mask])  # set, not blended: bit for bit
    assert not torch.equal(lat[1][:, mask], lat[0][:, mask])
    assert out.mask is not None


def test_local_blend_keeps_the_reconstruction_outside(p2p, photo):
    config = InversionConfig(method="negative_prompt", mask="local_blend")
    src = prepare_source(p2p, decode_image(photo), SRC, STEPS, G, config)
    blend = {"words": ["cat", "dog"], "threshold": 0.3, "start": 0.2}
    out = render_real(p2p, _records(p2p, DST, 1, config, photo, blend=blend)[0], src)
    mask = out.result.masks[0]
    assert mask is not None
    lat = out.result.latents
    assert torch.equal(lat[1][:, ~mask], lat[0][:, ~mask])


def test_regenerate_from_record_and_image_is_bit_identical(p2p, photo):
    import json

    config = InversionConfig(method="null_text", inner_steps=2)
    src = prepare_source(p2p, decode_image(photo), SRC, STEPS, G, config)
    out = render_real(p2p, _records(p2p, DST, 1, config, photo)[0], src)
    stored = json.loads(out.record.to_json())
    runtime = Runtime.wrap(p2p)
    again = regenerate(stored, runtime, image=photo)
    assert (again.input_image, again.edited_image, again.reconstruction) == \
        (out.input_image, out.edited_image, out.reconstruction)
    assert regenerate(stored, runtime, image=out.input_image).edited_image == out.edited_image  # the shard's copy
    other = np.asarray(decode_image(photo)).copy()
    other[0, 0, 0] ^= 1
    buf = io.BytesIO()
    Image.fromarray(other).save(buf, format="PNG")
    with pytest.raises(ValueError, match="sha256"):
        regenerate(stored, runtime, image=buf.getvalue())
    with pytest.raises(ValueError, match="source image"):
        regenerate(stored, runtime)


def test_render_stage_with_real_source(tmp_path, photo):
    """The render stage body on rows carrying the fetch stage's columns: real input, reconstruction,
    records that regenerate with the image, inversion cost in the partition's metrics."""
    import json

    import pyarrow as pa

    from editgen.pipeline.config import build_config
    from editgen.stages.render import RenderStage

    cfg = build_config(profile="tiny", overrides=[
        "render.source=real", "render.steps=3", "render.candidates=2", "render.inversion.method=null_text",
        "render.inversion.inner_steps=2", "render.inversion.guidance=7.5", "render.resources.num_cpus=1"])
    stage = RenderStage(cfg)
    stage.setup()
    rows = {"id": ["a", "b"], "caption": [SRC, SRC], "edited_caption": [DST, SRC + " at night"],
            "edit_kind": ["replace", "refine"], "changed_words": [["cat", "dog"], ["at", "night"]],
            "source_words": [["cat"], []], "target_words": [["dog"], ["at", "night"]],
            "image": [photo, photo], "image_width": [SIZE, SIZE], "image_height": [SIZE, SIZE]}
    out = stage.process_partition(pa.table(rows)).to_pylist()
    assert [r["status"] for r in out] == ["kept"] * 4
    real = np.asarray(decode_image(photo))
    for r in out:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r["input_image"]))), real)
        assert r["reconstruction"] and r["edited_image"] != r["reconstruction"]
        params = json.loads(r["params"])
        assert params[SOURCE_KEY]["pixels_sha256"] == pixels_sha256(decode_image(photo))
        assert params["guidance"] == 7.5 and "image" not in r
    # one inversion per pair (guidance fixed), not per candidate: 2 pairs x (3 + 3 * (2 + k)) rows at most
    assert 2 * 3 < stage.metrics["inversion_forward_rows"] <= 2 * (3 + 3 * 4)
    again = regenerate(json.loads(out[1]["params"]), stage.runtime, image=photo)
    assert again.edited_image == out[1]["edited_image"] and again.reconstruction == out[1]["reconstruction"]
