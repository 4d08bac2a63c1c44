"""Blocked terms: the bundled NSFW list (filters/captions/data/nsfw_blocklist.txt) plus extra terms from
config, one matcher for ingest's captions and the LLM's outputs (wildcards, whole words). Ingest already
dropped captions containing them, so any hit in an LLM output was written by the model."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path


def read_terms(text: str) -> list[str]:
    """One term or phrase per line, lowercased; blank lines and '#' comments (whole or trailing) ignored."""
    out = []
    for line in text.splitlines():
        term = line.split("#", 1)[0].strip().lower()
        if term:
            out.append(term)
    return out


def load_blocklist(path: str | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Sorted unique terms from the bundled NSFW list (or `path`) plus `extra`; ingest and the LLM
    output check share this list and its matcher, so a term means the same in both places."""
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        data = importlib_resources.files("editgen.filters.captions") / "data"
        text = (data / "nsfw_blocklist.txt").read_text("utf-8")
    terms = read_terms(text) + [t.strip().lower() for t in extra if t.strip()]
    return sorted(set(terms))


@lru_cache(maxsize=8)
def _compile_blocklist(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    """Whole-word match; a trailing '*' matches any word ending, a space any run of whitespace."""
    if not terms:
        return None
    parts = []
    for term in terms:
        body = re.escape(term[:-1] if term.endswith("*") else term).replace(r"\ ", r"\s+")
        parts.append(body + (r"\w*" if term.endswith("*") else ""))
    return re.compile(r"(?<!\w)(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?!\w)", re.I)


_WORD_RUN = re.compile(r"\w+")


@lru_cache(maxsize=8)
def _ascii_guard(terms: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]] | None:
    r"""(3-letter prefixes, shorter leads) of the terms' leading word runs. A match starts where a word
    run of the text starts (the pattern's (?<!\w)), so on ASCII text (lowercased: exact for re.I there)
    some word run begins with a term's lead. None when a term is not ASCII (case folding could then
    match ASCII text) or does not start with a word character."""
    prefixes: set[str] = set()
    short: set[str] = set()
    for term in terms:
        lead = _WORD_RUN.match(term[:-1] if term.endswith("*") else term)
        if not term.isascii() or lead is None:
            return None
        if len(lead.group(0)) >= 3:
            prefixes.add(lead.group(0)[:3])
        else:
            short.add(lead.group(0))
    return frozenset(prefixes), tuple(sorted(short))


def _may_match(lower: str, guard: tuple[frozenset[str], tuple[str, ...]]) -> bool:
    prefixes, short = guard
    return any(w[:3] in prefixes or (short and w.startswith(short)) for w in _WORD_RUN.findall(lower))


def blocklisted(text: str, terms: tuple[str, ...]) -> str | None:
    """The first blocklisted term found on word boundaries, or None."""
    pat = _compile_blocklist(terms)
    if pat is None or not text:
        return None
    guard = _ascii_guard(terms)
    if guard is not None and text.isascii() and not _may_match(text.lower(), guard):
        return None  # no word starts like a term: skip the large case-insensitive alternation
    m = pat.search(text)
    return m.group(0) if m else None


class Blocklist:
    """Whole-word (and whole-phrase) matcher, case-insensitive; `term*` matches any word ending."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = tuple(sorted({t.strip().lower() for t in terms if t.strip()}))

    def find(self, text: str) -> str | None:
        """The first blocked term in `text` (lowercased), or None."""
        hit = blocklisted(text, self.terms)
        return hit.lower() if hit else None
