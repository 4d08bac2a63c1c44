"""Tolerant parsing of malformed LLM answers."""

from __future__ import annotations

import pytest

from editgen.llm.parse import ParsedEdit, clean_text, parse_edit

GOOD = ParsedEdit("make it snow", "a snowy street")


@pytest.mark.parametrize(
    "text",
    [
        '{"instruction": "make it snow", "edited_caption": "a snowy street"}',
        '```json\n{"instruction": "make it snow", "edited_caption": "a snowy street"}\n```',
        'Sure! Here is the edit:\n{"instruction": "make it snow", "edited_caption": "a snowy street"} Hope it helps',
        '{"instruction": "make it snow", "edited_caption": "a snowy street",}',
        '{"instruction": "make it\nsnow", "edited_caption": "a snowy\tstreet"}',  # raw control chars
        '{"instruction": "make it \x08snow\x00", "edited_caption": "a snowy street\x1b"}',
        "{'instruction': 'make it snow', 'edited_caption': 'a snowy street'}",
        '{"instruction": "make it snow", "edited_caption": "a snowy \\street"}'.replace("\\s", "s"),
        '{"Instruction": "make it snow", "Edited Caption": "a snowy street"}',
        '{"instruction": "  \\"make it snow\\" ", "edited_caption": "a   snowy street  "}',
        '{"foo": 1} {"instruction": "make it snow", "edited_caption": "a snowy street"}',
        '\r\n\t{\r"instruction"\t:\n"make it snow"\r,\t"edited_caption" : "a snowy street"\n}',
    ],
)
def test_recovers_malformed_answers(text: str) -> None:
    assert parse_edit(text) == GOOD


def test_invalid_escape_is_repaired() -> None:
    got = parse_edit('{"instruction": "make it snow \\q", "edited_caption": "a snowy street"}')
    assert got is not None and got.instruction == "make it snow \\q"


@pytest.mark.parametrize(
    "text",
    [None, "", "   ", "no json here", '{"instruction": "make it', "[1, 2, 3]", '{"foo": "bar"}', "{}"],
)
def test_unparseable(text: str | None) -> None:
    assert parse_edit(text) is None


def test_missing_or_non_text_field_becomes_empty() -> None:
    assert parse_edit('{"instruction": "make it snow"}') == ParsedEdit("make it snow", "")
    assert parse_edit('{"instruction": ["x"], "edited_caption": "a"}') == ParsedEdit("", "a")


def test_clean_text() -> None:
    assert clean_text("  a\u200b b\x07\n c ") == "a b c"
    assert clean_text("'quoted'") == "quoted"
    assert clean_text(None) == ""
    assert clean_text(12) == "12"


def test_edit_type_is_read_under_its_spellings() -> None:
    """The type as written (validation maps it to the taxonomy); None only when the answer has no type key."""
    base = '"instruction": "make it snow", "edited_caption": "a snowy street"'
    assert parse_edit("{" + base + ', "edit_type": "weather_season_time"}') == ParsedEdit(
        "make it snow", "a snowy street", "weather_season_time")
    assert parse_edit("{" + base + ', "Edit Type": " Weather "}').edit_type == "Weather"
    assert parse_edit("{" + base + ', "type": "colour"}').edit_type == "colour"
    assert parse_edit("{" + base + ', "edit_type": ["colour"]}').edit_type == ""
    assert parse_edit("{" + base + "}").edit_type is None
