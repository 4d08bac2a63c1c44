"""The edit-type taxonomy (issue 22 item 1): names and definitions, and the caption rule of each type that
has one, on many answers that break it and many legitimate ones that must pass (docs/edit_types.md)."""

from __future__ import annotations

import pytest

from editgen.llm import validate as V
from editgen.llm.parse import ParsedEdit
from editgen.prompts.taxonomy import ALIASES, BY_NAME, EDIT_TYPES, NAMES, canonical, prompt_section
from editgen.prompts.type_rules import RULES, contradiction

REQUIRED = {"replace_object", "add_object", "remove_object", "colour", "material_texture", "style_medium",
            "background", "weather_season_time", "action_pose", "expression", "count_quantity", "text_in_image",
            "global_tone_lighting"}


def test_taxonomy_is_the_documented_fixed_list() -> None:
    assert REQUIRED <= set(NAMES) and len(set(NAMES)) == len(NAMES)
    assert all(t.definition for t in EDIT_TYPES)
    assert {t.name for t in EDIT_TYPES if t.rule} == set(RULES)  # a rule in words exactly where one is checked
    assert all(ALIASES[a] in BY_NAME for a in ALIASES)
    assert canonical("Color") == "colour" and canonical("weather season time") == "weather_season_time"
    assert canonical("remove-object") == "remove_object" and canonical("sparkle") is None
    section = prompt_section()
    assert all(f"- {t.name}: {t.definition}" in section for t in EDIT_TYPES)
    reasons = {t.reason for t in EDIT_TYPES}
    assert len(reasons) == len(EDIT_TYPES) and reasons <= set(V.REASONS)


#: (type, caption, edited caption): answers whose captions contradict their type.
CONTRADICTIONS = [
    ("remove_object", "a cat on a sofa", "a cat and a dog on a sofa"),
    ("remove_object", "Red Sneakers Isolated On White", "Red Sneakers With Laces Isolated On White"),
    ("remove_object", "woman in a park", "woman in a park with her dog"),
    ("add_object", "cat with a ball on a sofa", "cat on a sofa"),
    ("add_object", "Kids Birthday Cake With Candles And Sprinkles", "Kids Birthday Cake With Sprinkles"),
    ("replace_object", "a cat and a dog on a sofa", "a cat on a sofa"),
    ("replace_object", "Fresh Apple With Leaf On White Background", "Fresh Apple On White Background"),
    ("colour", "red car parked on the road", "red truck parked on the road"),
    ("colour", "a cat on a sofa", "a cat on a leather sofa"),
    ("weather_season_time", "cat sleeping on a sofa", "cat sleeping on a wooden sofa"),
    ("weather_season_time", "Old Bridge Over River In Autumn", "Old Stone Bridge Over River In Autumn"),
    ("count_quantity", "a cat on a sofa", "a black cat on a sofa"),
    ("count_quantity", "Two Cats On A Sofa", "Two Dogs On A Sofa"),
    ("count_quantity", "glass of orange juice", "glass of apple juice"),
    ("text_in_image", "a mug on a table", "a red mug on a table"),
    ("text_in_image", "man in a t-shirt, studio portrait", "man in a striped t-shirt, studio portrait"),
]

#: (type, caption, edited caption): legitimate answers every rule must let through.
CONSISTENT = [
    ("remove_object", "woman wearing a hat and scarf in winter", "woman wearing a scarf in winter"),
    ("remove_object", "A crowded beach at sunset", "An empty beach at sunset"),
    ("remove_object", "man with a beard", "man without a beard"),
    ("remove_object", "a blue sky", "a clear blue sky"),
    ("add_object", "Empty Wooden Bench In City Park", "Wooden Bench With A Cat In City Park"),
    ("add_object", "a dog on the grass", "a dog on the grass with a red ball"),
    ("replace_object", "Cute Tabby Cat On Grey Sofa", "Cute Tabby Puppy On Grey Sofa"),
    ("replace_object", "christmas tree ornaments", "christmas palm tree ornaments"),
    ("colour", "red car parked on the road", "blue car parked on the road"),
    ("colour", "a car parked on the road", "a bright yellow car parked on the road"),
    ("colour", "sky-blue dress", "rose-pink dress"),
    ("colour", "grey wool hat", "Greenish wool hat"),
    ("colour", "VW Beetle, orange paint", "VW Beetle, mint green paint"),
    ("weather_season_time", "street on a sunny day", "street on a rainy day"),
    ("weather_season_time", "a snowy street in the city", "a street in the city"),
    ("weather_season_time", "city skyline", "city skyline at night"),
    ("weather_season_time", "field under blue sky", "field under a thunderstorm-darkened sky"),
    ("count_quantity", "Two Cats On A Sofa", "Three Cats On A Sofa"),
    ("count_quantity", "a cat on a sofa", "cats on a sofa"),
    ("count_quantity", "1 apple on a table", "3 apples on a table"),
    ("count_quantity", "a man on a bench", "men on a bench"),
    ("count_quantity", "Flock Of Birds Over Lake", "One Bird Over Lake"),
    ("count_quantity", "puppy in a basket", "puppies in a basket"),
    ("text_in_image", "Blank Wooden Sign In The Forest", 'Wooden Sign Saying "Welcome" In The Forest'),
    ("text_in_image", "a white t-shirt", "a white t-shirt with the word love"),
    ("text_in_image", "a mug on a table", "a mug reading HELLO on a table"),
    ("text_in_image", "a shop front", "a shop front, ‘OPEN’ above the door"),
    # types without a rule take any edit the generic checks take
    ("style_medium", "a photo of a cat", "a painting of a cat"),
    ("material_texture", "wooden table", "marble table"),
    ("background", "Red Sneakers Isolated On White", "Red Sneakers On A City Sidewalk"),
    ("action_pose", "dog sitting in the snow", "dog jumping in the snow"),
    ("expression", "serious businessman", "smiling businessman"),
    ("global_tone_lighting", "portrait of a fisherman", "black and white portrait of a fisherman"),
    ("size_shape", "small white dog", "huge white dog"),
]


@pytest.mark.parametrize(("edit_type", "caption", "edited"), CONTRADICTIONS)
def test_contradicting_captions_are_named(edit_type: str, caption: str, edited: str) -> None:
    assert contradiction(edit_type, caption, edited) == f"llm_type_contradicts_{edit_type}"
    v = V.Validator([], max_instruction_words=16, min_similarity=0.3)
    assert v.check(caption, ParsedEdit("edit it", edited, edit_type)) == BY_NAME[edit_type].reason


@pytest.mark.parametrize(("edit_type", "caption", "edited"), CONSISTENT)
def test_consistent_captions_pass(edit_type: str, caption: str, edited: str) -> None:
    assert contradiction(edit_type, caption, edited) is None
    v = V.Validator([], max_instruction_words=16, min_similarity=0.3)
    assert v.check(caption, ParsedEdit("edit it", edited, edit_type)) is None


def test_every_ruled_type_has_cases_both_ways() -> None:
    assert set(RULES) <= {t for t, _, _ in CONTRADICTIONS} and set(RULES) <= {t for t, _, _ in CONSISTENT}
    assert set(NAMES) <= {t for t, _, _ in CONSISTENT}


@pytest.mark.parametrize(
    ("edit_type", "edited", "reason"),
    [
        (None, "Cute Tabby Puppy On Grey Sofa", V.TYPE_MISSING),
        ("sparkle", "Cute Tabby Puppy On Grey Sofa", V.TYPE_UNKNOWN),
        ("", "Cute Tabby Puppy On Grey Sofa", V.TYPE_UNKNOWN),
        ("Replace Object", "Cute Tabby Puppy On Grey Sofa", None),  # a spelling of a name
        ("object swap", "Cute Tabby Puppy On Grey Sofa", None),  # an alias
        (None, "", V.EMPTY_FIELD),  # nothing usable comes first
        ("remove_object", "cute tabby cat, on grey sofa!", V.NO_CHANGE),  # then the generic checks
        ("remove_object", "A majestic eagle flying over snowy mountains at dawn", V.REWRITES_TOO_MUCH),
    ],
)
def test_type_reasons_and_their_order(edit_type: str | None, edited: str, reason: str | None) -> None:
    v = V.Validator([], max_instruction_words=16, min_similarity=0.3)
    assert v.check("Cute Tabby Cat On Grey Sofa", ParsedEdit("edit it", edited, edit_type)) == reason
