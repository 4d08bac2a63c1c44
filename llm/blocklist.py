"""Blocked terms for LLM outputs: the NSFW list ingest uses (filters/data/nsfw_blocklist.txt) plus
extra terms from config, matched exactly as ingest matches them (wildcards, whole words). Ingest
already dropped captions containing them, so any hit in an output was written by the model."""

from __future__ import annotations

from collections.abc import Iterable

from filters.caption_filters import blocklisted, load_blocklist, read_terms

__all__ = ["Blocklist", "load_blocklist", "read_terms"]


class Blocklist:
    """Whole-word (and whole-phrase) matcher, case-insensitive; `term*` matches any word ending."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = tuple(sorted({t.strip().lower() for t in terms if t.strip()}))

    def find(self, text: str) -> str | None:
        """The first blocked term in `text` (lowercased), or None."""
        hit = blocklisted(text, self.terms)
        return hit.lower() if hit else None
