"""Prompt building: the few-shot set, per-row seeded sampling, chat turns and the JSON schema."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from editgen.llm.validate import Validator
from editgen.p2p.edit_diff import normalized
from editgen.prompts.builder import PromptBuilder, load_fewshot, load_system_prompt, row_seed, sample_fewshot
from editgen.prompts.schema import FIELDS, edit_schema, response_format
from editgen.prompts.taxonomy import NAMES


def test_fewshot_set_is_large_diverse_and_valid() -> None:
    """Every edit type has examples (at least 3), keep_names is a family of its own, and every example
    passes the stage's validation, its type's caption rule included."""
    shots = load_fewshot()
    assert len(shots) >= 60
    types = Counter(s.edit_type for s in shots)
    assert set(types) == set(NAMES), set(NAMES) - set(types)
    assert min(types.values()) >= 3, types
    assert Counter(s.family for s in shots)["keep_names"] >= 6
    assert len({s.caption for s in shots}) == len(shots), "duplicate few-shot captions"
    validator = Validator([], max_instruction_words=12, min_similarity=0.3)
    for s in shots:  # every example must itself pass the stage's validation
        assert normalized(s.caption) != normalized(s.edited_caption), s
        assert validator.check(s.caption, _parsed(s.instruction, s.edited_caption, s.edit_type)) is None, s


def test_keep_names_examples_keep_the_names() -> None:
    names = ["Nike Air Max 90", "Vincent van Gogh", "Apple iPhone 13", "Harry Potter", "Coca-Cola", "LEGO Star Wars"]
    shots = {s.caption: s for s in load_fewshot() if s.family == "keep_names"}
    for name in names:
        hits = [s for c, s in shots.items() if name in c]
        assert hits, name
        assert all(name in s.edited_caption for s in hits), name


def _parsed(instruction: str, edited: str, edit_type: str):
    from editgen.llm.parse import ParsedEdit

    return ParsedEdit(instruction, edited, edit_type)


def test_row_seed_is_stable_and_distinct() -> None:
    assert row_seed("abc", 0) == row_seed("abc", 0)
    seeds = {row_seed("abc", 0), row_seed("abd", 0), row_seed("abc", 1), row_seed("abc", 0, attempt=1)}
    assert len(seeds) == 4
    assert all(0 <= s < 2**31 for s in seeds)


def test_sample_spreads_over_families() -> None:
    shots = load_fewshot()
    picked = sample_fewshot(shots, 8, random.Random(3))
    assert len(picked) == 8
    assert len({p.family for p in picked}) == 8
    assert sample_fewshot(shots, 0, random.Random(3)) == []
    assert len(sample_fewshot(shots, 500, random.Random(3))) == len(shots)


def test_request_messages_are_chat_turns_ending_with_the_caption() -> None:
    b = PromptBuilder(seed=7, k=4)
    req = b.request("row-1", "Red Sneakers Isolated On White Background")
    roles = [m["role"] for m in req.messages]
    assert roles == ["system"] + ["user", "assistant"] * 4 + ["user"]
    assert req.messages[0]["content"].startswith(load_system_prompt())
    assert all(name in req.messages[0]["content"] for name in NAMES)  # the taxonomy follows it
    assert req.messages[-1]["content"].endswith("Red Sneakers Isolated On White Background")
    for m in req.messages[2:-1:2]:
        assert set(json.loads(m["content"])) == set(FIELDS)
    assert req.seed == row_seed("row-1", 7)


def test_requests_are_deterministic_and_vary_by_row() -> None:
    a, b = PromptBuilder(seed=1, k=6), PromptBuilder(seed=1, k=6)
    assert a.request("x", "cap") == b.request("x", "cap")
    samples = {json.dumps(a.request(f"id{i}", "cap").messages) for i in range(20)}
    assert len(samples) > 15, "few-shot samples should differ across rows"
    assert a.request("x", "cap", attempt=1).seed != a.request("x", "cap").seed
    assert a.request("x", "cap", with_messages=False).messages == []


def test_schema_and_response_format() -> None:
    schema = edit_schema(50, 100)
    assert schema["required"] == ["edit_type", "instruction", "edited_caption"]
    assert schema["properties"]["edit_type"]["enum"] == list(NAMES)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["instruction"]["maxLength"] == 50
    rf = response_format(schema)
    assert rf is not None and rf["type"] == "json_schema" and rf["json_schema"]["schema"] is schema
    assert response_format(schema, "json_object") == {"type": "json_object"}
    assert response_format(schema, "none") is None


def test_a_requested_type_is_named_and_has_an_example() -> None:
    """Asked for a type, the user turn names it, every example turn names its own type, and the sample
    holds an example of the requested type (for each type, over many rows)."""
    b = PromptBuilder(seed=2, k=3)
    for name in NAMES:
        for i in range(10):
            req = b.request(f"r{i}", "a cat on a sofa", edit_type=name)
            assert req.edit_type == name
            assert req.messages[-1]["content"] == f"Caption: a cat on a sofa\nEdit type: {name}"
            answers = [json.loads(m["content"]) for m in req.messages[2:-1:2]]
            assert name in {a["edit_type"] for a in answers}
            for user, answer in zip(req.messages[1:-1:2], answers, strict=True):
                assert user["content"].endswith(f"\nEdit type: {answer['edit_type']}")
    assert b.request("r1", "cap").messages[-1]["content"] == "Caption: cap"  # none asked: the model's choice


def test_fewshot_file_needs_a_known_type(tmp_path) -> None:
    bad = tmp_path / "shots.jsonl"
    bad.write_text('{"caption": "a", "instruction": "b", "edited_caption": "c", "family": "x"}\n')
    with pytest.raises(ValueError, match=r"shots.jsonl:1: missing or empty edit_type"):
        load_fewshot(str(bad))
    bad.write_text('{"caption": "a", "instruction": "b", "edited_caption": "c", "edit_type": "sparkle"}\n')
    with pytest.raises(ValueError, match=r"shots.jsonl:1: edit_type 'sparkle' is not one of replace_object"):
        load_fewshot(str(bad))
