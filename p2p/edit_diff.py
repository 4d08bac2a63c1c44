"""What Prompt-to-Prompt needs from a caption pair: the edit kind and the changed words.

P2P edits attention maps per token position: a *replace* edit swaps words while the word count stays
the same (cross-attention of the swapped positions is replaced); a *refine* edit adds words around an
unchanged input (aligned attention is reused); anything else is *other* (rendered without attention
injection downstream, or skipped). The similarity ratio also guards against rewrites of the caption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

REPLACE, REFINE, OTHER = "replace", "refine", "other"
EDIT_KINDS = (REPLACE, REFINE, OTHER)

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased words (letters/digits, inner apostrophes and hyphens kept); punctuation dropped."""
    return [w.lower() for w in _WORD.findall(text)]


def normalized(text: str) -> str:
    """Case- and punctuation-insensitive form, for the no-change check."""
    return " ".join(words(text))


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (2*matches / total words), as difflib computes it."""
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return 1.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def _is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(w in it for w in small)


@dataclass(frozen=True)
class EditDiff:
    kind: str
    changed_words: list[str] = field(default_factory=list)
    source_words: list[str] = field(default_factory=list)
    target_words: list[str] = field(default_factory=list)


def diff_captions(source: str, target: str) -> EditDiff:
    """Classify the edit from `source` to `target` and list the words it changes."""
    ws, wt = words(source), words(target)
    present = set(ws)
    changed: list[str] = []
    for w in wt:
        if w not in present and w not in changed:
            changed.append(w)
    if ws and len(ws) == len(wt) and ws != wt:
        pairs = [(a, b) for a, b in zip(ws, wt, strict=True) if a != b]
        return EditDiff(REPLACE, changed, [a for a, _ in pairs], [b for _, b in pairs])
    if ws and len(wt) > len(ws) and _is_subsequence(ws, wt):
        return EditDiff(REFINE, changed)
    return EditDiff(OTHER, changed)
