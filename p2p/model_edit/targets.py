"""Edit -> (keys, targets): text-encoder embeddings of the tokens to move and of what they should become.

Every edit becomes rows ``(c_i, c*_i)``: ``c_i`` the embedding the UNet sees for a token of the edited
prompt, ``c*_i`` the embedding whose projections it should take (``v*_i = W_old c*_i``; a mix of tokens
is a mix of embeddings because the projections are linear). Tokens are aligned with the project's
refinement alignment (``seq_align.refine_alignment``): BOS, the matched content tokens and EOS. TIME
drops destination-only tokens; erase and debias also pair unmatched source runs with the unmatched
destination run between the same neighbours (spread evenly), or with the next matched token (usually
EOS) when that run is empty. Padding positions are not constrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from editgen.p2p.seq_align import PromptTokens, refine_alignment, tokenize
from editgen.pipeline.settings.model_edits import DebiasEdit, EditSet, EraseEdit, TimeEdit


class EditError(ValueError):
    """A prompt that cannot be used or an edit that cannot be aligned: one line, exit 2."""


@dataclass
class Rows:
    """Stacked constraints: ``keys[i]`` should project like ``targets[i]``; both (n, d) float64."""

    keys: torch.Tensor
    targets: torch.Tensor


def _tokens(tokenizer: Any, prompt: str, what: str) -> PromptTokens:
    if not prompt.strip() and what != "anchor":
        raise EditError(f"{what} prompt is empty")
    tok = tokenize(tokenizer, prompt)
    if tok.truncated:
        raise EditError(f"{what} prompt {prompt!r} is longer than the text encoder's {tok.length} tokens")
    return tok


def _words(tok: PromptTokens, positions: list[int]) -> str:
    names = [w.text for w in tok.words if set(w.positions) & set(positions)]
    return ", ".join(repr(n) for n in names) or repr(positions)


def _fill_gaps(m: torch.Tensor, src: PromptTokens, tgt: PromptTokens) -> None:
    """Unmatched source runs take the unmatched destination run between the same matched neighbours."""
    matched = [k for k in range(src.eos + 1) if m[k].sum() > 0]
    partner = {k: int(m[k].argmax()) for k in matched}
    for left, right in zip(matched, matched[1:], strict=False):
        run = list(range(left + 1, right))
        if not run:
            continue
        gap = [j for j in range(partner[left] + 1, partner[right]) if m[:, j].sum() == 0] or [partner[right]]
        for k in run:
            m[k, gap] = 1.0 / len(gap)


def align(src: PromptTokens, tgt: PromptTokens, strict: bool) -> torch.Tensor:
    """(src.eos + 1, L) weights: row k says which destination tokens source token k should become."""
    m = refine_alignment(src, tgt).mapper[: src.eos + 1].clone().double()
    m[src.eos] = 0
    m[src.eos, tgt.eos] = 1.0  # EOS <-> EOS (the tail rule may spread it when lengths differ)
    missing = [k for k in range(1, src.eos) if m[k].sum() == 0]
    if missing and strict:
        raise EditError(
            f"cannot align {src.prompt!r} with {tgt.prompt!r}: {_words(src, missing)} missing from the "
            "destination (TIME needs the destination to contain the source; use erase to replace a concept)"
        )
    _fill_gaps(m, src, tgt)
    return m


def embed(p2p: Any, prompt: str) -> torch.Tensor:
    """(77, d) float64: the conditioning the UNet's cross-attention sees (SDXL: both encoders, concatenated)."""
    pipe = p2p.pipe
    with torch.no_grad():
        if p2p.is_sdxl:
            emb = pipe.encode_prompt(prompt=prompt, device=p2p.device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)[0]
        else:
            emb = pipe.encode_prompt(prompt, p2p.device, 1, False)[0]
    return emb[0].detach().to("cpu", torch.float64)


def _edit_rows(p2p: Any, edit: TimeEdit | EraseEdit | DebiasEdit) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = p2p.tokenizer
    if isinstance(edit, TimeEdit):
        src = _tokens(tokenizer, edit.source, "source")
        if edit.source.strip() == edit.destination.strip():
            raise EditError(f"TIME edit {edit.source!r} => {edit.destination!r} changes nothing")
        pairs = [(_tokens(tokenizer, edit.destination, "destination"), edit.destination, 1.0)]
    elif isinstance(edit, EraseEdit):
        src = _tokens(tokenizer, edit.concept, "concept")
        pairs = [(_tokens(tokenizer, edit.anchor, "anchor"), edit.anchor, 1.0)]
    else:
        src = _tokens(tokenizer, edit.concept, "concept")
        pairs = [(_tokens(tokenizer, a, "attribute"), a, w)
                 for a, w in zip(edit.attributes, edit.shares(), strict=True)]
    c = embed(p2p, src.prompt)[: src.eos + 1]
    target = torch.zeros_like(c)
    for tok, prompt, weight in pairs:
        target += weight * align(src, tok, strict=isinstance(edit, TimeEdit)) @ embed(p2p, prompt)
    return c, target


def build_rows(p2p: Any, edits: EditSet) -> Rows:
    """All constraints of an edit set: each edit's rows plus ``c_j -> c_j`` for every preserved prompt."""
    keys, targets = [], []
    for edit in edits.closed_form():
        c, t = _edit_rows(p2p, edit)
        keys.append(c)
        targets.append(t)
    for prompt in edits.preserve:
        tok = _tokens(p2p.tokenizer, prompt, "preserved")
        c = embed(p2p, prompt)[: tok.eos + 1]
        keys.append(c)
        targets.append(c)
    if not keys:
        raise EditError("no edits given")
    return Rows(torch.cat(keys), torch.cat(targets))
