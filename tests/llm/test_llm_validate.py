"""Every validation reason, and the blocklist loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from editgen.filters.captions.blocklist import Blocklist, load_blocklist, read_terms
from editgen.llm import validate as V
from editgen.llm.parse import ParsedEdit
from tests.llm_fixtures import instruct_config

CAPTION = "Cute Tabby Cat Sleeping On Grey Sofa Stock Image"


@pytest.fixture()
def validator() -> V.Validator:
    return V.Validator(["nude", "gore"], max_instruction_words=8, min_similarity=0.3)


@pytest.mark.parametrize(
    ("instruction", "edited", "reason"),
    [
        ("replace the cat with a puppy", "Cute Tabby Puppy Sleeping On Grey Sofa Stock Image", None),
        ("", "Cute Tabby Puppy Sleeping On Grey Sofa Stock Image", V.EMPTY_FIELD),
        ("replace the cat with a puppy", "", V.EMPTY_FIELD),
        ("replace the cat with a puppy", " ... !! ", V.EMPTY_FIELD),
        ("make it nude", "Cute Tabby Cat Sleeping On Grey Sofa Stock Image nude", V.BLOCKLISTED),
        ("add gore", "Cute Tabby Cat Sleeping On Grey Sofa Stock Image, GORE", V.BLOCKLISTED),
        ("please could you kindly replace the cat with a puppy", "Cute Tabby Puppy Sleeping On Grey Sofa",
         V.INSTRUCTION_TOO_LONG),
        ("do nothing", "cute tabby cat, sleeping on grey sofa - stock image!", V.NO_CHANGE),
        ("rewrite", "A majestic eagle flying over snowy mountains at dawn", V.REWRITES_TOO_MUCH),
    ],
)
def test_reasons(validator: V.Validator, instruction: str, edited: str, reason: str | None) -> None:
    assert validator.check(CAPTION, ParsedEdit(instruction, edited, "replace_object")) == reason


def test_blocklist_matches_whole_words_and_phrases() -> None:
    bl = Blocklist(["ass", "adult video"])
    assert bl.find("a classic glass vase") is None
    assert bl.find("kick ASS") == "ass"
    assert bl.find("an Adult   Video still") == "adult   video"
    assert Blocklist([]).find("anything") is None


def test_load_blocklist(tmp_path: Path) -> None:
    f = tmp_path / "bl.txt"
    f.write_text("# comment\nFoo\n\nbar baz  # trailing\n")
    assert read_terms(f.read_text()) == ["foo", "bar baz"]
    assert load_blocklist(str(f), ["Extra"]) == ["bar baz", "extra", "foo"]
    with pytest.raises(FileNotFoundError):
        load_blocklist(str(tmp_path / "missing.txt"))
    assert "porn*" in load_blocklist(None)  # the bundled list


def test_validator_from_config_uses_thresholds_and_explicit_terms() -> None:
    cfg = instruct_config(max_instruction_words=3, min_similarity=0.9, extra_blocked_terms=["zebra"])
    v = V.Validator.from_config(cfg.instruct, blocked_terms=["zebra"])
    assert v.max_instruction_words == 3 and v.min_similarity == 0.9
    assert v.check("a cat", ParsedEdit("make zebra", "a zebra", "replace_object")) == V.BLOCKLISTED
    assert set(V.REASONS) >= {"llm_unparseable", "llm_request_failed", "llm_rewrites_too_much"}


def test_blocklist_wildcards_match_like_ingest() -> None:
    """Output check and ingest share one matcher: `porn*` in the NSFW list blocks 'pornstar' here too."""
    bl = Blocklist(load_blocklist())
    assert bl.find("a Pornstar on a bed") == "pornstar"
    assert bl.find("nudes at the beach") == "nudes"
    assert bl.find("a classic brass lamp") is None
