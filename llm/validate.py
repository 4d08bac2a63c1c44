"""Per-row validation of a parsed answer; every failure is a named drop reason.

The checks are ordered from "the model said nothing usable" to "the edit is usable but bad", so a row
gets the most basic reason that applies. The edit type is checked twice: it must name a taxonomy type
(prompts/taxonomy.py: `llm_type_missing`, `llm_type_unknown`), and, last, the captions must not contradict
it (prompts/type_rules.py: `llm_type_contradicts_<type>`, e.g. a removal whose edited caption only adds).
With `instruct.inverse`, a forward edit that passes is then judged on its inverse instruction: absent or
empty (`llm_inverse_missing`), the forward instruction again (`llm_inverse_same`: it would not undo
anything), or failing the forward's own blocklist and length rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from editgen.filters.captions.blocklist import Blocklist, load_blocklist
from editgen.llm.base import REQUEST_FAILED
from editgen.llm.parse import ParsedEdit
from editgen.p2p.edit_diff import normalized, similarity, words
from editgen.prompts.taxonomy import EDIT_TYPES, canonical
from editgen.prompts.type_rules import contradiction

if TYPE_CHECKING:
    from editgen.pipeline.settings.instruct import InstructConfig

MISSING_CAPTION = "llm_missing_caption"
UNPARSEABLE = "llm_unparseable"
EMPTY_FIELD = "llm_empty_field"
BLOCKLISTED = "llm_blocklisted"
INSTRUCTION_TOO_LONG = "llm_instruction_too_long"
NO_CHANGE = "llm_no_change"
REWRITES_TOO_MUCH = "llm_rewrites_too_much"
TYPE_MISSING = "llm_type_missing"
TYPE_UNKNOWN = "llm_type_unknown"
INVERSE_MISSING = "llm_inverse_missing"
INVERSE_SAME = "llm_inverse_same"
#: A session's turn whose edited caption is one the session already had (an undo: llm/turns.py).
SESSION_REPEATS = "session_repeats_caption"

#: Every drop reason the instruct stage can emit.
REASONS = (
    MISSING_CAPTION,
    REQUEST_FAILED,
    UNPARSEABLE,
    EMPTY_FIELD,
    BLOCKLISTED,
    INSTRUCTION_TOO_LONG,
    NO_CHANGE,
    REWRITES_TOO_MUCH,
    TYPE_MISSING,
    TYPE_UNKNOWN,
    INVERSE_MISSING,
    INVERSE_SAME,
    SESSION_REPEATS,
    *(t.reason for t in EDIT_TYPES),
)


class Validator:
    """Judges one (caption, parsed answer) pair."""

    def __init__(
        self,
        blocked_terms: Iterable[str] = (),
        max_instruction_words: int = 16,
        min_similarity: float = 0.3,
        inverse: bool = False,
    ) -> None:
        self.blocklist = Blocklist(blocked_terms)
        self.max_instruction_words = max_instruction_words
        self.min_similarity = min_similarity
        self.inverse = inverse

    @classmethod
    def from_config(cls, cfg: InstructConfig, blocked_terms: Iterable[str] | None = None) -> Validator:
        """From the config; `blocked_terms` overrides the blocklist file (tests pass a list)."""
        terms = (
            list(blocked_terms)
            if blocked_terms is not None
            else load_blocklist(cfg.blocklist, cfg.extra_blocked_terms)
        )
        return cls(terms, cfg.max_instruction_words, cfg.min_similarity, cfg.inverse)

    def check(self, caption: str, edit: ParsedEdit) -> str | None:
        """None when the edit is kept, else the drop reason. `edit.edit_type` must be a taxonomy name or an
        alias of one (`canonical`); the stage records the canonical name."""
        if not edit.instruction or not edit.edited_caption or not words(edit.edited_caption):
            return EMPTY_FIELD
        if edit.edit_type is None:
            return TYPE_MISSING
        edit_type = canonical(edit.edit_type)
        if edit_type is None:
            return TYPE_UNKNOWN
        if self.blocklist.find(edit.instruction) or self.blocklist.find(edit.edited_caption):
            return BLOCKLISTED
        if len(edit.instruction.split()) > self.max_instruction_words:
            return INSTRUCTION_TOO_LONG
        if normalized(edit.edited_caption) == normalized(caption):
            return NO_CHANGE
        if similarity(caption, edit.edited_caption) < self.min_similarity:
            return REWRITES_TOO_MUCH
        reason = contradiction(edit_type, caption, edit.edited_caption)
        return reason if reason is not None or not self.inverse else self.check_inverse(edit)

    def check_inverse(self, edit: ParsedEdit) -> str | None:
        """The inverse instruction's drop reason (None: kept): present, not the forward one again, and held to
        the forward instruction's blocklist and length rules (it is published as an instruction too)."""
        inverse = edit.inverse_instruction
        if not inverse or not words(inverse):
            return INVERSE_MISSING
        if normalized(inverse) == normalized(edit.instruction):
            return INVERSE_SAME
        if self.blocklist.find(inverse):
            return BLOCKLISTED
        if len(inverse.split()) > self.max_instruction_words:
            return INSTRUCTION_TOO_LONG
        return None
