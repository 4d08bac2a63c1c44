"""Token bookkeeping for Prompt-to-Prompt: word lookup and source->edit token mappers.

Everything works on the 77-position CLIP sequence ``[BOS, content..., EOS, pad...]``. A mapper ``M``
is an ``(L, L)`` matrix with ``M[k, j]`` = share of *source* token ``k``'s attention that edit token
``j`` takes; ``mapped[j]`` says whether edit token ``j`` has a source at all (new tokens in a
refinement keep their own attention). The edited attention is then ``P_src @ M`` on mapped columns.

Unlike the reference ``seq_aligner.get_replacement_mapper_``, the word-swap mapper stays aligned when a
swapped word has a different number of tokens: words are paired by index, multi-token words spread
attention evenly (mass-preserving), and every later word, EOS and the padding are re-based on the
real offsets of both prompts. The tail (EOS and padding) keeps its offset to the prompt end; what
falls past the last column folds into it, so every source row sums to 1 and every edit column is
reached (docs/p2p.md lists each rule beside the reference's).
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
    overflow: tuple[int, ...] = ()  # content ids cut off by the truncation (the encoder never sees them)
    token_bytes: tuple[bytes, ...] = ()  # UTF-8 bytes of every content token, kept and cut off alike

    @property
    def truncated(self) -> bool:
        return bool(self.overflow)

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
    content = _ids(tokenizer, prompt)
    extra = {"overflow": tuple(content[last - 1 :]), "token_bytes": _token_bytes(tokenizer, content)}
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
        return PromptTokens(prompt, tuple(full), _token_words(tokenizer, full, last), length, **extra)
    return PromptTokens(prompt, tuple(full), tuple(words), length, **extra)


def _byte_decoder() -> dict[str, int]:
    """Inverse of CLIP's (GPT-2's) byte-level BPE alphabet: printable bytes are themselves, the rest
    are shifted past 255. Lets us match any text (emoji, CJK) against tokens byte for byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_BYTE_DECODER = _byte_decoder()


def _token_bytes(tokenizer: Any, ids: list[int]) -> tuple[bytes, ...]:
    out = []
    for tok in tokenizer.convert_ids_to_tokens(ids):
        text = tok.removesuffix("</w>")
        out.append(bytes(_BYTE_DECODER[ch] for ch in text) if all(ch in _BYTE_DECODER for ch in text) else b"")
    return tuple(out)


class TruncatedWord(ValueError):
    """A word the edit needs lies past the text encoder's token limit, so its attention cannot be edited."""


def _token_matches(tokens: PromptTokens, query: str) -> list[list[int]]:
    """Runs of content tokens whose bytes spell ``query`` exactly (1-based sequence positions, possibly
    past the truncation). Finds emoji and CJK words that share a whitespace chunk with other text."""
    target = unicodedata.normalize("NFC", query).strip().lower().encode()
    runs: list[list[int]] = []
    if not target:
        return runs
    parts = tokens.token_bytes
    for start in range(len(parts)):
        acc = b""
        for end in range(start, len(parts)):
            acc += parts[end]
            if acc == target:
                runs.append(list(range(start + 1, end + 2)))
            if len(acc) >= len(target):
                break
    return runs


def locate_word(tokens: PromptTokens, query: str, what: str) -> list[int]:
    """Positions of ``query`` (see :func:`find_word`), also found by token bytes when it is not a plain
    word (emoji, CJK); raises :class:`TruncatedWord` when it only occurs past the truncation and
    ``ValueError`` (saying why) when it does not occur at all."""
    pos = find_word(tokens, query)
    if pos:
        return pos
    runs = _token_matches(tokens, query) if not query.isascii() or not _query_keys(query) else []
    kept = sorted({p for run in runs for p in run if p < tokens.eos})
    if kept:
        return kept
    if runs or _cut_off(tokens, query):
        raise TruncatedWord(
            f"{what} word {query!r} lies past the {tokens.length}-token truncation of {tokens.prompt!r}"
        )
    why = "" if query.isascii() else " (no run of its tokens spells it: it shares a token with its neighbours)"
    raise ValueError(f"{what} word {query!r} not found in {tokens.prompt!r}{why}")


def _cut_off(tokens: PromptTokens, query: str) -> bool:
    """Does ``query`` match whole pieces that the truncation emptied?"""
    keys = _query_keys(query)
    pieces = [p for w in tokens.words for p in w.pieces if p.is_word]
    return bool(keys) and any(
        all(pieces[i + n].key == key for n, key in enumerate(keys)) and not pieces[i].positions
        for i in range(len(pieces) - len(keys) + 1)
    )


def edit_truncated(src: PromptTokens, tgt: PromptTokens) -> bool:
    """True when the prompts differ only past the truncation: the encoder sees the same tokens, so a
    P2P render would publish byte-identical before/after images."""
    return src.ids == tgt.ids and src.overflow != tgt.overflow


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


Span = tuple[int, ...]


def _link_tail(m: torch.Tensor, src: Span, tgt: Span) -> None:
    """EOS and padding keep their offset to the prompt end; the longer side's excess folds into the
    last pair (several sources onto the last column, or the last source spread over the extra columns)."""
    n = min(len(src), len(tgt))
    for k, j in zip(src[: n - 1], tgt[: n - 1], strict=True):
        m[k, j] = 1.0
    _link(m, src[n - 1 :], tgt[n - 1 :])


def _finish(m: torch.Tensor, groups: list[tuple[Span, Span]], src: PromptTokens, tgt: PromptTokens) -> Alignment:
    """Link BOS, the paired spans and the tail. A span whose partner was cut off by the truncation is
    carried into the next pair (at worst the tail), so no source row or edit column is left out."""
    length = m.shape[0]
    carry_s: Span = ()
    carry_t: Span = ()
    for s, t in [((0,), (0,)), *groups]:
        s, t = carry_s + s, carry_t + t
        if s and t:
            _link(m, s, t)
            carry_s, carry_t = (), ()
        else:
            carry_s, carry_t = s, t
    _link_tail(m, carry_s + tuple(range(src.eos, length)), carry_t + tuple(range(tgt.eos, length)))
    mapped = m.sum(0) > 0
    identity = bool(torch.equal(m, torch.eye(length)))
    return Alignment(m, mapped, identity)


def replace_alignment(src: PromptTokens, tgt: PromptTokens) -> Alignment:
    """Word-swap mapper: words paired by index (the prompts must have the same word count); a word's
    core and its punctuation are paired piece by piece when both have the same number of pieces."""
    if len(src.words) != len(tgt.words):
        raise ValueError(
            f"word swap needs the same number of words: {len(src.words)} vs {len(tgt.words)} "
            f"({src.prompt!r} -> {tgt.prompt!r}); use refine"
        )
    groups: list[tuple[Span, Span]] = []
    for ws, wt in zip(src.words, tgt.words, strict=True):
        if len(ws.pieces) == len(wt.pieces):
            groups += [(ps.positions, pt.positions) for ps, pt in zip(ws.pieces, wt.pieces, strict=True)]
        else:
            groups.append((ws.positions, wt.positions))
    return _finish(torch.zeros(src.length, src.length), groups, src, tgt)


def global_align(a: list[int], b: list[int], match: int = 1, mismatch: int = -1, gap: int = 0) -> list[int | None]:
    """Needleman-Wunsch alignment of ``b`` against ``a``: for each b index, its a index or None.

    Ties are broken as the official ``seq_aligner.global_align``: the cell remembers the first of
    insertion (skip a ``b`` token), deletion (skip an ``a`` token) and the diagonal that reaches its
    score, and the traceback from the end follows what was remembered. With the default scores a
    substitution (-1) never beats delete+insert (0), so only identical tokens are paired.
    """
    n, k = len(a), len(b)
    score = [[j * gap for j in range(k + 1)]] + [[i * gap] + [0] * k for i in range(1, n + 1)]
    move = [[1] * (k + 1)] + [[2] + [0] * k for _ in range(n)]  # 1 insert, 2 delete, 3 diagonal
    for i in range(1, n + 1):
        for j in range(1, k + 1):
            left, up = score[i][j - 1] + gap, score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if a[i - 1] == b[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = 1 if best == left else 2 if best == up else 3
    out: list[int | None] = [None] * k
    i, j = n, k
    while i > 0 or j > 0:
        step = move[i][j]
        if step == 3:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == 1:
            j -= 1
        else:
            i -= 1
    return out


def refine_alignment(src: PromptTokens, tgt: PromptTokens) -> Alignment:
    """Refinement mapper: global alignment of the content tokens; unmatched edit tokens stay unmapped
    (they keep their own attention), unmatched source tokens give theirs to nobody, as the reference.

    The alignment runs on the untruncated prompts: a token whose partner lies past the other prompt's
    truncation joins the tail (folds into the last column, or takes the last source position's share).
    """
    a = [*src.ids[1 : src.eos], *src.overflow]
    b = [*tgt.ids[1 : tgt.eos], *tgt.overflow]
    m = torch.zeros(src.length, src.length)
    cut: list[tuple[Span, Span]] = []  # pairs with one side past its prompt's truncation
    for j, i in enumerate(global_align(a, b)):
        if i is None:
            continue
        k, jj = (i + 1,) if i + 1 < src.eos else (), (j + 1,) if j + 1 < tgt.eos else ()
        if k and jj:
            m[k[0], jj[0]] = 1.0
        elif k or jj:
            cut.append((k, jj))
    return _finish(m, cut, src, tgt)


def reweight_vector(tgt: PromptTokens, weights: dict[str, float]) -> torch.Tensor | None:
    """Per-position attention multiplier for the edit prompt (``None`` when nothing is reweighted)."""
    if not weights:
        return None
    w = torch.ones(tgt.length)
    for word, factor in weights.items():
        w[locate_word(tgt, word, "reweight")] = float(factor)
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
