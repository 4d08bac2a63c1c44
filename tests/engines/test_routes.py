"""Routing by edit type (issue 22 item 3): `render.routes` sends each type's pairs to its engine, other pairs
to `render.engine`; `render.type_candidates` sets a type's candidate count; the settings are checked as one
line and leave today's hashes alone when unset."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from editgen.cli.main import main as cli_main
from editgen.engines.base import choose_engine, engine_names, needs_of, pair_key
from editgen.engines.record import CandidateRecord
from editgen.engines.routes import DEFAULT_ROUTES
from editgen.pipeline.config import build_config
from editgen.pipeline.runner import stage_hashes
from editgen.prompts.taxonomy import NAMES
from editgen.stages.render import RenderStage
from editgen.tiny.synthetic import instruct_table

#: A few steps on the tiny models; the inpaint engine's area check off (a random UNet's attention
#: region may be any size: here only the engine a pair goes to matters).
FAST = ["render.steps=2", "render.candidates=1", "render.device=cpu", "render.local_blend=false",
        "render.inpaint.min_area=0", "render.inpaint.max_area=1"]


def render(types: list[str | None], *overrides: str) -> list[dict]:
    stage = RenderStage(build_config(profile="tiny", overrides=FAST + list(overrides)))
    stage.setup()
    return stage.process_partition(instruct_table(types)).to_pylist()


def test_default_routes_cover_every_type_with_a_registered_engine():
    assert set(DEFAULT_ROUTES) == set(NAMES)
    cfg = build_config(profile="tiny", overrides=["render.routes=default"]).render
    assert cfg.routes == DEFAULT_ROUTES  # stored expanded: the stage hash covers the table itself
    assert engine_names(cfg) == sorted(set(DEFAULT_ROUTES.values()) | {"p2p"})


def test_routes_send_each_type_to_its_engine_and_the_rest_to_render_engine():
    types = [*NAMES, None, ""]
    rows = render(types, "render.routes=default")
    kept = [r for r in rows if r["status"] == "kept"]
    assert len(kept) == len(types), Counter(r["drop_reason"] for r in rows)
    for r in kept:
        rec = CandidateRecord.from_row(json.loads(r["params"]))
        if r["edit_type"]:
            assert (rec.engine, rec.route) == (DEFAULT_ROUTES[r["edit_type"]], r["edit_type"]), r["edit_type"]
        else:  # no type: render.engine, and no route in the record (the bytes a run without routes writes)
            assert rec.engine == "p2p" and rec.route is None and "route" not in json.loads(r["params"])
    assert len({json.loads(r["params"])["format"] for r in kept}) == len(set(DEFAULT_ROUTES.values()))


def test_unrouted_types_draw_from_render_engine_and_type_candidates_set_the_count():
    weights = {"p2p": 1.0, "sdedit": 1.0}
    types = ["colour", "replace_object", "remove_object", "style_medium", None]
    rows = render(types, "render.engine={p2p: 1, sdedit: 1}", "render.routes={colour: sdedit}",
                  "render.type_candidates={colour: 2, replace_object: 3}")
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        assert r["status"] == "kept", r["drop_reason"]
        by_id.setdefault(r["id"], []).append(r)
    counts = {ids[0]["edit_type"]: len(ids) for ids in by_id.values()}
    assert counts == {"colour": 2, "replace_object": 3, "remove_object": 1, "style_medium": 1, None: 1}
    for pair_id, cands in by_id.items():
        recs = [CandidateRecord.from_row(json.loads(c["params"])) for c in cands]
        assert [c["candidates_drawn"] for c in cands] == [len(cands)] * len(cands)
        if cands[0]["edit_type"] == "colour":
            assert {(r.engine, r.route) for r in recs} == {("sdedit", "colour")}
        else:  # no route for its type: the weighted draw of render.engine, as without routes
            assert {(r.engine, r.route) for r in recs} == {(choose_engine(pair_key(pair_id, 0), weights), None)}


def test_routed_engines_count_as_used():
    cfg = build_config(profile="tiny", overrides=["render.source=real", "render.routes={remove_object: inpaint}"])
    assert engine_names(cfg.render) == ["inpaint", "p2p"] and needs_of(cfg.render).real_image


@pytest.mark.parametrize("value, words", [
    ("render.routes=everything", "config: render.routes: expected 'default' or {edit_type: engine"),
    ("render.routes={blue: p2p}", "config: render.routes: unknown edit type 'blue' (known: replace_object"),
    ("render.routes={colour: dalle}", "config: render.routes.colour: unknown engine 'dalle' (known: p2p"),
    ("render.routes=[p2p]", "config: render.routes: expected 'default' or {edit_type: engine, ...}, got a list"),
    ("render.type_candidates={colour: 0}", "config: render.type_candidates.colour: input should be greater"),
    ("render.type_candidates={hue: 2}", "config: render.type_candidates: unknown edit type 'hue'"),
    # a routed engine's own checks run (P2P: candidates a multiple of shared_sources), for a type's count too
    ("render.routes={colour: p2p} --set render.engine=sdedit --set render.shared_sources=2 --set "
     "render.candidates=3", "candidates (3) must be a multiple of shared_sources (2)"),
    ("render.shared_sources=2 --set render.candidates=2 --set render.type_candidates={colour: 3}",
     "config: render.type_candidates: colour: candidates (3) must be a multiple of shared_sources (2)"),
])
def test_bad_routes_are_one_config_line(value, words, capsys):
    argv = ["config", "--profile", "tiny"]
    for item in value.split(" --set "):
        argv += ["--set", item]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_routes_off_keep_todays_hashes_and_on_recompute_render_only():
    base = stage_hashes(build_config(profile="tiny"))
    for same in ("render.routes=null", "render.type_candidates=null"):
        assert stage_hashes(build_config(profile="tiny", overrides=[same])) == base, same
    routed = stage_hashes(build_config(profile="tiny", overrides=["render.routes=default"]))
    assert routed["instruct"] == base["instruct"] and routed["render"] != base["render"]
    spelled = "render.routes={" + ", ".join(f"{t}: {e}" for t, e in DEFAULT_ROUTES.items()) + "}"
    assert stage_hashes(build_config(profile="tiny", overrides=[spelled])) == routed  # the preset is its table
    counted = stage_hashes(build_config(profile="tiny", overrides=["render.type_candidates={colour: 2}"]))
    assert counted["render"] not in (base["render"], routed["render"])


def test_type_candidates_bound_early_stop_per_pair():
    """With early stop, a pair draws until top_k pass or its type's count: top_k beyond any count, so each
    pair draws exactly its count."""
    rows = render(["colour", "replace_object"], "render.early_stop=true", "filter.top_k=9",
                  "render.type_candidates={colour: 3}")
    drawn = {r["edit_type"]: r["candidates_drawn"] for r in rows}
    assert drawn == {"colour": 3, "replace_object": 1}, drawn
