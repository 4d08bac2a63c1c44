"""Tolerant parsing of an LLM answer into (instruction, edited_caption, edit_type[, inverse_instruction]).

Even with constrained decoding, answers arrive with raw control characters inside strings, code
fences, a sentence before the object, trailing commas, Python-style quotes or invalid escapes. Each is
repaired here; only an answer with no recoverable object is "unparseable" (and retried with a new seed).
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from dataclasses import dataclass

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_BAD_ESCAPE = re.compile(r'\\(?!["\\/bfnrtu])')
_WS = re.compile(r"\s+")
_DECODER = json.JSONDecoder(strict=False)  # strict=False: raw control characters allowed in strings

#: Key spellings accepted for each field (after lowercasing and mapping spaces/hyphens to "_").
ALIASES = {
    "instruction": ("instruction", "edit_instruction", "edit", "instructions"),
    "edited_caption": ("edited_caption", "output_caption", "new_caption", "edited", "output", "caption_edited"),
    "edit_type": ("edit_type", "type", "edit_category", "category"),
    "inverse_instruction": ("inverse_instruction", "inverse", "undo_instruction", "reverse_instruction", "undo"),
}


@dataclass(frozen=True)
class ParsedEdit:
    """One answer's fields, cleaned. `edit_type` is None when the answer has no type key, else its text as
    written (validation maps it to a taxonomy name or drops the row as `llm_type_unknown`).
    `inverse_instruction` likewise: None when absent, "" when not text (`instruct.inverse` validates it)."""

    instruction: str
    edited_caption: str
    edit_type: str | None = None
    inverse_instruction: str | None = None


def clean_text(value: object) -> str:
    """A field value as one clean line: control/format characters removed, whitespace collapsed,
    wrapping quotes stripped."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    text = _WS.sub(" ", text).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _candidates(text: str) -> list[str]:
    """Texts to try, most specific first: fenced blocks, then the whole answer."""
    out = [m.group(1) for m in _FENCE.finditer(text)]
    out.append(text)
    return out


def _objects(text: str) -> list[object]:
    """Every JSON value decodable at a '{' in `text` (first success per start position)."""
    found: list[object] = []
    for variant in (text, _TRAILING_COMMA.sub(r"\1", text), _BAD_ESCAPE.sub(r"\\\\", text.replace("\\'", "'"))):
        for m in re.finditer(r"\{", variant):
            try:
                obj, _end = _DECODER.raw_decode(variant, m.start())
            except ValueError:
                continue
            found.append(obj)
        if found:
            return found
    # Python-literal style ({'instruction': '...'}): literal_eval evaluates literals only (safe).
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            found.append(ast.literal_eval(_TRAILING_COMMA.sub(r"\1", text[start : end + 1])))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    return found


def _field(obj: dict[str, object], name: str) -> object | None:
    norm = {re.sub(r"[\s\-]+", "_", str(k).strip().lower()): v for k, v in obj.items()}
    for alias in ALIASES[name]:
        if alias in norm:
            return norm[alias]
    return None


def parse_edit(text: str | None) -> ParsedEdit | None:
    """The first object in `text` carrying either field, cleaned; None when there is none.

    A missing or non-text field comes back as "" so validation names it (`llm_empty_field`); a missing
    type as None (`llm_type_missing`), a non-text one as "" (`llm_type_unknown`).
    """
    if not text or not text.strip():
        return None
    for candidate in _candidates(text):
        for obj in _objects(candidate):
            if isinstance(obj, dict):
                ins, cap = _field(obj, "instruction"), _field(obj, "edited_caption")
                if ins is None and cap is None:
                    continue
                kind, inv = _field(obj, "edit_type"), _field(obj, "inverse_instruction")
                return ParsedEdit(
                    instruction=clean_text(ins) if isinstance(ins, str | int | float) else "",
                    edited_caption=clean_text(cap) if isinstance(cap, str | int | float) else "",
                    edit_type=None if kind is None else clean_text(kind) if isinstance(kind, str) else "",
                    inverse_instruction=None if inv is None else clean_text(inv) if isinstance(inv, str) else "",
                )
    return None
