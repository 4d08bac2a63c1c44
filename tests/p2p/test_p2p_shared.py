"""Shared sources (issue 15 item 3): k candidates of a pair in one P2P group of 1 + k rows."""

from __future__ import annotations

import json

import pytest
import torch

from editgen.engines.p2p_records import SHARED as KEY
from editgen.engines.p2p_records import render_records, render_shared, sample_candidates, share_sources
from editgen.engines.record import CandidateRecord, ModelRef
from editgen.engines.regenerate import regenerate
from editgen.engines.runtime import Runtime
from editgen.p2p.candidates import CandidateSpace
from editgen.p2p.compute import record_compute

SRC = "a photo of a cat sitting on a bench"
DST = "a photo of a dog sitting on a bench"
SPACE = CandidateSpace(steps=3, height=32, width=32)

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # tests/conftest.py


def _sample(p2p, n: int) -> list[CandidateRecord]:
    return sample_candidates("pair", SRC, DST, n, model=ModelRef(p2p.model, "float32"), space=SPACE)


def _records(p2p, n: int, k: int) -> list[CandidateRecord]:
    return share_sources(_sample(p2p, n), k)


def test_groups_share_seed_and_guidance_and_keep_their_windows(p2p):
    recs = [r.to_row() for r in _records(p2p, 6, 3)]
    for g in (recs[:3], recs[3:]):
        assert len({(r["seed"], r["guidance"]) for r in g}) == 1
        assert len({json.dumps(r["edits"][0]["cross_replace"]) for r in g}) == 3  # own P2P windows
        assert [r[KEY]["members"] for r in g] == [[g[0]["candidate"], g[1]["candidate"], g[2]["candidate"]]] * 3
    assert recs[0]["seed"] != recs[3]["seed"]
    plain = _sample(p2p, 6)
    assert [r["edits"] for r in recs] == [r.params["edits"] for r in plain]  # windows as without sharing
    assert share_sources(plain, 1) == plain


def test_one_group_render_equals_each_candidate_alone_and_regenerates(p2p):
    recs = _records(p2p, 3, 3)
    outs = render_shared(p2p, recs)
    assert len({o.input_image for o in outs}) == 1  # one source image for the group
    assert len({o.edited_image for o in outs}) == 3
    assert outs[0].result.latents.shape[0] == 4  # 1 source + 3 edits, not 2 x 3
    alone = render_records(p2p, [CandidateRecord.from_row({k: v for k, v in r.to_row().items() if k != KEY})
                                 for r in recs])
    for a, o in zip(alone, outs, strict=True):  # same seed/guidance/windows, batch 2 vs 4: rounding only
        assert torch.allclose(a.result.latents[1], o.result.latents[1 + recs.index(o.record) % 3], atol=1e-4)
    again = regenerate(json.loads(recs[1].to_json()), Runtime.wrap(p2p))
    assert again.edited_image == outs[1].edited_image and again.input_image == outs[1].input_image
    c = record_compute(recs[0].params, 100, share=3)
    assert c.unet_row_steps == 2 * (1 + 3) / 3 * 3  # 2(1+k) rows per k candidates, 3 steps


def test_config_needs_whole_groups():
    from pydantic import ValidationError

    from editgen.pipeline.settings.render import RenderConfig

    assert RenderConfig(candidates=8, shared_sources=4).shared_sources == 4
    with pytest.raises(ValidationError, match="multiple of shared_sources"):
        RenderConfig(candidates=6, shared_sources=4)
