"""Shared sources (issue 15 item 3): k candidates of a pair in one P2P group of 1 + k rows."""

from __future__ import annotations

import json

import pytest
import torch

from editgen.p2p.candidates import CandidateSpace, render_records, sample_candidates
from editgen.p2p.compute import record_compute
from editgen.p2p.regenerate import regenerate
from editgen.p2p.shared import KEY, render_shared, share_sources

SRC = "a photo of a cat sitting on a bench"
DST = "a photo of a dog sitting on a bench"
SPACE = CandidateSpace(steps=3, height=32, width=32)

pytestmark = pytest.mark.usefixtures("p2p_one_thread")  # tests/conftest.py


def _records(p2p, n: int, k: int) -> list[dict]:
    return share_sources(sample_candidates("pair", SRC, DST, n, model=p2p.model, dtype="float32", space=SPACE), k)


def test_groups_share_seed_and_guidance_and_keep_their_windows(p2p):
    recs = _records(p2p, 6, 3)
    for g in (recs[:3], recs[3:]):
        assert len({(r["seed"], r["guidance"]) for r in g}) == 1
        assert len({json.dumps(r["edits"][0]["cross_replace"]) for r in g}) == 3  # own P2P windows
        assert [r[KEY]["members"] for r in g] == [[g[0]["candidate"], g[1]["candidate"], g[2]["candidate"]]] * 3
    assert recs[0]["seed"] != recs[3]["seed"]
    plain = sample_candidates("pair", SRC, DST, 6, model=p2p.model, dtype="float32", space=SPACE)
    assert [r["edits"] for r in recs] == [r["edits"] for r in plain]  # windows as without sharing
    assert share_sources(plain, 1) == plain


def test_one_group_render_equals_each_candidate_alone_and_regenerates(p2p):
    recs = _records(p2p, 3, 3)
    outs = render_shared(p2p, recs)
    assert len({o.input_image for o in outs}) == 1  # one source image for the group
    assert len({o.edited_image for o in outs}) == 3
    assert outs[0].result.latents.shape[0] == 4  # 1 source + 3 edits, not 2 x 3
    alone = render_records(p2p, [{k: v for k, v in r.items() if k != KEY} for r in recs])
    for a, o in zip(alone, outs, strict=True):  # same seed/guidance/windows, batch 2 vs 4: rounding only
        assert torch.allclose(a.result.latents[1], o.result.latents[1 + recs.index(o.record) % 3], atol=1e-4)
    again = regenerate(json.loads(json.dumps(recs[1])), p2p)
    assert again.edited_image == outs[1].edited_image and again.input_image == outs[1].input_image
    c = record_compute(recs[0], 100, share=3)
    assert c.unet_row_steps == 2 * (1 + 3) / 3 * 3  # 2(1+k) rows per k candidates, 3 steps


def test_config_needs_whole_groups():
    from pydantic import ValidationError

    from editgen.pipeline.settings.render import RenderConfig

    assert RenderConfig(candidates=8, shared_sources=4).shared_sources == 4
    with pytest.raises(ValidationError, match="multiple of shared_sources"):
        RenderConfig(candidates=6, shared_sources=4)
