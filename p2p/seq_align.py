"""Token bookkeeping for Prompt-to-Prompt: word lookup and source->edit token mappers.

Everything works on the 77-position CLIP sequence ``[BOS, content..., EOS, pad...]``. A mapper ``M``
is an ``(L, L)`` matrix with ``M[k, j]`` = share of *source* token ``k``'s attention that edit token
``j`` takes; ``mapped[j]`` says whether edit token ``j`` has a source at all (new tokens in a
refinement keep their own attention). The edited attention is then ``P_src @ M`` on mapped columns.

Unlike the reference ``seq_aligner.get_replacement_mapper_``, the word-swap mapper stays aligned when a
swapped word has a different number of tokens: words are paired by index, multi-token words spread
attention evenly (mass-preserving), and every later word, EOS and the padding are re-based on the
real offsets of both prompts.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import regex
import torch

# CLIP's pre-tokenizer pattern: BPE never crosses these pieces, so tokenising piece by piece gives the
# same ids as tokenising the whole prompt, and we learn which positions belong to which word.
_PIECE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@dataclass(frozen=True)
class Piece:
    """One pre-tokenizer piece of a word ("Dog," -> "Dog", ","), with its sequence positions."""

    text: str
    positions: tuple[int, ...]

    @property
    def is_word(self) -> bool:
        return any(ch.isalnum() for ch in self.text)

    @property
    def key(self) -> str:
        return self.text.lower()


@dataclass(frozen=True)
class Word:
    """A whitespace-separated chunk of the prompt."""

    text: str
    pieces: tuple[Piece, ...]

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(p for piece in self.pieces for p in piece.positions)


@dataclass(frozen=True)
class PromptTokens:
    """A prompt's CLIP ids plus the word/piece -> position index (positions include the BOS offset)."""

    prompt: str
    ids: tuple[int, ...]  # BOS .. EOS, truncated to ``length`` (no padding)
    words: tuple[Word, ...]
    length: int = 77

    @property
    def eos(self) -> int:
        """Position of EOS; padding follows it."""
        return len(self.ids) - 1

    @property
    def word_pieces(self) -> list[Piece]:
        return [p for w in self.words for p in w.pieces if p.is_word]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _token_words(tokenizer: Any, full: list[int], last: int) -> tuple[Word, ...]:
    """Fallback index straight from the ids: one word per ``</w>``-terminated token run.

    Used when a prompt's text normalisation (odd Unicode, HTML entities) makes piecewise tokenisation
    disagree with the tokenizer; positions are then exact, word boundaries approximate.
    """
    words: list[Word] = []
    run: list[int] = []
    texts: list[str] = []
    for pos, tok in enumerate(tokenizer.convert_ids_to_tokens(full[1:last]), start=1):
        run.append(pos)
        texts.append(tok)
        if tok.endswith("</w>") or pos == last - 1:
            text = "".join(texts).removesuffix("</w>")
            words.append(Word(text, (Piece(text, tuple(run)),)))
            run, texts = [], []
    return tuple(words)


def tokenize(tokenizer: Any, prompt: str, length: int | None = None) -> PromptTokens:
    """Tokenise ``prompt`` and record which sequence positions each word and piece occupies.

    Pieces that fall past the context window (truncation) get no positions.
    """
    length = int(length or getattr(tokenizer, "model_max_length", 77) or 77)
    if length > 10_000:  # tokenizers without a real limit report a huge sentinel
        length = 77
    full = list(tokenizer(prompt, truncation=True, max_length=length)["input_ids"])
    last = len(full) - 1  # EOS position; content lives in [1, last)
    words: list[Word] = []
    flat: list[int] = []
    pos = 1
    for chunk in unicodedata.normalize("NFC", prompt).split():
        pieces = []
        for m in _PIECE.finditer(chunk):
            ids = _ids(tokenizer, m.group())
            flat.extend(ids)
            span = tuple(p for p in range(pos, pos + len(ids)) if p < last)
            pieces.append(Piece(m.group(), span))
            pos += len(ids)
        words.append(Word(chunk, tuple(pieces)))
    if flat[: last - 1] != full[1:last]:
        return PromptTokens(prompt, tuple(full), _token_words(tokenizer, full, last), length)
    return PromptTokens(prompt, tuple(full), tuple(words), length)


def _query_keys(query: str) -> list[str]:
    return [m.group().lower() for m in _PIECE.finditer(query) if any(ch.isalnum() for ch in m.group())]


def find_word(tokens: PromptTokens, query: str | int) -> list[int]:
    """Sequence positions of every occurrence of ``query`` (case- and punctuation-insensitive).

    ``query`` may be a word ("Dog," finds "dog"), a multi-word phrase ("teddy bear"), a hyphen part
    ("bear" in "teddy-bear"), or an int word index. Matches whole pieces only ("dog" not in "hotdog").
    All tokens of multi-token words are returned; punctuation tokens are not.
    """
    if isinstance(query, int):
        word = tokens.words[query]
        pieces = [p for p in word.pieces if p.is_word] or list(word.pieces)
        return sorted(p for piece in pieces for p in piece.positions)
    keys = _query_keys(query)
    if not keys:
        return []
    pieces = tokens.word_pieces
    found: list[int] = []
    for i in range(len(pieces) - len(keys) + 1):
        if all(pieces[i + n].key == key for n, key in enumerate(keys)):
            found.extend(p for piece in pieces[i : i + len(keys)] for p in piece.positions)
    return sorted(set(found))


@dataclass
class Alignment:
    """Source -> edit token mapper. ``identity`` lets callers skip the matmul entirely."""

    mapper: torch.Tensor  # (L, L) float32, M[k, j]
    mapped: torch.Tensor  # (L,) bool over edit positions
    identity: bool = False

    def gather(self) -> list[list[tuple[int, float]]]:
        """For each edit position, the (source position, weight) pairs feeding it (debug/tests)."""
        return [
            [(int(k), float(self.mapper[k, j])) for k in torch.nonzero(self.mapper[:, j]).flatten()]
            for j in range(self.mapper.shape[1])
        ]


def _link(m: torch.Tensor, src: tuple[int, ...], tgt: tuple[int, ...]) -> None:
    """Map a source span onto an edit span: 1:1 when sizes match, else spread evenly (mass kept)."""
    if not src or not tgt:
        return
    if len(src) == len(tgt):
        for k, j in zip(src, tgt, strict=True):
            m[k, j] = 1.0
    else:
        for k in src:
            for j in tgt:
                m[k, j] = 1.0 / len(tgt)


def _finish(m: torch.Tensor, src: PromptTokens, tgt: PromptTokens) -> Alignment:
    """BOS->BOS, then EOS and padding re-based on each prompt's own EOS position."""
    length = m.shape[0]
    m[0, 0] = 1.0
    for d in range(length - tgt.eos):
        k, j = src.eos + d, tgt.eos + d
        if k < length:
            m[k, j] = 1.0
    mapped = m.sum(0) > 0
    identity = bool(torch.equal(m, torch.eye(length)))
    return Alignment(m, mapped, identity)


def replace_alignment(src: PromptTokens, tgt: PromptTokens) -> Alignment:
    """Word-swap mapper: words paired by index (the prompts must have the same word count)."""
    if len(src.words) != len(tgt.words):
        raise ValueError(
            f"word swap needs the same number of words: {len(src.words)} vs {len(tgt.words)} "
            f"({src.prompt!r} -> {tgt.prompt!r}); use refine"
        )
    length = src.length
    m = torch.zeros(length, length)
    for ws, wt in zip(src.words, tgt.words, strict=True):
        if len(ws.pieces) == len(wt.pieces):
            for ps, pt in zip(ws.pieces, wt.pieces, strict=True):
                _link(m, ps.positions, pt.positions)
        else:
            _link(m, ws.positions, wt.positions)
    return _finish(m, src, tgt)


def global_align(a: list[int], b: list[int], match: int = 1, mismatch: int = -1, gap: int = 0) -> list[int | None]:
    """Needleman-Wunsch alignment of ``b`` against ``a``: for each b index, its a index or None.

    With the default scores a substitution (-1) always loses to delete+insert (0), so only identical
    tokens are ever paired. Ties are broken deterministically (the traceback pairs the later source
    token first, which keeps a repeated word next to its matched neighbours).
    """
    n, k = len(a), len(b)
    score = [[0] * (k + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        score[i][0] = i * gap
    for j in range(1, k + 1):
        score[0][j] = j * gap
    for i in range(1, n + 1):
        for j in range(1, k + 1):
            diag = score[i - 1][j - 1] + (match if a[i - 1] == b[j - 1] else mismatch)
            score[i][j] = max(diag, score[i - 1][j] + gap, score[i][j - 1] + gap)
    out: list[int | None] = [None] * k
    i, j = n, k
    while i > 0 and j > 0:
        s = score[i][j]
        if a[i - 1] == b[j - 1] and s == score[i - 1][j - 1] + match:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif s == score[i - 1][j] + gap:
            i -= 1
        elif s == score[i][j - 1] + gap:
            j -= 1
        else:  # mismatch pairing (only reachable with non-default scores)
            i, j = i - 1, j - 1
    return out


def refine_alignment(src: PromptTokens, tgt: PromptTokens) -> Alignment:
    """Refinement mapper: global alignment of the content tokens; unmatched edit tokens stay unmapped."""
    length = src.length
    m = torch.zeros(length, length)
    a, b = list(src.ids[1 : src.eos]), list(tgt.ids[1 : tgt.eos])
    for j, i in enumerate(global_align(a, b)):
        if i is not None:
            m[i + 1, j + 1] = 1.0
    return _finish(m, src, tgt)


def reweight_vector(tgt: PromptTokens, weights: dict[str, float]) -> torch.Tensor | None:
    """Per-position attention multiplier for the edit prompt (``None`` when nothing is reweighted)."""
    if not weights:
        return None
    w = torch.ones(tgt.length)
    for word, factor in weights.items():
        pos = find_word(tgt, word)
        if not pos:
            raise ValueError(f"reweight word {word!r} not found in {tgt.prompt!r}")
        w[pos] = float(factor)
    return None if bool((w == 1).all()) else w


EDIT_KIND_ALIASES = {
    "replace": "replace",
    "swap": "replace",
    "word_swap": "replace",
    "refine": "refine",
    "refinement": "refine",
    "add": "refine",
    "addition": "refine",
    "reweight": "reweight",
    "ip2p": "ip2p",
    "global": "ip2p",
    "style": "ip2p",
}


def decide_mode(source: str, edit: str, edit_kind: str | None = None) -> str:
    """P2P mode for a caption pair: an explicit ``edit_kind`` wins, else word swap when the word counts
    match and refinement otherwise (a changed word count cannot be paired word by word)."""
    if edit_kind:
        kind = EDIT_KIND_ALIASES.get(edit_kind.strip().lower())
        if kind is None:
            raise ValueError(f"unknown edit kind {edit_kind!r}; expected one of {sorted(EDIT_KIND_ALIASES)}")
        return kind
    return "replace" if len(source.split()) == len(edit.split()) else "refine"
