"""Rule-based backend: sensible edits from the caption alone, no model (offline demos, smoke runs).

Every rule that applies to a caption proposes one candidate edit (a colour, object, material, size,
number, season, time, weather, pose, expression, medium or setting swap; removing a "with ..." phrase;
adding an object, a scene, text, a tone or a style); a per-row seeded RNG picks one, weighted towards
word swaps (the edits Prompt-to-Prompt renders best). Only matched words change; everything else in the
caption, including brand names, titles and SEO junk, is copied verbatim, and known brand/title phrases
are never edited. Each rule's family says which edit type it makes (`template_rules.FAMILY_TYPES`); a
request asking for a type picks among that type's candidates, and where the caption offers none (nothing
to remove from "a blue sky") among all of them, answering the type it made. Each rule also writes the
instruction that undoes its edit, from what it changed (a colour swap back, an addition removed, a
removal added back); the answer carries it when the schema asks for it (`instruct.inverse`), without
drawing anything more from the RNG, so the forward edits are the same with or without it.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from editgen.llm import template_rules as R
from editgen.llm.base import GenerationSettings, LLMBackend, LLMRequest, LLMResult
from editgen.prompts.schema import INVERSE_FIELD

VERSION = "template-v2"  # v2: answers carry edit_type; size, count, text and tone rules
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_SEPARATORS = re.compile(r"\s+(?:-{1,2}|\||—|–|::|/|•)\s+|\s*\|\s*")
_WITH = re.compile(r"\s+(?:with|w/)\s+", re.I)
_PROTECTED = re.compile(
    r"(?<!\w)(?:" + "|".join(re.escape(p) for p in sorted(R.PROTECTED_PHRASES, key=len, reverse=True)) + r")(?!\w)"
)
_ADDED = re.compile(r"^(?:with|wearing|holding|next to|surrounded by|on|in|at)\s+(?:(?:a|an|the)\s+)?", re.I)
_STYLE_WORDS = re.compile(r"^(?:in the style of|in|made of)\s+|\s+style$", re.I)
_SETTING = re.compile(rf"\b(?:in|on|at)\s+(?:the\s+|a\s+)?({'|'.join(R.SETTINGS)})\b", re.I)


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int

    @property
    def low(self) -> str:
        return self.text.lower()


@dataclass(frozen=True)
class Candidate:
    family: str
    instruction: str
    edited: str
    weight: float
    inverse: str = ""

    @property
    def edit_type(self) -> str:
        """The taxonomy type this edit is (prompts/taxonomy.py)."""
        return R.FAMILY_TYPES[self.family]


# ---- small text helpers -------------------------------------------------------------------------------
def plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last in R.PLURALS:
        p = R.PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        p = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


def article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def match_case(src: str, word: str) -> str:
    """`word` in the casing of `src` (UPPER, Title or lower)."""
    if len(src) > 1 and src.isupper():
        return word.upper()
    if src[:1].isupper():
        return " ".join(w[:1].upper() + w[1:] for w in word.split(" "))
    return word


def is_title_case(caption: str) -> bool:
    long_words = [w for w in _TOKEN.findall(caption) if len(w) > 3]
    return bool(long_words) and sum(w[0].isupper() for w in long_words) / len(long_words) >= 0.6


def styled(phrase: str, title: bool) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in phrase.split(" ")) if title else phrase


def tidy(text: str) -> str:
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r",\s*,", ",", text)
    return re.sub(r"\s{2,}", " ", text).strip(" ,;")


class Caption:
    """A caption with its tokens, protected spans and insertion point."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = [Token(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(text)]
        self.title = is_title_case(text)
        self.protected = [(m.start(), m.end()) for m in _PROTECTED.finditer(text.lower())]
        self.words = {t.low for t in self.tokens}

    def editable(self, i: int) -> bool:
        """Not inside a brand/title phrase; not a capitalised name in the middle of a sentence."""
        tok = self.tokens[i]
        if any(s <= tok.start < e for s, e in self.protected):
            return False
        return not (not self.title and i > 0 and tok.text[:1].isupper())

    def prev(self, i: int) -> str:
        return self.tokens[i - 1].low if i > 0 else ""

    def next(self, i: int) -> str:
        return self.tokens[i + 1].low if i + 1 < len(self.tokens) else ""

    def noun_after(self, i: int, exclude: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The word right after token i (separated by spaces only) if it can name the edited thing."""
        if i + 1 >= len(self.tokens) or self.text[self.tokens[i].end : self.tokens[i + 1].start].strip():
            return None
        nxt = self.next(i)
        if nxt not in R.STOPWORDS and nxt not in exclude and nxt not in R.COLOURS and len(nxt) > 2:
            return nxt
        return None

    def ends_phrase(self, i: int) -> bool:
        """Token i ends a noun phrase: followed by a space and a stop word / lowercase word, or the end."""
        tok = self.tokens[i]
        after = self.text[tok.end : tok.end + 1]
        if after and not after.isspace() and after not in ",.;:!?)":
            return False
        if i + 1 == len(self.tokens):
            return True
        nxt = self.tokens[i + 1].text
        return nxt.lower() in R.STOPWORDS or nxt[:1].islower()

    def replace_tokens(self, idxs: list[int], word: str) -> str:
        out, last = [], 0
        for i in sorted(idxs):
            tok = self.tokens[i]
            out.append(self.text[last : tok.start])
            out.append(match_case(tok.text, word))
            last = tok.end
        out.append(self.text[last:])
        return "".join(out)

    def insertion_point(self) -> int:
        """End of the descriptive head: before the first separator or a trailing stock-photo tag."""
        end = len(self.text)
        m = _SEPARATORS.search(self.text)
        if m and m.start() > 0:
            end = m.start()
        head = self.text[:end].rstrip(" .,;:")
        low = head.lower()
        for suffix in sorted(R.STOCK_SUFFIXES, key=len, reverse=True):
            if low.endswith(" " + suffix) and len(low) > len(suffix) + 8:
                return len(head) - len(suffix) - 1
        return len(head)

    def insert(self, phrase: str) -> str:
        """The caption with `phrase` after its head; comma-joined unless it starts with a preposition."""
        at = self.insertion_point()
        m = re.match(r"^(.*?)([\s.,;:!?]*)$", self.text[:at], re.S)
        head, punct, rest = (m.group(1), m.group(2).strip(), self.text[at:]) if m else (self.text[:at], "", "")
        phrase = styled(phrase, self.title)
        joiner = " " if re.match(r"(?i)(in|on|at|with|during|wearing|holding|next|surrounded|made)\b", phrase) else ", "
        rest = rest if not rest or rest[0] in " ,.;:!?)" else " " + rest
        return tidy(head + joiner + phrase + punct + rest)


def remove_phrase(phrase: str) -> str:
    """The inverse of inserting `phrase` ("wearing a straw hat", "with a rainbow in the sky"): remove what
    it names ("remove the straw hat", "remove the rainbow in the sky")."""
    thing = _ADDED.sub("", phrase)
    return f"remove the {thing}"


def undo_style(phrase: str) -> str:
    """The inverse of a style phrase ("oil painting", "in the style of Van Gogh"): take that style away."""
    return f"remove the {_STYLE_WORDS.sub('', phrase).strip()} style"


# ---- candidate generators ----------------------------------------------------------------------------
def _occurrences(cap: Caption, forms: set[str]) -> list[int]:
    return [i for i, t in enumerate(cap.tokens) if t.low in forms and cap.editable(i)]


def _pick_word(cap: Caption, table: dict, rng: random.Random, ok: Callable[[Caption, int], bool] | None = None):
    hits = [i for i, t in enumerate(cap.tokens) if t.low in table and cap.editable(i) and (ok is None or ok(cap, i))]
    return cap.tokens[rng.choice(hits)].low if hits else None


def _colour(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.COLOURS, rng, lambda c, i: c.next(i) not in R.MATERIALS)
    if src is None:
        return None
    tgt = rng.choice(R.COLOURS[src])
    idxs = _occurrences(cap, {src})
    noun = cap.noun_after(idxs[0], set(R.COLOURS))
    if noun:
        forms = [f"make the {noun} {tgt}", f"change the color of the {noun} to {tgt}", f"turn the {noun} {tgt}"]
        inverse = f"make the {noun} {src}"
    else:
        forms = [f"change the {src} to {tgt}", f"make the {src} parts {tgt}"]
        inverse = f"change the {tgt} to {src}"
    return Candidate("attribute_colour", rng.choice(forms), cap.replace_tokens(idxs, tgt), 3.0, inverse)


def _material(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.MATERIALS, rng, lambda c, i: bool(c.noun_after(i, set(R.MATERIALS))))
    if src is None:
        return None
    tgt = rng.choice(R.MATERIALS[src])
    idxs = _occurrences(cap, {src})
    noun = cap.noun_after(idxs[0], set(R.MATERIALS)) or "object"
    stuff = {"wooden": "wood", "golden": "gold"}.get(tgt, tgt)
    forms = [f"make the {noun} {tgt}", f"make the {noun} out of {stuff}", f"turn the {noun} into {stuff}"]
    inverse = f"make the {noun} {src}" if noun != "object" else f"make it {src} again"
    return Candidate("attribute_material", rng.choice(forms), cap.replace_tokens(idxs, tgt), 2.5, inverse)


def _object_lookup() -> dict[str, tuple[str, bool]]:
    """Surface form -> (table key, is plural)."""
    lookup: dict[str, tuple[str, bool]] = {}
    for sing in R.OBJECTS:
        lookup[sing] = (sing, False)
        lookup.setdefault(plural(sing), (sing, True))
    return lookup


_OBJECT_FORMS = _object_lookup()


def _object(cap: Caption, rng: random.Random) -> Candidate | None:
    lookup = _OBJECT_FORMS
    src = _pick_word(cap, lookup, rng)
    if src is None:
        return None
    key, is_plural = lookup[src]
    tgt = rng.choice(R.OBJECTS[key])
    tgt_form = plural(tgt) if is_plural else tgt
    idxs = _occurrences(cap, {src})
    a_tgt = tgt_form if is_plural else article(tgt_form)
    forms = [f"replace the {src} with {a_tgt}", f"turn the {src} into {a_tgt}", f"swap the {src} for {a_tgt}"]
    inverse = f"replace the {tgt_form} with {src if is_plural else article(src)}"
    return Candidate("object_swap", rng.choice(forms), cap.replace_tokens(idxs, tgt_form), 3.0, inverse)


def _context_ok(word_prev: set[str]) -> Callable[[Caption, int], bool]:
    return lambda c, i: c.tokens[i].low not in ("fall", "spring") or c.prev(i) in word_prev


def _season(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.SEASONS, rng, _context_ok({"in", "this", "early", "late", "the", "of"}))
    if src is None:
        return None
    tgt = rng.choice(R.SEASONS[src])
    forms = [f"make it {tgt}", f"change the season to {tgt}", f"make it look like {tgt}"]
    edited = cap.replace_tokens(_occurrences(cap, {src}), tgt)
    return Candidate("season", rng.choice(forms), edited, 3.0, f"change the season back to {src}")


def _time(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.TIMES, rng)
    if src is None:
        return None
    tgt = rng.choice(R.TIMES[src])
    forms = [f"make it {tgt}", f"change the time of day to {tgt}", f"show it at {tgt}"]
    edited = cap.replace_tokens(_occurrences(cap, {src}), tgt)
    return Candidate("time_of_day", rng.choice(forms), edited, 3.0, f"change the time of day back to {src}")


def _weather(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.WEATHER, rng)
    if src is None:
        return None
    tgt = rng.choice(R.WEATHER[src])
    if src.endswith("y"):
        forms = [f"make it {tgt}", f"make the weather {tgt}"]
        inverse = f"make the weather {src} again"
    else:
        forms = [f"replace the {src} with {tgt}", f"turn the {src} into {tgt}"]
        inverse = f"replace the {tgt} with {src}"
    return Candidate("weather", rng.choice(forms), cap.replace_tokens(_occurrences(cap, {src}), tgt), 3.0, inverse)


def _subject(cap: Caption) -> str | None:
    for t in cap.tokens:
        if t.low in R.PERSON_WORDS or t.low in R.ANIMAL_WORDS:
            return t.low
    return None


#: Pose / expression word -> its verb phrase ("sitting" -> "sit down"), from the swaps' own verbs.
_POSE_VERBS = {word: verb for swaps in R.POSES.values() for word, verb in swaps}


def _pose(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.POSES, rng)
    if src is None:
        return None
    tgt, verb = rng.choice(R.POSES[src])
    who = _subject(cap)
    instruction = f"make the {who} {verb}" if who else f"make them {verb}"
    back = _POSE_VERBS.get(src, f"look {src}")
    inverse = f"make the {who} {back} again" if who else f"make them {back} again"
    family = "expression" if src in R.EXPRESSION_WORDS else "pose"
    return Candidate(family, instruction, cap.replace_tokens(_occurrences(cap, {src}), tgt), 3.0, inverse)


def _medium_ok(cap: Caption, i: int) -> bool:
    return cap.prev(i) != "stock" and cap.next(i) not in {"by", "credit", "booth", "frame", "album", "prop", "book"}


def _medium(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.MEDIA, rng, _medium_ok)
    if src is None:
        return None
    tgt = rng.choice(R.MEDIA[src])
    idxs = [i for i in _occurrences(cap, {src}) if _medium_ok(cap, i)]
    forms = [f"turn it into {article(tgt)}", f"make it {article(tgt)}", f"make it look like {article(tgt)}"]
    inverse = f"turn it back into {article(src)}"
    return Candidate("style_medium", rng.choice(forms), cap.replace_tokens(idxs, tgt), 2.0, inverse)


def _setting(cap: Caption, rng: random.Random) -> Candidate | None:
    hits = [m for m in _SETTING.finditer(cap.text) if not any(s <= m.start() < e for s, e in cap.protected)]
    if not hits:
        return None
    m = rng.choice(hits)
    src = m.group(1).lower()
    tgt = rng.choice(sorted(k for k in R.SETTINGS if k != src))
    phrase = R.SETTINGS[tgt]
    np = phrase.split(" ", 1)[1]
    edited = cap.text[: m.start()] + match_case(m.group(0), phrase) + cap.text[m.end() :]
    forms = [f"move it to {np}", f"change the setting to {np}", f"put it {phrase}"]
    inverse = f"put it back {m.group(0).lower()}"
    return Candidate("background_setting", rng.choice(forms), tidy(edited), 2.5, inverse)


_WHITE_BG = re.compile(
    r"(?:,?\s*isolated)?\s+(?:on|against|over)\s+(?:a\s+)?(?:white|transparent)(?:\s+background)?\b"
    r"|,?\s*isolated\b(?!\s+(?:on|against|over))",
    re.I,
)


def _background(cap: Caption, rng: random.Random) -> Candidate | None:
    m = _WHITE_BG.search(cap.text)
    if not m:
        return None
    phrase, instruction = rng.choice(R.PRODUCT_BACKGROUNDS)
    edited = cap.text[: m.start()] + " " + styled(phrase, cap.title) + cap.text[m.end() :]
    return Candidate("background_setting", instruction, tidy(edited), 3.0, "put it back on a plain white background")


def _remove(cap: Caption, rng: random.Random) -> Candidate | None:
    options = []
    for m in _WITH.finditer(cap.text):
        rest = cap.text[m.end() :]
        det = re.match(r"(?:(?:a|an|the|some|two|three)\s+)?", rest, re.I)
        body = rest[det.end() :]
        words = []
        for w in re.finditer(r"[A-Za-z][A-Za-z'\-]*", body):
            gap = body[words[-1].end() : w.start()] if words else body[: w.start()]
            if gap.strip() or w.group(0).lower() in R.PHRASE_BREAKS or len(words) == 3:
                break
            words.append(w)
        if not words or len(words[-1].group(0)) < 3:
            continue
        span_end = m.end() + det.end() + words[-1].end()
        thing = " ".join(w.group(0).lower() for w in words)
        edited = tidy(cap.text[: m.start()] + cap.text[span_end:])
        if len(_TOKEN.findall(edited)) >= 2 and not any(s <= m.start() < e for s, e in cap.protected):
            options.append((thing, edited))
    if not options:
        return None
    thing, edited = rng.choice(options)
    forms = [f"remove the {thing}", f"take away the {thing}", f"get rid of the {thing}"]
    return Candidate("remove_object", rng.choice(forms), edited, 1.5, f"add the {thing} back")


_PRONOUNS = {
    "him": {"man", "boy", "groom", "businessman", "father", "guy", "actor", "men"},
    "her": {"woman", "girl", "bride", "lady", "mother", "actress", "businesswoman"},
}


def _add(cap: Caption, rng: random.Random) -> Candidate | None:
    for i, t in enumerate(cap.tokens):
        if not cap.editable(i) or not cap.ends_phrase(i):
            continue
        if t.low in R.PERSON_WORDS or t.low in R.ANIMAL_WORDS:
            person = t.low in R.PERSON_WORDS
            phrase, template = rng.choice(R.ADD_PERSON if person else R.ADD_ANIMAL)
            them = next((p for p, ws in _PRONOUNS.items() if t.low in ws), "them")
            their = {"him": "his", "her": "her"}.get(them, "their")
            instruction = template.format(them=them, their=their, noun=t.low)
            edited = cap.text[: t.end] + " " + styled(phrase, cap.title) + cap.text[t.end :]
            return Candidate("add_object", instruction, tidy(edited), 2.0, remove_phrase(phrase))
    if cap.words & R.OUTDOOR_WORDS:
        phrase, instruction = rng.choice(R.ADD_OUTDOOR)
        return Candidate("add_object", instruction, cap.insert(phrase), 1.5, remove_phrase(phrase))
    phrase, instruction = rng.choice(R.ADD_THING)
    return Candidate("add_object", instruction, cap.insert(phrase), 0.8, remove_phrase(phrase))


def _place(cap: Caption, rng: random.Random) -> Candidate | None:
    """Put an object (a caption with neither people nor outdoor words) somewhere."""
    if cap.words & (R.OUTDOOR_WORDS | R.PERSON_WORDS | R.ANIMAL_WORDS):
        return None
    phrase, instruction = rng.choice(R.PRODUCT_BACKGROUNDS)
    return Candidate("background_setting", instruction, cap.insert(phrase), 0.8, "put it back on a plain background")


def _scene(cap: Caption, rng: random.Random) -> Candidate | None:
    taken = set(R.SEASONS) | set(R.TIMES) | set(R.WEATHER)
    if not (cap.words & R.OUTDOOR_WORDS) or cap.words & taken:
        return None
    phrase, instruction, family = rng.choice(R.SCENES)
    return Candidate(family, instruction, cap.insert(phrase), 2.0, R.PHRASE_INVERSES[phrase])


def _style(cap: Caption, rng: random.Random) -> Candidate | None:
    phrase, instruction = rng.choice(R.STYLES)
    return Candidate("style_medium", instruction, cap.insert(phrase), 1.0, undo_style(phrase))


def _size(cap: Caption, rng: random.Random) -> Candidate | None:
    src = _pick_word(cap, R.SIZES, rng, lambda c, i: bool(c.noun_after(i, set(R.SIZES))))
    if src is None:
        return None
    tgt = rng.choice(R.SIZES[src])
    idxs = _occurrences(cap, {src})
    noun = cap.noun_after(idxs[0], set(R.SIZES)) or "object"
    forms = [f"make the {noun} {tgt}", f"change the {noun} to {article(tgt)} one"]
    inverse = f"make the {noun} {src}" if noun != "object" else f"make it {src} again"
    return Candidate("attribute_size", rng.choice(forms), cap.replace_tokens(idxs, tgt), 2.0, inverse)


def _count(cap: Caption, rng: random.Random) -> Candidate | None:
    """A number word swapped, or "a <object>" made two of them."""
    src = _pick_word(cap, R.NUMBERS, rng, lambda c, i: bool(c.noun_after(i)))
    if src is not None:
        tgt = rng.choice(R.NUMBERS[src])
        noun = cap.noun_after(_occurrences(cap, {src})[0]) or "things"
        edited = cap.replace_tokens(_occurrences(cap, {src}), tgt)
        forms = [f"make it {tgt} {noun}", f"show {tgt} {noun}"]
        return Candidate("count", rng.choice(forms), edited, 2.0, f"make it {src} {noun} again")
    hits = [i for i, t in enumerate(cap.tokens[:-1]) if t.low in ("a", "an") and cap.editable(i + 1)
            and cap.tokens[i + 1].low in R.OBJECTS and not cap.text[t.end:cap.tokens[i + 1].start].strip()]
    if not hits:
        return None
    i = rng.choice(hits)
    noun = cap.tokens[i + 1].low
    many = rng.choice(["two", "three"])
    start, end = cap.tokens[i].start, cap.tokens[i + 1].end
    edited = cap.text[:start] + match_case(cap.tokens[i].text, many) + " " + match_case(
        cap.tokens[i + 1].text, plural(noun)) + cap.text[end:]
    return Candidate("count", f"make it {many} {plural(noun)}", edited, 1.5, f"leave only one {noun}")


def _text(cap: Caption, rng: random.Random) -> Candidate | None:
    """Words written on a thing that carries text (a sign, a t-shirt, a mug)."""
    hits = [i for i, t in enumerate(cap.tokens) if t.low in R.TEXT_CARRIERS and cap.editable(i) and cap.ends_phrase(i)]
    if not hits:
        return None
    i = rng.choice(hits)
    word, thing = rng.choice(R.TEXT_WORDS), cap.tokens[i].low
    tok = cap.tokens[i]
    edited = cap.text[: tok.end] + f' with the word "{word}"' + cap.text[tok.end :]
    return Candidate("text", f'write "{word}" on the {thing}', tidy(edited), 1.5,
                     f'remove the word "{word}" from the {thing}')


def _tone(cap: Caption, rng: random.Random) -> Candidate | None:
    phrase, instruction = rng.choice(R.TONES)
    return Candidate("tone", instruction, cap.insert(phrase), 0.4, R.PHRASE_INVERSES[phrase])


GENERATORS: tuple[Callable[[Caption, random.Random], Candidate | None], ...] = (
    _colour, _material, _object, _season, _time, _weather, _pose, _medium,
    _setting, _background, _remove, _add, _place, _scene, _style, _size, _count, _text, _tone,
)


def template_edit(caption: str, seed: int, edit_type: str | None = None) -> Candidate:
    """One seeded edit of `caption` (deterministic for the same caption, seed and requested type): of
    `edit_type` where a rule makes one for this caption, else of any type."""
    rng = random.Random(seed)
    cap = Caption(caption)
    cands = [c for gen in GENERATORS if (c := gen(cap, rng)) is not None and c.edited.strip()]
    cands = [c for c in cands if c.edited != caption]
    if not cands:  # only a caption without words: the style fallback still applies
        return Candidate("style_medium", "make it a watercolor painting", tidy(caption + ", watercolor painting"), 1,
                         undo_style("watercolor painting"))
    asked = [c for c in cands if c.edit_type == edit_type]
    pool = asked or cands
    return rng.choices(pool, weights=[c.weight for c in pool], k=1)[0]


class TemplateBackend(LLMBackend):
    """No model: answers each request with a rule-made edit, as the JSON an LLM would return."""

    name = "template"
    needs_messages = False

    def __init__(self, gen: GenerationSettings | None = None, model: str = VERSION) -> None:
        super().__init__(model, gen or GenerationSettings())
        #: Answer the inverse instruction too: the schema asks for it (`instruct.inverse`).
        self.inverse = INVERSE_FIELD in self.gen.schema.get("required", ())

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        out = []
        for req in requests:
            edit = template_edit(req.caption, req.seed, req.edit_type)
            answer = {"edit_type": edit.edit_type, "instruction": edit.instruction, "edited_caption": edit.edited}
            if self.inverse:
                answer[INVERSE_FIELD] = edit.inverse
            text = json.dumps(answer, ensure_ascii=False)
            out.append(LLMResult(text=text, finish_reason="stop"))
        return out
