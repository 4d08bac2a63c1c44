"""Caption cleaning: undo web encoding damage and strip boilerplate, without changing meaning.

Order matters: entities are decoded before tags are stripped (captions often hold `&lt;b&gt;`), and
NFC normalization runs before any matching so visually equal strings compare equal.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from functools import lru_cache
from importlib import resources as importlib_resources

from editgen.pipeline.redact import redact_url

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
    r"pixabay|unsplash|pexels|pinterest|flickr)\b.*$": ("shutterstock", "alamy", "getty", "istock", "dreamstime",
                                                        "depositphotos", "123rf", "adobe stock", "pixabay",
                                                        "unsplash", "pexels", "pinterest", "flickr"),
    r"\b(free|hd|4k)\s+download\b": ("download",),
    r"\bclick (here )?to (enlarge|zoom|view)\b": ("click",),
    r"\bphoto(graph)?\s+(by|credit|courtesy of)\s*:?\s*$": ("photo",),
    r"\[\s*\.{3}\s*\]|\(\s*\.{3}\s*\)": ("...",),
    r"(\.{3}|…)\s*$": ("...", "…"),
    r"^\s*(preview|thumbnail)\s*[:\-]": ("preview", "thumbnail"),
}


@lru_cache(maxsize=1)
def boilerplate_patterns() -> list[re.Pattern[str]]:
    text = (importlib_resources.files("editgen.filters.captions") / "data" / "boilerplate.txt").read_text("utf-8")
    pats = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(re.compile(line, re.IGNORECASE))
    return pats


@lru_cache(maxsize=1)
def _boilerplate_rules() -> list[tuple[re.Pattern[str], re.Pattern[str] | None]]:
    """(pattern, guard): the guard finds any of the pattern's needed substrings in one C-level search
    (None: no known needs, always run)."""
    rules = []
    for pat in boilerplate_patterns():
        needs = BOILERPLATE_NEEDS.get(pat.pattern)
        guard = re.compile("|".join(re.escape(k) for k in needs)) if needs else None
        rules.append((pat, guard))
    return rules


#: Control characters become spaces and every run of them and whitespace one space, in one pass.
_SPACE_OR_CONTROL = re.compile("[\\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")


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
    text = _SPACE_OR_CONTROL.sub(" ", text).strip()
    ascii_lower = text.lower() if text.isascii() else None
    changed = False
    for pat, guard in _boilerplate_rules():
        if ascii_lower is not None and guard is not None and not guard.search(ascii_lower):
            continue  # cannot match: skip the (case-insensitive, slow) substitution
        new = pat.sub(" ", text)
        if new != text:
            text, changed = new, True
            ascii_lower = text.lower() if ascii_lower is not None else None
    if changed:
        text = _SPACE.sub(" ", text).strip()
    text = _deslug(text)
    text = _EDGE_PUNCT.sub("", text)
    return text


def _deslug(text: str) -> str:
    """Alt text is often a file name or URL slug ("inside-blue-mosque-istanbul.jpg"); its words are a
    real caption, so drop a trailing image extension and turn slug separators into spaces."""
    stem = _IMAGE_EXT.sub("", text) if "." in text else text  # every extension starts with "."
    if " " in text:
        return stem.rstrip() if " " in stem else text
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


def private_url_key(url: str | None) -> str | None:
    """The URL dedup key. A URL with credentials is kept by its digest: its redacted form would make
    `?key=a` and `?key=b` duplicates, and its clear form would put the credentials in OUT/ingest/_pre."""
    key = url_key(url)
    if key is None or redact_url(key) == key:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
