"""The edit-type taxonomy: the names an answer's `edit_type` may take, what each means, and the rule its
captions must satisfy (docs/edit_types.md).

The list is fixed and ordered: the JSON schema's enum, the few-shot set, `instruct.type_weights`, type
assignment (a row's draw walks the weights in this order) and status all use it, so a reordering or a
rename changes what a config means and needs a stage version bump. Each type's caption rule lives in
prompts/type_rules.py and is checked by llm/validate.py; a type without a rule (an open vocabulary:
styles, materials, poses) accepts any edit the generic checks accept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class EditType:
    """One edit type: its name (the enum value), a one-line definition (shown to the LLM) and the rule its
    (caption, edited caption) pair must satisfy, in words ("" when it has none)."""

    name: str
    definition: str
    rule: str = ""

    @property
    def reason(self) -> str:
        """The drop reason of an answer of this type whose captions break its rule."""
        return f"llm_type_contradicts_{self.name}"


EDIT_TYPES: tuple[EditType, ...] = (
    EditType("replace_object", "swap one object, animal or person for another",
             "the edited caption adds a content word (one that only removes words is a removal)"),
    EditType("add_object", "add an object, animal, person or accessory; everything else stays",
             "the edited caption does not only remove content words"),
    EditType("remove_object", "remove an object, animal or person; everything else stays",
             "the edited caption does not only add content words (words of absence such as 'empty' or "
             "'without' excepted)"),
    EditType("colour", "change the colour of an object or region", "a colour word is added or removed"),
    EditType("material_texture", "change what an object is made of or its surface texture"),
    EditType("size_shape", "make an object bigger, smaller, longer, rounder: its size or shape"),
    EditType("style_medium", "render the whole image in another art style or medium (painting, sketch, anime)"),
    EditType("background", "change the background or the setting around the subject"),
    EditType("weather_season_time", "change the weather, the season or the time of day",
             "a weather, season or time-of-day word is added or removed"),
    EditType("action_pose", "change what a person or animal is doing, or its pose"),
    EditType("expression", "change a face's expression or emotion"),
    EditType("count_quantity", "change how many of something there are",
             "a number or quantity word changes, or a noun changes between singular and plural"),
    EditType("text_in_image", "add or change visible text: a sign, a label, a slogan, a title",
             "the edited caption names the text (in quotes) or a text-bearing thing (sign, label, words...)"),
    EditType("global_tone_lighting", "change the whole image's lighting, tone or colour grading "
             "(brighter, warmer, black and white, dramatic light)"),
)
NAMES: tuple[str, ...] = tuple(t.name for t in EDIT_TYPES)
BY_NAME: dict[str, EditType] = {t.name: t for t in EDIT_TYPES}

#: Spellings an unconstrained answer may use for a type (after lowercasing, spaces/hyphens/slashes to "_").
ALIASES: dict[str, str] = {
    "replace": "replace_object", "object_swap": "replace_object", "swap": "replace_object",
    "add": "add_object", "remove": "remove_object", "color": "colour", "recolor": "colour",
    "recolour": "colour", "material": "material_texture", "texture": "material_texture",
    "size": "size_shape", "shape": "size_shape", "style": "style_medium", "medium": "style_medium",
    "background_setting": "background", "setting": "background", "weather": "weather_season_time",
    "season": "weather_season_time", "time_of_day": "weather_season_time", "pose": "action_pose",
    "action": "action_pose", "emotion": "expression", "count": "count_quantity", "quantity": "count_quantity",
    "text": "text_in_image", "lighting": "global_tone_lighting", "tone": "global_tone_lighting",
}
_SEP = re.compile(r"[\s\-/]+")


def canonical(raw: str) -> str | None:
    """The taxonomy name `raw` spells (a name or an alias, any case), or None when it names no type."""
    key = _SEP.sub("_", raw.strip().lower()).strip("_")
    if key in BY_NAME:
        return key
    return ALIASES.get(key)


#: The type of an edit's inverse where it differs (an addition undone is a removal); every other type undoes
#: itself (a colour change back is a colour change). Used by the shard stage's reversed pairs (instruct.inverse).
INVERSE_TYPES = {"add_object": "remove_object", "remove_object": "add_object"}


def inverse_type(name: str | None) -> str | None:
    """The type of the edit that undoes an edit of type `name` (None stays None)."""
    return None if name is None else INVERSE_TYPES.get(name, name)


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """`weights` if they can drive a draw: known type names, finite and non-negative, not all zero.
    Raises ValueError naming the first problem (the config check's message)."""
    unknown = [k for k in weights if k not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown edit type {unknown[0]!r} (known: {', '.join(NAMES)})")
    for name, w in weights.items():
        if not isinstance(w, int | float) or isinstance(w, bool) or not (0 <= w < float("inf")):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
    if not any(weights.values()):
        raise ValueError("at least one weight must be above 0")
    return weights


def assign_type(row_id: str, seed: int, weights: dict[str, float]) -> str:
    """The type row `row_id` is asked for: a draw from `weights` (checked by `check_weights`) by a hash of
    (seed, row id), walking the types in taxonomy order. It depends on nothing else (not the partition,
    the batch, the attempt or the dict's order), so every rerun and machine asks the same row for the
    same type, and over many rows the shares approach the weights."""
    digest = hashlib.sha256(f"edit_type\x1f{seed}\x1f{row_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    total = float(sum(weights.values()))
    acc, last = 0.0, None
    for name in NAMES:
        w = float(weights.get(name, 0.0))
        if w <= 0:
            continue
        acc += w / total
        last = name
        if u < acc:
            return name
    assert last is not None, "weights must not be all zero (check_weights)"
    return last  # u within rounding of 1.0


def prompt_section() -> str:
    """The taxonomy as the system prompt's list of allowed `edit_type` values, and what to do with a
    requested type (appended to every system prompt, the bundled one or `instruct.system_prompt_file`)."""
    lines = ['"edit_type" names the kind of edit you made, one of:']
    lines += [f"- {t.name}: {t.definition}" for t in EDIT_TYPES]
    lines.append(
        'When the request names an edit type ("Edit type: ..."), make an edit of that type. Only when the '
        "caption cannot support it (nothing to remove from \"a blue sky\"), make another kind of edit and "
        'give its type in "edit_type".'
    )
    return "\n".join(lines)
