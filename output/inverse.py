"""Inverse pairs (`instruct.inverse`, docs/inverse_edits.md): each kept pair published a second time,
reversed, at no render cost.

A kept row whose dataset was made with inverse instructions (it has the `inverse_instruction` column) gives
a second sample: input image = the pair's edited image, edited image = its input image, instruction = its
inverse instruction (and `inverse_instruction` = the forward one, so each sample says what undoes it), the
captions swapped, the edit type mapped to its inverse (prompts/taxonomy.py: add_object <-> remove_object),
the same mask (the same region changes both ways), `inverse: true` and `inverse_of` = the forward sample's
key; its own key is `<forward key>-inv`. Everything else (id, candidate, seed, the engine's record and the
render's word diff, the filter's scores) is the forward pair's: they describe how the pair was made and
judged. Forward samples of such a dataset carry `inverse: false`; a dataset made without it has neither
the field nor inverse samples (its shards are byte for byte what they were), and readers take a missing
field as false.
"""

from __future__ import annotations

from typing import Any

from editgen.prompts.taxonomy import inverse_type

#: The instruct column that makes a kept row publish its reverse.
INVERSE_COLUMN = "inverse_instruction"
#: The shard record's metric (and manifest field) counting inverse samples, which status reads.
INVERSE_METRIC = "inverse_samples"
#: What an inverse sample's key adds to its forward sample's key.
INVERSE_SUFFIX = "-inv"


def has_inverse(row: dict[str, Any]) -> bool:
    """Whether this row's dataset publishes inverse pairs (its rows carry the inverse instruction column)."""
    return INVERSE_COLUMN in row


def inverse_key(forward_key: str) -> str:
    return forward_key + INVERSE_SUFFIX


def is_inverse_key(key: str) -> bool:
    """Forward keys end in `-cNNNN` (output.shard_writer.sample_key), so the suffix tells them apart."""
    return key.endswith(INVERSE_SUFFIX)


def forward_row(row: dict[str, Any]) -> dict[str, Any]:
    """The forward sample's row of an inverse dataset: flagged `inverse: false`."""
    return {**row, "inverse": False}


def inverse_row(row: dict[str, Any], forward_key: str) -> dict[str, Any]:
    """The reversed sample of a kept forward row (module doc). Raises ValueError when the row has no inverse
    instruction (validation keeps none such: a row of another origin is dropped, not published half-made)."""
    instruction = row.get(INVERSE_COLUMN)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("no inverse_instruction")
    out = {**row, "inverse": True, "inverse_of": forward_key}
    out["input_image"], out["edited_image"] = row.get("edited_image"), row.get("input_image")
    out["instruction"], out[INVERSE_COLUMN] = instruction, row.get("instruction")
    out["caption"], out["edited_caption"] = row.get("edited_caption"), row.get("caption")
    for col in ("edit_type", "type_requested"):
        if col in row:
            out[col] = inverse_type(row[col])
    return out
