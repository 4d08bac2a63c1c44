"""Multi-turn sessions in the instruct stage (`instruct.turns`, issue 22 item 5): a chain of edits, each turn
on the previous turn's edited caption with its own type, seed and validation; a session ends at its first
dropped turn (emitted with its reason); a turn that comes back to an earlier caption is dropped; with
turns = 1 outputs and hashes are exactly as without the setting."""

from __future__ import annotations

import pyarrow as pa

from editgen.llm.template_backend import template_edit
from editgen.llm.validate import SESSION_REPEATS
from editgen.p2p.edit_diff import words
from editgen.pipeline.config import section_hash
from editgen.pipeline.sessions import SESSION_ID, TURN, turn_id
from editgen.prompts.taxonomy import assign_type
from editgen.stages.instruct import INVERSE_FIELD, OUTPUT_FIELDS, TYPE_KEPT, TYPE_REQUESTED, InstructStage
from tests.llm_fixtures import CAPTIONS, ScriptedBackend, caption_batch, edit_json, instruct_config

WEIGHTS = {"colour": 1.0, "add_object": 1.0, "style_medium": 1.0}


def _run(batch: pa.Table, blocked: list[str] | None = None, backend=None, **cfg) -> tuple[InstructStage, pa.Table]:
    """The stage with the template backend (or `backend`), small batches so turns cross batch boundaries."""
    settings = {"backend": "template", "fewshot_k": 0, "resources": {"batch_size": 5}, **cfg}
    stage = InstructStage(instruct_config(**settings))
    stage.setup(backend=backend, blocked_terms=blocked or [])
    return stage, stage.process_partition(batch)


def _sessions(out: pa.Table) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in out.to_pylist():
        by.setdefault(r[SESSION_ID], []).append(r)
    return by


def test_a_three_turn_chain_is_reproducible_and_typed_per_turn() -> None:
    batch = caption_batch(CAPTIONS)
    stage, out = _run(batch, turns=3, type_weights=WEIGHTS, seed=5)
    assert out.schema.field(SESSION_ID).type == pa.string() and out.schema.field(TURN).type == pa.int32()
    sessions = _sessions(out)
    assert list(sessions) == batch.column("id").to_pylist()  # session by session, in input order
    for sid, turns in sessions.items():
        assert [r[TURN] for r in turns] == [1, 2, 3] and all(r["status"] == "kept" for r in turns)
        assert [r["id"] for r in turns] == [turn_id(sid, t) for t in (1, 2, 3)]
        assert turns[0]["caption"] == CAPTIONS[int(sid[-4:])]
        for prev, cur in zip(turns[:-1], turns[1:], strict=True):  # chained: each turn edits the previous edit
            assert cur["caption"] == prev["edited_caption"] and cur["url"] == prev["url"]
        assert [r["type_requested"] for r in turns] == [assign_type(r["id"], 5, WEIGHTS) for r in turns]
        assert all(r["edit_type"] for r in turns) and len({r["llm_seed"] for r in turns}) == 3
    assert stage.metrics["requests"] == 3 * len(CAPTIONS)  # one request per turn, no re-asks
    rows = out.to_pylist()
    assert sum(v for k, v in stage.metrics.items() if k.startswith(TYPE_REQUESTED)) == len(rows)
    for t in {r["edit_type"] for r in rows}:
        assert stage.metrics[TYPE_KEPT + t] == sum(r["edit_type"] == t for r in rows)
    # A rerun writes the same rows, also in other batches (a turn's seed and type follow from its id alone).
    assert _run(batch, turns=3, type_weights=WEIGHTS, seed=5)[1].equals(out)
    assert _run(batch, turns=3, type_weights=WEIGHTS, seed=5, resources={"batch_size": 64})[1].equals(out)


def test_turn_one_of_a_session_is_the_single_edit_and_turns_1_adds_nothing() -> None:
    batch = caption_batch([*CAPTIONS[:6], None])
    _, single = _run(batch, type_weights=WEIGHTS, inverse=True)
    _, explicit = _run(batch, turns=1, type_weights=WEIGHTS, inverse=True)
    _, chained = _run(batch, turns=2, type_weights=WEIGHTS, inverse=True)
    names = [*batch.column_names, *(f.name for f in OUTPUT_FIELDS), INVERSE_FIELD.name, "status", "drop_reason"]
    assert single.column_names == names and explicit.equals(single)  # no session columns, same rows
    first = chained.filter(pa.compute.equal(chained[TURN], 1)).drop_columns([SESSION_ID, TURN])
    assert first.equals(single)
    missing = chained.to_pylist()[-1]  # no caption: exactly one row, turn 1, dropped
    assert (missing["id"], missing[TURN], missing["drop_reason"]) == ("row-0006", 1, "llm_missing_caption")
    assert chained.num_rows == 2 * 6 + 1
    base = section_hash(instruct_config(), "instruct", "up", "3")
    assert base == "30f909cd7ce8ca26" == section_hash(instruct_config("instruct.turns=1"), "instruct", "up", "3")
    assert section_hash(instruct_config("instruct.turns=2"), "instruct", "up", "3") != base


def test_a_failing_turn_ends_its_session() -> None:
    batch = caption_batch(CAPTIONS)
    _, free = _run(batch, turns=3)
    # A word only turn 2 of some session writes: blocklisted, that turn is dropped and turn 3 never asked.
    sid, word = next(
        (sid, w) for sid, (t1, t2, _) in _sessions(free).items()
        for w in t2["target_words"] or []
        if w.isalpha() and w not in words(" ".join([t1["caption"], t1["edited_caption"], t1["instruction"]]))
    )
    stage, out = _run(batch, blocked=[word], turns=3)
    sessions = _sessions(out)
    t1, t2 = sessions[sid]
    assert t1 == _sessions(free)[sid][0]  # turn 1 as before
    assert (t2["id"], t2["status"], t2["drop_reason"]) == (turn_id(sid, 2), "dropped", "llm_blocklisted")
    assert t2["caption"] == t1["edited_caption"] and t2["edited_caption"] is None and t2["edit_type"] is None
    for turns in sessions.values():  # every session: kept turns, then at most one dropped turn, then none
        assert [r[TURN] for r in turns] == list(range(1, len(turns) + 1))
        assert all(r["status"] == "kept" for r in turns[:-1])
        assert len(turns) == 3 or turns[-1]["status"] == "dropped"
    assert stage.metrics["requests"] == sum(len(t) for t in sessions.values())


CAR = "a {} car parked on the street"
#: Per session, each turn's edited caption: row-0000 undoes turn 1 at turn 2 (other case, a period added);
#: row-0001 goes red -> blue -> green -> red, back to its input at turn 3; row-0002 never comes back.
PLAN = {"row-0000": [CAR.format("blue"), CAR.format("RED").upper() + "."],
        "row-0001": [CAR.format(c) for c in ("blue", "green", "red")],
        "row-0002": [CAR.format(c) for c in ("blue", "green", "pink", "white")]}


def _colours(req, call):
    sid, _, t = req.row_id.partition("-t")
    edited = PLAN[sid][int(t or 1) - 1]
    return edit_json(f"make the car {words(edited)[1]}", edited, "colour")


def test_a_turn_back_to_an_earlier_caption_is_dropped() -> None:
    batch = caption_batch([CAR.format("red")] * 3)
    _, out = _run(batch, backend=ScriptedBackend(_colours), turns=4)
    got = {sid: [(r[TURN], r["drop_reason"]) for r in turns] for sid, turns in _sessions(out).items()}
    assert got == {
        "row-0000": [(1, None), (2, SESSION_REPEATS)],
        "row-0001": [(1, None), (2, None), (3, SESSION_REPEATS)],
        "row-0002": [(1, None), (2, None), (3, None), (4, None)],
    }
    assert [r["edited_caption"] for r in out.to_pylist()[-4:]] == PLAN["row-0002"]
    assert [r["caption"] for r in out.to_pylist()[-4:]] == [CAR.format("red"), *PLAN["row-0002"][:3]]


def test_inverse_instructions_per_turn() -> None:
    _, out = _run(caption_batch(CAPTIONS[:4]), turns=2, inverse=True)
    assert out.num_rows == 8
    for r in out.to_pylist():  # each turn's inverse undoes that turn's own edit (the template's inverse of it)
        assert r["status"] == "kept" and r[INVERSE_FIELD.name] != r["instruction"]
        assert r[INVERSE_FIELD.name] == template_edit(r["caption"], r["llm_seed"]).inverse
