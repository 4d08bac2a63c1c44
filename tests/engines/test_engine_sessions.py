"""Multi-turn sessions in render (issue 22 item 5): a session's turns render as one P2P group from the same
noise; an image engine's turn t edits turn t-1's output; either way turn t's input is turn t-1's published
image byte for byte and each record regenerates its own pair; a turn the engine refuses ends the session
there; settings that cannot render sessions are refused as one line before anything runs."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from editgen.engines.base import check_sessions
from editgen.engines.p2p import blend_words
from editgen.engines.record import CandidateRecord
from editgen.engines.regenerate import regenerate
from editgen.p2p.edit_diff import diff_captions
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.sessions import AFTER_FAILURE, turn_id
from editgen.stages.render import RenderStage

FAST = ["render.steps=2", "render.candidates=2", "render.device=cpu", "render.local_blend=false",
        "instruct.turns=3"]
CHAIN = ["a photo of a red car parked on a quiet street", "a photo of a blue car parked on a quiet street",
         "a photo of a blue car parked on a sandy beach", "a photo of a blue car parked on a sandy beach at night"]


def session_rows(sid: str, captions: list[str], turns: list[int] | None = None) -> list[dict]:
    """Kept instruct rows of one session: turn t edits captions[t-1] into captions[t]."""
    rows = []
    for t in turns or range(1, len(captions)):
        d = diff_captions(captions[t - 1], captions[t])
        rows.append({"id": turn_id(sid, t), "caption": captions[t - 1], "edited_caption": captions[t],
                     "instruction": f"turn {t}", "edit_type": None, "edit_kind": d.kind,
                     "changed_words": d.changed_words, "source_words": d.source_words,
                     "target_words": d.target_words, "session_id": sid, "turn": t,
                     "status": "kept", "drop_reason": None})
    return rows


@pytest.fixture(scope="module")
def stage(p2p_one_thread) -> RenderStage:
    s = RenderStage(build_config(profile="tiny", overrides=FAST))
    s.setup()
    return s


def by_turn(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["id"], r["candidate"]): r for r in rows if r["status"] == "kept"}


def test_a_three_turn_session_renders_as_one_chain(stage):
    out = stage.process_partition(pa.Table.from_pylist(session_rows("s1", CHAIN))).to_pylist()
    kept = by_turn(out)
    assert len(kept) == 3 * 2, [(r["id"], r["drop_reason"]) for r in out]
    steps = stage.settings.steps
    for c in range(2):
        for t in (2, 3):  # the input of turn t is what turn t-1 published
            assert kept[(turn_id("s1", t), c)]["input_image"] == kept[(turn_id("s1", t - 1), c)]["edited_image"]
        recs = [CandidateRecord.from_row(json.loads(kept[(turn_id("s1", t), c)]["params"])) for t in (1, 2, 3)]
        assert len({r.seed for r in recs}) == 1 and all(len(r.params["edits"]) == 3 for r in recs)
        assert [r.params["session"]["turn"] for r in recs] == [1, 2, 3]
        assert all(r.compute.unet_row_steps == pytest.approx(2 * (1 + 3) / 3 * steps) for r in recs)
        assert recs[1].mask["words"] == blend_words(session_rows("s1", CHAIN)[1])  # turn 2's own words
    rec = CandidateRecord.from_row(json.loads(kept[(turn_id("s1", 2), 1)]["params"]))
    again = regenerate(rec, stage.runtime)  # any turn's record renders its group and returns its own pair
    assert (again.input_image, again.edited_image) == (kept[(turn_id("s1", 2), 1)]["input_image"],
                                                       kept[(turn_id("s1", 2), 1)]["edited_image"])


LONG = " on the grass" * 26  # ~80 CLIP tokens: what follows is cut off by the text encoder


def test_a_refused_turn_ends_the_session_and_a_lone_turn_cannot_render(stage):
    cut = [f"a cat{LONG} with a red ball", f"a dog{LONG} with a red ball", f"a dog{LONG} with a blue ball",
           f"a bird{LONG} with a blue ball"]  # turn 2's change lies past the 77 tokens: a no-op pair
    rows = session_rows("s2", cut) + session_rows("s3", CHAIN, turns=[1, 3])
    out = stage.process_partition(pa.Table.from_pylist(rows)).to_pylist()
    reasons = {r["id"]: r["drop_reason"] for r in out}
    assert reasons == {"s2": None, turn_id("s2", 2): "render_edit_truncated", turn_id("s2", 3): AFTER_FAILURE,
                       "s3": None, turn_id("s3", 3): AFTER_FAILURE}  # s3: turn 2 is missing


#: Each image engine on the tiny models, at its smallest (the inpainting region's bounds open: a random
#: UNet's attention region may be any size, only the chaining is under test here).
CHAINED = {
    "sdedit": ["render.engine=sdedit"],
    "instruct_model": ["render.engine=instruct_model", "render.resources.num_cpus=1"],
    "inpaint": ["render.engine=inpaint", "render.inpaint.min_area=0", "render.inpaint.max_area=1"],
}


@pytest.mark.parametrize("name", sorted(CHAINED))
def test_an_image_engine_edits_the_previous_turns_output(name, p2p_one_thread):
    stage = RenderStage(build_config(profile="tiny", overrides=[*FAST, "instruct.turns=2", *CHAINED[name]]))
    stage.setup()
    out = stage.process_partition(pa.Table.from_pylist(session_rows("s1", CHAIN[:3]))).to_pylist()
    kept = by_turn(out)
    assert len(kept) == 2 * 2, [(r["id"], r["drop_reason"]) for r in out]
    for c in range(2):
        first, second = kept[("s1", c)], kept[(turn_id("s1", 2), c)]
        assert second["input_image"] == first["edited_image"]  # what turn 1 published, byte for byte
        rec = CandidateRecord.from_row(json.loads(second["params"]))
        assert rec.engine == name and rec.params["source"]["kind"] == "real" and rec.candidate == c
        again = regenerate(rec, stage.runtime, image=first["edited_image"])  # its photograph: turn 1's output
        assert again.edited_image == second["edited_image"]
    assert {CandidateRecord.from_row(json.loads(kept[("s1", c)]["params"])).params["source"]["kind"]
            for c in range(2)} == {"generated"}


@pytest.mark.parametrize("overrides, words", [
    (["render.engine=sdedit", "render.shared_sources=3"], "shared_sources > 1 is for generated sources"),
    (["render.early_stop=true", "filter.top_k=1"], "early_stop"),
    (["render.shared_sources=2", "render.candidates=2"], "shared_sources must be 1"),
])
def test_settings_that_cannot_render_sessions_are_one_line(overrides, words):
    cfg = build_config(profile="tiny", overrides=["instruct.turns=2", *overrides])
    with pytest.raises(ConfigError, match=words):
        check_sessions(cfg.instruct.turns, cfg.render)
    check_sessions(1, cfg.render)  # single turns: every engine, as before
