"""Blocked terms for LLM outputs: the NSFW list ingest uses (filters/data/nsfw_blocklist.txt) plus
extra terms from config. Ingest already dropped captions containing them, so any hit in an output
was written by the model."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from importlib import resources as importlib_resources
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_RESOURCE = ("filters", "data/nsfw_blocklist.txt")


def read_terms(text: str) -> list[str]:
    """One term or phrase per line; blank lines and '#' comments ignored; lowercased."""
    out = []
    for line in text.splitlines():
        term = line.split("#", 1)[0].strip().lower()
        if term:
            out.append(term)
    return out


def load_blocklist(path: str | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Terms from `path` (or the bundled NSFW list) plus `extra`.

    An explicit `path` that is missing is an error; a missing bundled list only logs a warning (the
    file belongs to the ingest stage and may not exist yet in a partial checkout).
    """
    terms: list[str] = []
    if path:
        terms = read_terms(Path(path).read_text(encoding="utf-8"))
    else:
        package, name = DEFAULT_RESOURCE
        try:
            terms = read_terms((importlib_resources.files(package) / name).read_text(encoding="utf-8"))
        except (FileNotFoundError, ModuleNotFoundError, OSError):
            log.warning("instruct: no bundled blocklist at %s/%s; only extra terms apply", package, name)
    terms.extend(t.strip().lower() for t in extra if t.strip())
    return sorted(set(terms))


class Blocklist:
    """Whole-word (and whole-phrase) matcher, case-insensitive."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
        if self.terms:
            body = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in self.terms)
            self._re: re.Pattern[str] | None = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.I)
        else:
            self._re = None

    def find(self, text: str) -> str | None:
        """The first blocked term in `text`, or None."""
        if self._re is None or not text:
            return None
        m = self._re.search(text)
        return m.group(0).lower() if m else None
