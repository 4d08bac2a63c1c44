"""Per-row caption filters; each rejection has a named reason that ends up in the stage output."""

from __future__ import annotations

import re
from typing import Any

from editgen.filters.captions.blocklist import blocklisted
from editgen.filters.captions.lang import LanguageGuess, guess_languages

_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
_FILENAME = re.compile(
    r"^[\w\-. ()\[\]]*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg|pdf|mp4|mov|avi|psd|raw|cr2|nef|zip)$",
    re.IGNORECASE,
)
_CAMERA = re.compile(
    r"^(img|dsc|dscn|dscf|dcim|pxl|gopr|mvimg|screenshot|photo|image|pic|file|untitled)[\s_\-]*\d+"
    r"([_\-]\d+)*(\s*\(\d+\))?$",
    re.I,
)
#: A product/SKU code: digits mixed with letters or symbols, or a long bare number (not a year).
_CODE_TOKEN = re.compile(r"^(?=.*\d)(?:(?=.*[A-Za-z\-/#.+])[\w\-./#+]{3,}|\d{5,})$")
_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def junk_reason(text: str) -> str | None:
    """Bare URLs, file names, camera file stems and SKU-like codes carry no describable content."""
    stripped = text.strip()
    # Each pattern below needs a character most captions lack ("://" or "www.", a ".", a digit): the
    # guards skip only patterns that cannot match, so the result is the same, at a fraction of the cost.
    has_url = "://" in stripped or "www." in stripped.lower()
    without_urls = _URL.sub(" ", stripped).strip() if has_url else stripped
    words = len(_WORD.findall(without_urls))
    if not without_urls or words == 0 and has_url and _URL.search(stripped):
        return "junk_url"
    if "." in stripped and _FILENAME.match(stripped) or _CAMERA.match(stripped):
        return "junk_filename"
    letters = len(_LETTER.findall(without_urls))
    if letters < 0.5 * len(without_urls.replace(" ", "")):
        return "junk_symbols"
    if words < 2:
        tokens = without_urls.split()
        codes = sum(1 for t in tokens if _CODE_TOKEN.match(t))
        if tokens and codes / len(tokens) >= 0.5:
            return "junk_code"
    return None


def check_caption(
    caption: str,
    *,
    min_words: int,
    max_words: int,
    min_chars: int,
    max_chars: int,
    languages: tuple[str, ...],
    min_language_confidence: float,
    blocklist: tuple[str, ...],
    drop_junk: bool,
) -> tuple[str | None, LanguageGuess | None]:
    """(drop reason or None, language guess). Cheap checks first; language id runs last."""
    return check_captions(
        [caption], min_words=min_words, max_words=max_words, min_chars=min_chars, max_chars=max_chars,
        languages=languages, min_language_confidence=min_language_confidence, blocklist=blocklist,
        drop_junk=drop_junk,
    )[0]


def _cheap_reason(caption: str, *, min_words: int, max_words: int, min_chars: int, max_chars: int,
                  blocklist: tuple[str, ...], drop_junk: bool) -> str | None:
    if not caption or not _LETTER.search(caption):
        return "empty"
    n_chars = len(caption)
    n_words = len(caption.split())
    if n_chars > max_chars or n_words > max_words:
        return "too_long"
    if n_chars < min_chars or n_words < min_words:
        return "too_short"
    if drop_junk:
        junk = junk_reason(caption)
        if junk:
            return junk
    if blocklisted(caption, blocklist):
        return "blocklisted"
    return None


def check_captions(
    captions: list[str],
    *,
    languages: tuple[str, ...],
    min_language_confidence: float,
    **cheap: Any,
) -> list[tuple[str | None, LanguageGuess | None]]:
    """check_caption for many captions: the cheap checks per caption, then one batched language id
    for the captions that passed them (the same results, several times faster)."""
    out: list[tuple[str | None, LanguageGuess | None]] = []
    pending = []
    for i, caption in enumerate(captions):
        reason = _cheap_reason(caption, **cheap)
        out.append((reason, None))
        if reason is None:
            pending.append(i)
    for i, guess in zip(pending, guess_languages([captions[i] for i in pending]), strict=True):
        if languages and guess.lang not in languages and guess.confidence >= min_language_confidence:
            out[i] = ("not_english" if tuple(languages) == ("en",) else "language"), guess
        else:
            out[i] = None, guess
    return out
