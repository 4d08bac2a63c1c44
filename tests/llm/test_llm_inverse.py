"""Inverse instructions (`instruct.inverse`, issue 22 item 6): the schema asks for one only when on, the
template backend writes the one that undoes each rule's edit, validation names every bad one, the prompt
shows inverse examples, and with the setting off prompts, outputs and hashes are as before."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from editgen.llm import template_backend as T
from editgen.llm import validate as V
from editgen.llm.base import LLMRequest
from editgen.llm.parse import ParsedEdit, parse_edit
from editgen.pipeline.config import section_hash
from editgen.pipeline.errors import ConfigError
from editgen.prompts.builder import INVERSE_SECTION, PromptBuilder
from editgen.prompts.schema import INVERSE_FIELD, edit_schema
from editgen.stages.instruct import OUTPUT_FIELDS, InstructStage
from tests.llm_fixtures import CAPTIONS, ScriptedBackend, caption_batch, instruct_config

CAPTION = "a red car parked on the street"
OUTPUT_FIELDS_NAMES = [f.name for f in OUTPUT_FIELDS]


def test_schema_requires_the_inverse_only_when_on() -> None:
    off, on = edit_schema(40, 80), edit_schema(40, 80, inverse=True)
    assert off["required"] == ["edit_type", "instruction", "edited_caption"] and INVERSE_FIELD not in off["properties"]
    assert on["required"] == [*off["required"], INVERSE_FIELD]
    assert on["properties"][INVERSE_FIELD] == {"type": "string", "minLength": 1, "maxLength": 40}
    assert list(on["properties"])[-1] == INVERSE_FIELD  # written after the edit it undoes


def test_off_keeps_todays_hashes_and_on_changes_them() -> None:
    # Pinned from the commit before the setting existed: adding it (at its default) changed no hash.
    assert section_hash(instruct_config(), "instruct", "up", "3") == "30f909cd7ce8ca26"
    assert section_hash(instruct_config("instruct.inverse=false"), "instruct", "up", "3") == "30f909cd7ce8ca26"
    assert section_hash(instruct_config("instruct.inverse=true"), "instruct", "up", "3") != "30f909cd7ce8ca26"


# (caption, generator, seed) -> the inverse that undoes it; one case per rule, every edit type.
RULE_CASES = [
    ("a red car parked on the street", T._colour, "make the car red"),
    ("wooden table with a vase", T._material, "make the table wooden"),
    ("a cat sleeping on a sofa", T._object, "replace the dog with a cat"),
    ("forest road in summer", T._season, "change the season back to summer"),
    ("city skyline at night", T._time, "change the time of day back to night"),
    ("snowy mountain road", T._weather, "make the weather snowy again"),
    ("woman smiling in the kitchen", T._pose, "make the woman smile again"),
    ("man standing on the beach", T._pose, "make the man stand up again"),
    ("old photo of a bridge", T._medium, "turn it back into a photo"),
    ("woman smiling in the kitchen", T._setting, "put it back in the kitchen"),
    ("sneakers isolated on white background", T._background, "put it back on a plain white background"),
    ("girl with a red hat in the park", T._remove, "add the red hat back"),
    ("lamp", T._add, "remove the cat beside it"),
    ("man standing on the beach", T._add, "remove the straw hat"),
    ("lamp", T._place, "put it back on a plain background"),
    ("city park path", T._scene, "make it full daylight"),
    ("lamp", T._style, "remove the pencil sketch style"),
    ("small dog on the grass", T._size, "make the dog small"),
    ("two apples on a plate", T._count, "make it two apples again"),
    ("a vase on a shelf", T._count, "leave only one vase"),
    ("a sign on the wall", T._text, 'remove the word "OPEN" from the sign'),
    ("lamp", T._tone, "remove the warm golden light"),
]


@pytest.mark.parametrize(("caption", "gen", "inverse"), RULE_CASES, ids=[f"{c[1].__name__}:{c[0]}" for c in RULE_CASES])
def test_template_inverse_undoes_each_rule(caption: str, gen, inverse: str) -> None:
    cand = gen(T.Caption(caption), random.Random(1))
    assert cand is not None and cand.inverse == inverse, cand
    assert V.normalized(cand.inverse) != V.normalized(cand.instruction)


def test_template_rules_cover_every_type_with_an_inverse() -> None:
    made = {gen(T.Caption(c), random.Random(1)).edit_type for c, gen, _ in RULE_CASES}
    assert made == set(T.R.FAMILY_TYPES.values())


def test_template_answers_the_inverse_when_the_schema_asks_and_nothing_else_changes() -> None:
    reqs = [LLMRequest(row_id=str(i), caption=c, messages=[], seed=i) for i, c in enumerate(CAPTIONS * 3)]
    off = T.TemplateBackend(T.GenerationSettings(schema=edit_schema())).generate(reqs)
    on = T.TemplateBackend(T.GenerationSettings(schema=edit_schema(inverse=True))).generate(reqs)
    validator = V.Validator([], inverse=True)
    for req, a, b in zip(reqs, off, on, strict=True):
        fwd, both = json.loads(a.text), json.loads(b.text)
        assert INVERSE_FIELD not in fwd and {k: v for k, v in both.items() if k != INVERSE_FIELD} == fwd
        assert validator.check(req.caption, parse_edit(b.text)) is None, (req.caption, both)


@pytest.mark.parametrize(
    ("inverse", "reason"),
    [
        ("make the car red", None),
        (None, V.INVERSE_MISSING),
        ("", V.INVERSE_MISSING),
        (" ... ", V.INVERSE_MISSING),
        ("Make the car BLUE!", V.INVERSE_SAME),
        ("make the car gore", V.BLOCKLISTED),
        ("please make the car red again right now as it was", V.INSTRUCTION_TOO_LONG),
    ],
)
def test_validation_names_each_bad_inverse(inverse: str | None, reason: str | None) -> None:
    edit = ParsedEdit("make the car blue", "a blue car parked on the street", "colour", inverse)
    assert V.Validator(["gore"], max_instruction_words=8, inverse=True).check(CAPTION, edit) == reason
    assert V.Validator(["gore"], max_instruction_words=8).check(CAPTION, edit) is None  # off: not judged
    assert reason is None or reason in V.REASONS
    # A bad forward edit keeps its own reason: the inverse is judged only for an edit worth keeping.
    bad = ParsedEdit("make the car blue", CAPTION, "colour", inverse)
    assert V.Validator([], inverse=True).check(CAPTION, bad) == V.NO_CHANGE


def test_parse_reads_the_inverse_and_its_aliases() -> None:
    base = {"edit_type": "colour", "instruction": "make it blue", "edited_caption": "a blue car"}
    assert parse_edit(json.dumps(base)).inverse_instruction is None
    spaced = parse_edit(json.dumps({**base, "Inverse Instruction": " make it red\n"}))
    assert spaced.inverse_instruction == "make it red"
    assert parse_edit(json.dumps({**base, "undo": "make it red"})).inverse_instruction == "make it red"
    assert parse_edit(json.dumps({**base, INVERSE_FIELD: 3})).inverse_instruction == ""


def test_prompt_shows_inverse_examples_only_when_on(tmp_path: Path) -> None:
    off = PromptBuilder(seed=1, k=8).request("row-1", CAPTION)
    on = PromptBuilder(seed=1, k=8, inverse=True).request("row-1", CAPTION)
    assert INVERSE_FIELD not in json.dumps(off.messages) and INVERSE_SECTION not in off.messages[0]["content"]
    assert on.messages[0]["content"].endswith(INVERSE_SECTION)
    answers = [json.loads(m["content"]) for m in on.messages if m["role"] == "assistant"]
    assert len(answers) == 8 and all(a[INVERSE_FIELD] and a[INVERSE_FIELD] != a["instruction"] for a in answers)
    assert all(list(a)[-1] == INVERSE_FIELD for a in answers)
    # A few-shot file with no inverse examples: one config line before OUT is touched, not a silent zero-shot.
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"edit_type": "colour", "caption": CAPTION, "instruction": "make the car blue",
                                 "edited_caption": "a blue car parked on the street"}) + "\n")
    stage = InstructStage(instruct_config(backend="template", inverse=True, fewshot_file=str(shots)))
    with pytest.raises(ConfigError, match="shots.jsonl: instruct.inverse needs few-shot examples"):
        stage.preflight()
    InstructStage(instruct_config(backend="template", fewshot_file=str(shots))).preflight()
    empty = tmp_path / "empty.jsonl"  # (load_fewshot caches by path)
    empty.write_text(shots.read_text().replace("}", ', "inverse_instruction": ""}'))
    with pytest.raises(ConfigError, match=r"empty.jsonl:1: inverse_instruction is not a non-empty string"):
        InstructStage(instruct_config(backend="template", fewshot_file=str(empty))).preflight()


def _answer(req: LLMRequest, call: int) -> str:
    """Row 1: no inverse; row 2: the forward again; the others a good inverse."""
    edit = {"edit_type": "colour", "instruction": "make the car blue",
            "edited_caption": "a blue car parked on the street"}
    n = int(req.row_id.rsplit("-", 1)[1])
    inverse = {1: None, 2: "make the car blue"}.get(n, "make the car red")
    return json.dumps(edit if inverse is None else {**edit, INVERSE_FIELD: inverse})


def test_stage_writes_the_column_only_when_on() -> None:
    batch = caption_batch([CAPTION] * 4)
    outs = {}
    for inverse in (False, True):
        stage = InstructStage(instruct_config(inverse=inverse))
        stage.setup(backend=ScriptedBackend(_answer), blocked_terms=[])
        outs[inverse] = stage.process_batch(batch)
    assert [c for c in outs[True].column_names if c != INVERSE_FIELD] == outs[False].column_names
    assert INVERSE_FIELD not in outs[False].column_names and set(OUTPUT_FIELDS_NAMES) <= set(outs[False].column_names)
    assert outs[False].column("drop_reason").to_pylist() == [None] * 4
    on = outs[True].to_pylist()
    assert [r["drop_reason"] for r in on] == [None, V.INVERSE_MISSING, V.INVERSE_SAME, None]
    assert [r[INVERSE_FIELD] for r in on] == ["make the car red", None, None, "make the car red"]
    assert outs[True].drop_columns([INVERSE_FIELD]).column("instruction").to_pylist()[0] == "make the car blue"
