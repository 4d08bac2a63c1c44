"""Whether an answer's edit type contradicts its own captions: one conservative rule per type that has one.

The rules look only at the words the edit changes (content words added to or removed from the caption,
stop words ignored), so they hold for any caption and any phrasing: a removal that only adds words, an
addition that only removes words, a count edit where no number changes. Where a type's vocabulary is
open (styles, materials, poses, backgrounds) there is no rule: a false drop costs a good answer, so a
rule only drops what no legitimate edit of that type looks like. Rules in words: prompts/taxonomy.py;
the table and examples: docs/edit_types.md.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from editgen.prompts.taxonomy import BY_NAME

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*", re.UNICODE)  # p2p.edit_diff.words' tokens
_QUOTED = re.compile(r"[\"“”«»„]\s*\w|‘[^’]+’|(?<!\w)'[^'\s][^']*'(?!\w)")  # "x", “x”, ‘x’, 'x'; not "Men's"

STOPWORDS = frozenset(
    "a an the of in on at to for with by from into onto over under near next is are was were be been its it "
    "it's this that these those as and or but his her their our your my some any very so also".split()
)
#: Words of absence: a removal may add them ("an empty beach", "a man without a hat").
ABSENCE = frozenset(
    "empty without no bare nothing none vacant deserted clear clean plain alone only lone bald barren "
    "unoccupied uninhabited free removed missing".split()
)
COLOURS = frozenset(
    "red blue green yellow orange purple violet pink black white grey gray brown beige navy turquoise teal "
    "cyan magenta maroon burgundy crimson scarlet golden gold silver bronze copper ivory cream tan khaki "
    "olive lime mint emerald jade indigo lavender lilac mauve fuchsia coral salmon peach amber ochre rust "
    "charcoal ebony azure cobalt sapphire ruby aqua aquamarine plum rose rosy blond blonde blush sepia "
    "colour color colours colors coloured colored colourful colorful multicoloured multicolored rainbow "
    "pastel neon monochrome hue hues tint tinted shade dyed painted dark light pale bright".split()
)
_COLOUR_STEM = re.compile(r"^(?:" + "|".join(sorted(COLOURS, key=len, reverse=True)) + r")(?:ish|ed|s)?$")
SCENE = frozenset(
    "weather sunny sunshine sun rain rainy raining rainfall drizzle snow snowy snowing snowfall blizzard "
    "fog foggy mist misty haze hazy storm stormy thunderstorm thunder lightning cloud clouds cloudy overcast "
    "wind windy hail frost frosty frozen icy ice rainbow season winter summer spring autumn fall wintry "
    "autumnal summery springtime night nighttime midnight day daytime daylight dawn dusk sunrise sunset "
    "twilight morning evening noon afternoon golden hour moon moonlight moonlit stars starry dark".split()
)
_SCENE_PREFIX = ("snow", "rain", "storm", "fog", "mist", "cloud", "frost", "thunder", "winter", "summer",
                 "autumn", "night", "moon", "sun")
QUANTITY = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty hundred hundreds thousand thousands dozen dozens "
    "single lone solitary pair pairs couple few several many multiple numerous lots crowd crowds group groups "
    "bunch handful both more fewer less another extra additional double triple twin twins trio "
    "quadruple only each every".split()
)
TEXT_WORDS = frozenset(
    "text texts sign signs signboard word words letter letters lettering writing written says saying reads "
    "reading label labels logo logos banner banners poster title titled headline caption slogan inscription "
    "inscribed typography font graffiti billboard placard plaque menu name named spelled spelling "
    "message quote number numbers".split()
)
_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
              "goose": "geese", "foot": "feet", "tooth": "teeth", "leaf": "leaves", "wolf": "wolves",
              "knife": "knives", "calf": "calves", "sheep": "sheep", "fish": "fish", "deer": "deer"}


def content_words(text: str) -> Counter[str]:
    """The caption's words, lowercased, stop words left out (with their counts)."""
    return Counter(w.lower() for w in _WORD.findall(text) if w.lower() not in STOPWORDS)


def changes(caption: str, edited: str) -> tuple[Counter[str], Counter[str]]:
    """(content words the edit adds, content words it removes), as multisets."""
    src, tgt = content_words(caption), content_words(edited)
    return tgt - src, src - tgt


def _parts(words: Counter[str]) -> set[str]:
    """Each word and its hyphen parts ("sky-blue": sky, blue)."""
    return {p for w in words for p in (w, *w.split("-"))}


def is_plural_of(plural: str, single: str) -> bool:
    if _IRREGULAR.get(single) == plural:
        return True
    if plural in (single + "s", single + "es"):
        return True
    return single.endswith("y") and plural == single[:-1] + "ies"


def _number_changed(added: Counter[str], removed: Counter[str]) -> bool:
    changed = _parts(added) | _parts(removed)
    if any(w.isdigit() or w in QUANTITY for w in changed):
        return True
    return any(is_plural_of(a, r) or is_plural_of(r, a) for a in added for r in removed)


def _replace_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return bool(added)  # "tree" -> "palm tree" adds a word and removes none: still a replacement


def _add_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return bool(added) or not removed


def _remove_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return bool(removed) or not (set(added) - ABSENCE)


def _colour_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return any(_COLOUR_STEM.match(w) for w in _parts(added) | _parts(removed))


def _scene_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return any(w in SCENE or w.startswith(_SCENE_PREFIX) for w in _parts(added) | _parts(removed))


def _count_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return _number_changed(added, removed)


def _text_ok(caption: str, edited: str, added: Counter[str], removed: Counter[str]) -> bool:
    return bool(_QUOTED.search(edited)) or bool(_parts(content_words(edited)) & TEXT_WORDS)


Rule = Callable[[str, str, Counter[str], Counter[str]], bool]
#: The types that have a caption rule (the rest accept what the generic checks accept).
RULES: dict[str, Rule] = {
    "replace_object": _replace_ok,
    "add_object": _add_ok,
    "remove_object": _remove_ok,
    "colour": _colour_ok,
    "weather_season_time": _scene_ok,
    "count_quantity": _count_ok,
    "text_in_image": _text_ok,
}

def contradiction(edit_type: str, caption: str, edited: str) -> str | None:
    """The drop reason when `edited` (the answer's edited caption of `caption`) breaks `edit_type`'s rule,
    else None. `edit_type` must be a taxonomy name."""
    rule = RULES.get(edit_type)
    if rule is None:
        return None
    added, removed = changes(caption, edited)
    return None if rule(caption, edited, added, removed) else BY_NAME[edit_type].reason
