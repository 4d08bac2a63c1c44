"""The JSON schema every backend's answer must match, and its OpenAI `response_format` wrapper.

Bounded string lengths matter: with constrained decoding they force a (weak or random) model to close
the object, so a request ends well before `max_tokens` instead of being cut mid-string. `edit_type` is an
enum of the taxonomy's names (prompts/taxonomy.py), first, so the model commits to a type before it
writes the edit; constrained decoding (vLLM, an OpenAI-compatible server's json_schema) can then only
answer a known type. With `instruct.inverse`, `inverse_instruction` (the instruction that undoes the edit)
is a required property too, last, so the model writes it once it has written the edit; without it the
schema is exactly as before (no property, not required), so today's requests are unchanged.
"""

from __future__ import annotations

from typing import Any

from editgen.prompts.taxonomy import NAMES

FIELDS = ("edit_type", "instruction", "edited_caption")
#: The field `instruct.inverse` adds: the instruction that undoes the edit.
INVERSE_FIELD = "inverse_instruction"


def edit_schema(
    max_instruction_chars: int = 160, max_caption_chars: int = 400, inverse: bool = False
) -> dict[str, Any]:
    """JSON schema of one answer: {"edit_type": one of the taxonomy, "instruction": str,
    "edited_caption": str} (+ "inverse_instruction": str, required, with `inverse`), nothing else."""
    instruction = {"type": "string", "minLength": 1, "maxLength": max_instruction_chars}
    properties: dict[str, Any] = {
        "edit_type": {"type": "string", "enum": list(NAMES)},
        "instruction": instruction,
        "edited_caption": {"type": "string", "minLength": 1, "maxLength": max_caption_chars},
    }
    if inverse:
        properties[INVERSE_FIELD] = dict(instruction)
    return {
        "type": "object",
        "properties": properties,
        "required": [*FIELDS, *((INVERSE_FIELD,) if inverse else ())],
        "additionalProperties": False,
    }


def response_format(schema: dict[str, Any], kind: str = "json_schema") -> dict[str, Any] | None:
    """OpenAI chat-completions `response_format` for `schema` (None when kind is "none")."""
    if kind == "none":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "caption_edit", "schema": schema, "strict": True}}
