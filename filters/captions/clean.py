"""Caption cleaning: undo web encoding damage and strip boilerplate, without changing meaning.

Order matters: entities are decoded before tags are stripped (captions often hold `&lt;b&gt;`), and
NFC normalization runs before any matching so visually equal strings compare equal.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache
from importlib import resources as importlib_resources

_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]{0,200}>")
#: Script and style elements go with their content (code is not caption text); an unclosed one runs to
#: the end, as a browser would read it.
_SCRIPT = re.compile(r"<\s*(script|style)\b[^<>]{0,200}>.*?(?:<\s*/\s*\1\s*>|$)", re.IGNORECASE | re.DOTALL)
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\s\-|:;,.•·–—_/\\]+|[\s\-|:;,•·–—_/\\]+$")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|webp|bmp|tiff?|heic)$", re.IGNORECASE)
_SLUG = re.compile(r"^[^\s\-_]+(?:[\-_]+[^\s\-_]+){2,}$")
#: Work on at most this many characters: a 1 MB caption is dropped as too long, never fully scanned.
MAX_SCAN_CHARS = 20_000


#: For known boilerplate patterns: substrings one of which any match contains. On ASCII text (where
#: case-insensitive matching is plain lowercasing) a pattern whose substrings are all absent cannot match
#: and is skipped. Patterns not listed here (an edited boilerplate.txt) always run.
BOILERPLATE_NEEDS: dict[str, tuple[str, ...]] = {
    r"\bimage result for\b": ("image result for",),
    r"\b(royalty[- ]free\s+)?(stock\s+)(photo|photograph|image|picture|illustration|vector|footage|video)"
    r"(s|graphy)?\b": ("stock",),
    r"\broyalty[- ]free\b": ("royalty",),
    r"[|\-–—]\s*(shutterstock|alamy|getty ?images|istock(photo)?|dreamstime|depositphotos|123rf|adobe stock|"
    r"pixabay|unsplash|pexels|pinterest|flickr)\b.*$": ("|", "-", "–", "—"),
    r"\b(free|hd|4k)\s+download\b": ("download",),
    r"\bclick (here )?to (enlarge|zoom|view)\b": ("click",),
    r"\bphoto(graph)?\s+(by|credit|courtesy of)\s*:?\s*$": ("photo",),
    r"\[\s*\.{3}\s*\]|\(\s*\.{3}\s*\)": ("...",),
    r"(\.{3}|…)\s*$": ("...", "…"),
    r"^\s*(preview|thumbnail)\s*[:\-]": ("preview", "thumbnail"),
}


@lru_cache(maxsize=1)
def boilerplate_patterns() -> list[re.Pattern[str]]:
    text = (importlib_resources.files("filters.captions") / "data" / "boilerplate.txt").read_text("utf-8")
    pats = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(re.compile(line, re.IGNORECASE))
    return pats


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _control_to_space(text: str) -> str:
    return _CONTROL.sub(" ", text)


def clean_caption(text: str | None) -> str:
    """Return the cleaned caption ('' when nothing is left)."""
    if not text:
        return ""
    text = text[:MAX_SCAN_CHARS]
    for _ in range(3):  # double-escaped entities (&amp;amp;) are common in scraped alt text
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    if "<" in text:  # both patterns start with "<": most captions skip them
        text = _SCRIPT.sub(" ", text)
        text = _TAG.sub(" ", text)
    if not text.isascii():  # NFC and the invisible characters concern non-ASCII text only
        text = unicodedata.normalize("NFC", text)
        text = _INVISIBLE.sub("", text)
    text = _control_to_space(text)
    text = _SPACE.sub(" ", text).strip()
    ascii_lower = text.lower() if text.isascii() else None
    for pat in boilerplate_patterns():
        needs = BOILERPLATE_NEEDS.get(pat.pattern)
        if ascii_lower is not None and needs and not any(k in ascii_lower for k in needs):
            continue  # cannot match: skip the (case-insensitive, slow) substitution
        text = pat.sub(" ", text)
        ascii_lower = text.lower() if ascii_lower is not None else None
    text = _SPACE.sub(" ", text).strip()
    text = _deslug(text)
    text = _EDGE_PUNCT.sub("", text)
    return text


def _deslug(text: str) -> str:
    """Alt text is often a file name or URL slug ("inside-blue-mosque-istanbul.jpg"); its words are a
    real caption, so drop a trailing image extension and turn slug separators into spaces."""
    if " " in text:
        return _IMAGE_EXT.sub("", text).rstrip() if " " in _IMAGE_EXT.sub("", text) else text
    stem = _IMAGE_EXT.sub("", text)
    if _SLUG.match(stem):
        return re.sub(r"[\-_]+", " ", stem).strip()
    return text


def caption_key(text: str) -> str:
    """Normalized form for duplicate detection: case-folded words, punctuation and spacing ignored."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


def url_key(url: str | None) -> str | None:
    if not url:
        return None
    u = url.strip()
    if not u:
        return None
    scheme, sep, rest = u.partition("://")
    if sep:
        host, slash, path = rest.partition("/")
        u = f"{scheme.lower()}://{host.lower()}{slash}{path}"
    return u
