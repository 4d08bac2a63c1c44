"""Language identification for captions.

py3langid (a maintained langid.py fork that ships its model) is accurate on sentences but unsure on
short LAION product titles ("Stainless Steel Kitchen Sink Faucet" -> Luxembourgish, p=0.36). So the
decision combines three signals, strongest first:
1. script: mostly non-Latin letters is decisive (e.g. CJK, Cyrillic, Arabic);
2. langid restricted to widely used languages, with normalized probabilities;
3. English evidence: the share of tokens that are common English words overrides a weak non-English guess.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from editgen.pipeline.settings.ingest import LANGID_LANGUAGES

_TOKEN = re.compile(r"[a-z']+")
_ENGLISH = frozenset(
    """
    a about above across after against all along an and any are around as at away back be beautiful before behind
    below best between big black blue book boy brown by can car card cat child city close cold color colorful
    colour come cover cute dark day design dog door down dress during each every face family flower flowers
    food for forest from front full garden gift girl glass gold good great green grey gray hair hand happy has have
    her his home house how illustration image in inside into is it its kids kitchen lake large leather light
    like little living logo long love man men modern mountain mountains my new night of off old on one or
    orange our out outdoor over paper park people photo picture pink plate poster print purple red river road
    room round set silver simple sky small snow some steel street style summer sun sunset table the their
    these this through to top tree trees two under up vector view vintage wall water wedding white wild window
    winter with without woman women wood wooden world yellow young your shirt shoes bag black white
    art guide sticker miniature collection movie poster kit pack mini sale free cotton silk jacket coat
    ring necklace earrings bracelet watch chair sofa bed lamp bathroom bedroom office school map game
    games toy toys baby cake recipe chocolate coffee tea wine beer chicken salad bread pizza beach sea
    ocean island bridge castle church tower building wall art painting drawing sketch portrait landscape
    abstract pattern texture background wallpaper icon icons shoes boots jeans hat cap bike bicycle
    truck bus train boat ship plane airplane horse bird birds fish bear lion tiger elephant
        """.split()
)


@dataclass(frozen=True)
class LanguageGuess:
    lang: str
    confidence: float


@lru_cache(maxsize=1)
def _identifier():  # noqa: ANN202 - third-party type
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(LANGID_LANGUAGES)
    return ident


def _script_of(ch: str) -> str:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "OTHER"
    return name.split(" ", 1)[0]


_SCRIPT_LANG = {"CJK": "zh", "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "CYRILLIC": "ru",
                "ARABIC": "ar", "HEBREW": "he", "GREEK": "el", "THAI": "th", "DEVANAGARI": "hi"}


def _is_latin(ch: str) -> bool:
    return ch < "\u0250" or "\u1e00" <= ch <= "\u1eff" or _script_of(ch) == "LATIN"


def _by_script(text: str) -> LanguageGuess | None:
    """The guess when script alone decides (no letters, or mostly non-Latin letters), else None."""
    if text.isascii():
        if not any(ch.isalpha() for ch in text):
            return LanguageGuess("und", 0.0)
        return None
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return LanguageGuess("und", 0.0)
    latin = sum(1 for ch in letters if _is_latin(ch))
    if latin < 0.5 * len(letters):
        scripts: dict[str, int] = {}
        for ch in letters:
            s = _script_of(ch)
            scripts[s] = scripts.get(s, 0) + 1
        top = max(scripts, key=scripts.__getitem__)
        return LanguageGuess(_SCRIPT_LANG.get(top, top.lower()), 1.0 - latin / len(letters))
    return None


def _with_english_evidence(text: str, lang: str, prob: float) -> LanguageGuess:
    if lang != "en":
        tokens = _TOKEN.findall(text.lower())
        if tokens:
            share = sum(1 for t in tokens if t in _ENGLISH) / len(tokens)
            if share >= 0.34:
                return LanguageGuess("en", max(share, 1.0 - prob))
    return LanguageGuess(lang, prob)


def guess_language(text: str) -> LanguageGuess:
    return guess_languages([text])[0]


@lru_cache(maxsize=1)
def _batch_classifier():  # noqa: ANN202 - holds a third-party identifier
    from editgen.filters.captions.lang_batch import BatchClassifier

    return BatchClassifier(_identifier())


def load_language_model() -> None:
    """Load the language identifier now (a worker's setup), not inside its first partition's timing."""
    _batch_classifier()


def guess_languages(texts: list[str]) -> list[LanguageGuess]:
    """guess_language for many texts: langid runs once for the whole batch (filters.captions.lang_batch)."""
    out: list[LanguageGuess | None] = [_by_script(t) for t in texts]
    todo = [i for i, g in enumerate(out) if g is None]
    if len(todo) == 1:
        lang, prob = _identifier().classify(texts[todo[0]])
        out[todo[0]] = _with_english_evidence(texts[todo[0]], str(lang), float(prob))
    elif todo:
        for i, (lang, prob) in zip(todo, _batch_classifier().classify([texts[i] for i in todo]), strict=True):
            out[i] = _with_english_evidence(texts[i], str(lang), float(prob))
    return [g for g in out if g is not None]
