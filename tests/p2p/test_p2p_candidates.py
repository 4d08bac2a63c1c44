"""Candidate sampling, records and bit-exact regeneration (tiny SD pipeline, CPU): the P2P engine's
records (engines/p2p_records.py) and regeneration through the engine interface (engines.regenerate)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from editgen.engines.p2p_records import record_request, render_records, sample_candidates
from editgen.engines.record import CandidateRecord, ModelRef
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.p2p.candidates import CandidateSpace, candidate_rng

SRC = "a photo of a cat sitting on a bench"
EDIT = "a photo of a dog sitting on a bench"
SPACE = CandidateSpace(steps=5, height=64, width=64)
BLEND = {"words": ["cat", "dog"], "threshold": 0.9, "downscale": 1}
M = ModelRef("m", "float32")


def _model(p2p) -> ModelRef:
    return ModelRef(p2p.model, "float32")


def _stored(rec: CandidateRecord) -> dict:
    """A record as the stage stores it (JSON) and reads it back."""
    return json.loads(rec.to_json())


pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # fixtures in tests/conftest.py


def test_sampling_is_deterministic_and_in_range():
    a = sample_candidates("pair-42", SRC, EDIT, 6, model=M)
    assert a == sample_candidates("pair-42", SRC, EDIT, 6, model=M)
    assert a[:2] == sample_candidates("pair-42", SRC, EDIT, 2, model=M)
    other = sample_candidates("pair-43", SRC, EDIT, 6, model=M)
    assert [r.seed for r in a] != [r.seed for r in other]
    assert len({r.seed for r in a}) == 6
    for i, rec in enumerate(a):
        r = _stored(rec)
        assert CandidateRecord.from_row(r) == rec and r["format"] == "editgen.p2p/1"
        assert r["pair_id"] == "pair-42" and r["candidate"] == i
        assert 7.5 <= r["guidance"] <= 15.0
        (edit,) = r["edits"]
        assert 0.1 <= edit["cross_replace"] <= 0.9 and edit["self_replace"] == edit["cross_replace"]
        assert edit["mode"] == "replace"  # auto resolved and stored
        assert r["steps"] == 50 and r["scheduler"] == "ddim" and r["dtype"] == "float32"
    assert candidate_rng("x", 1).random() == candidate_rng("x", 1).random() != candidate_rng("x", 2).random()


def test_sampling_respects_space():
    space = CandidateSpace(
        p_range=(0.3, 0.4), guidance_range=(2.0, 3.0), steps=20, scheduler="euler_a", mode="ip2p", tie_windows=False
    )
    recs = [r.params for r in sample_candidates("p", SRC, "make it a dog", 5, model=M, space=space,
                                                  edit_kind="replace")]
    for r in recs:
        (edit,) = r["edits"]
        assert edit["mode"] == "ip2p" and 0.3 <= edit["self_replace"] <= 0.4 and 0.3 <= edit["cross_replace"] <= 0.4
        assert 2.0 <= r["guidance"] <= 3.0 and r["steps"] == 20 and r["scheduler"] == "euler_a"
    assert any(r["edits"][0]["self_replace"] != r["edits"][0]["cross_replace"] for r in recs)
    auto = sample_candidates("p", SRC, "a cat", 1, model=M, edit_kind="refine")
    assert auto[0].params["edits"][0]["mode"] == "refine"
    with pytest.raises(ValueError):
        ModelRef("m", "auto")  # a record's dtype is explicit


def _png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)))


def test_regenerate_is_bit_identical(p2p):
    recs = sample_candidates(
        "pair-7", SRC, EDIT, 2, model=_model(p2p), space=SPACE, blend=BLEND, reweight={"dog": 1.5}
    )
    outs = render_records(p2p, recs)
    assert [o.record for o in outs] == recs
    for rec, out in zip(recs, outs, strict=True):
        stored = _stored(rec)
        again = regenerate(stored, Runtime.wrap(p2p))
        assert again.input_image == out.input_image
        assert again.edited_image == out.edited_image
        assert again.mask == out.mask and out.mask is not None
        assert torch.equal(again.result.latents, out.result.latents)
        img = _png(out.input_image)
        assert img.shape == (64, 64, 3)
        assert np.array_equal(img, (out.result.images[0] * 255).round().astype("uint8"))
        mask = _png(out.mask)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert outs[0].input_image != outs[1].input_image  # different seeds
    # from the record alone (pipeline loaded from record["model"])
    fresh = regenerate(_stored(recs[0]), device="cpu")
    assert fresh.edited_image == outs[0].edited_image


def test_jpeg_and_packed_batches(p2p):
    recs = sample_candidates(
        "pair-9", SRC, "a photo of a fluffy cat sitting on a bench", 3, model=_model(p2p), space=SPACE
    )
    assert record_request(recs[0]).edits[0].mode == "refine"
    jpeg = render_records(p2p, recs[:1], image_format="jpeg")[0]
    assert jpeg.input_image[:2] == b"\xff\xd8" and jpeg.image_format == "jpeg" and jpeg.mask is None
    single = render_records(p2p, recs)
    packed = render_records(p2p, recs, max_rows=6)  # three 2-row records share one UNet batch
    for pos, (s, p) in enumerate(zip(single, packed, strict=True)):
        assert {k: v for k, v in p.record.params.items() if k != "packed"} == s.record.params
        assert p.record.params["packed"]["position"] == pos and len(p.record.params["packed"]["batch"]) == 3
        assert torch.allclose(s.result.latents, p.result.latents, atol=1e-4, rtol=0)
        # packed rows are not bit-independent of their neighbours on CPU, so the batch is stored and replayed
        again = regenerate(_stored(p.record), Runtime.wrap(p2p))
        assert (again.input_image, again.edited_image) == (p.input_image, p.edited_image)
    diff = max(float((s.result.latents - p.result.latents).abs().max()) for s, p in zip(single, packed, strict=True))
    print(f"packed vs one-record layout, max latent difference on CPU: {diff:.2e}")
    with pytest.raises(ValueError, match="model"):
        render_records(p2p, [CandidateRecord.from_row({**recs[0].to_row(), "model": "other/model"})])
