"""An independent explicit-probability Prompt-to-Prompt / InstructPix2Pix reference for the tests.

Written from the official semantics (google/prompt-to-prompt's notebooks, ``ptp_utils`` and
``seq_aligner``; InstructPix2Pix's ``generate_img_dataset.py``) plus editgen's documented deviations
(docs/p2p.md), and sharing no code with ``p2p/``: its own word index, mapper, alignment, windows,
controller and LocalBlend, on diffusers' own attention arithmetic (``get_attention_scores``) and
its own denoising loop. It handles one edit row per render, ASCII prompts and the tiny SD 1.x model.

Rules, in the reference's own terms:

* alpha table of ``N + 1`` rows; cross edit active at step ``t`` where ``int(s (N+1)) <= t < int(f (N+1))``;
  self-attention copied where ``int(s N) <= t < int(f N)`` on layers of at most 32x32 queries.
* replace: ``base @ M``; refine: ``(base @ M) * m + edit * (1 - m)``; reweight multiplies that by the
  equalizer; edited = ``alpha * that + (1 - alpha) * edit`` (outside the window nothing changes).
* ip2p: the self-attention probabilities of both CFG halves' source rows replace the edit rows' for
  steps ``i`` with ``p > i / (N - 1)``; cross-attention untouched.
* LocalBlend: post-edit conditional cross maps of the chosen layers summed over steps, averaged over
  all their heads, max-pooled 3x3, nearest-upsampled, max-normalised, thresholded, source mask OR
  edit mask, ``x = x_src + mask * (x - x_src)`` from step ``int(start N)`` on.
* mapper tail: edit column ``j`` past its EOS takes source ``min(j - shift, 76)``, source row ``k`` past
  its EOS goes to ``min(k + shift, 76)``; rows are normalised so each sums to 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

L = 77
PIECE = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]+")


# ---- token index -------------------------------------------------------------------------------
def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def word_pieces(tokenizer, prompt: str) -> list[list[list[int]]]:
    """Per whitespace word, per piece (letters/digits run or punctuation run), its 1-based positions."""
    out, pos = [], 1
    for word in prompt.split():
        pieces = []
        for piece in PIECE.findall(word):
            n = n_tokens(tokenizer, piece)
            pieces.append(list(range(pos, pos + n)))
            pos += n
        out.append(pieces)
    assert pos - 1 == n_tokens(tokenizer, prompt), "reference index assumes piecewise == whole tokenisation"
    assert pos < L - 1, "reference handles untruncated prompts only"
    return out


def eos_of(tokenizer, prompt: str) -> int:
    return 1 + n_tokens(tokenizer, prompt)


def positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions of a word's letter/digit pieces (case-insensitive, punctuation ignored), every occurrence."""
    found = []
    for text, pieces in zip(prompt.split(), word_pieces(tokenizer, prompt), strict=True):
        core = [(t, p) for t, p in zip(PIECE.findall(text), pieces, strict=True) if t[0].isalnum()]
        if "".join(t for t, _ in core).lower() == word.lower():
            found += [q for _, p in core for q in p]
    return found


# ---- mappers -----------------------------------------------------------------------------------
def _tail(link: torch.Tensor, es: int, et: int) -> None:
    shift = et - es
    for k in range(es, L):
        link[k, min(k + shift, L - 1)] = 1.0
    for j in range(et, L):
        link[min(j - shift, L - 1), j] = 1.0


def _normalised(link: torch.Tensor) -> torch.Tensor:
    rows = link.sum(1, keepdim=True)
    return torch.where(rows > 0, link / rows.clamp_min(1.0), link)


def replace_mapper(tokenizer, src: str, tgt: str) -> torch.Tensor:
    link = torch.zeros(L, L)
    link[0, 0] = 1.0
    for a, b in zip(word_pieces(tokenizer, src), word_pieces(tokenizer, tgt), strict=True):
        pairs = list(zip(a, b, strict=True)) if len(a) == len(b) else [(sum(a, []), sum(b, []))]
        for s, t in pairs:
            if len(s) == len(t):
                link[s, t] = 1.0
            else:
                link[np.ix_(s, t)] = 1.0
    _tail(link, eos_of(tokenizer, src), eos_of(tokenizer, tgt))
    return _normalised(link)


def needleman_wunsch(x: list[int], y: list[int]) -> list[int]:
    """For each y index its x index or -1 (official scores and tie order: left, up, diagonal)."""
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int64)
    trace = np.zeros_like(score)
    trace[0, 1:], trace[1:, 0] = 1, 2
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i, j] = max(left, up, diag)
            trace[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    out = [-1] * len(y)
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        if trace[i, j] == 3:
            i, j = i - 1, j - 1
            out[j] = i
        elif trace[i, j] == 1:
            j -= 1
        else:
            i -= 1
    return out


def refine_mapper(tokenizer, src: str, tgt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, m): m[j] = 1 where edit token j has a source (new tokens keep their own attention)."""
    x, y = tokenizer(src)["input_ids"], tokenizer(tgt)["input_ids"]  # BOS .. EOS
    link = torch.zeros(L, L)
    for j, i in enumerate(needleman_wunsch(x, y)):
        if i >= 0:
            link[i, j] = 1.0
    _tail(link, len(x), len(y))  # the padding after each EOS (EOS itself is aligned above)
    mapper = _normalised(link)
    return mapper, (mapper.sum(0) > 0).float()


# ---- edits -------------------------------------------------------------------------------------
@dataclass
class RefEdit:
    prompt: str
    mode: str  # replace | refine | reweight | ip2p
    cross: float = 0.8
    self_: float = 0.4
    reweight: dict[str, float] = field(default_factory=dict)
    blend_words: tuple[str, ...] = ()
    blend_threshold: float = 0.3
    blend_start: float = 0.2
    blend_downscale: int = 4


@dataclass
class Controller:
    """The reference's per-render state; ``__call__`` edits ``(B*H, N, K)`` probabilities in place."""

    edit: RefEdit
    steps: int
    heads: int
    mapper: torch.Tensor | None = None
    mapped: torch.Tensor | None = None
    alpha: torch.Tensor | None = None  # (N + 1, L)
    eq: torch.Tensor | None = None
    blend_tokens: int = 0
    blend_alpha: torch.Tensor | None = None  # (2, L) source / edit words
    store: list[torch.Tensor] = field(default_factory=list)  # per blend layer, summed over steps
    layer: int = 0
    step: int = 0

    def _self_active(self, n: int) -> tuple[bool, bool]:
        """(copy in the cond half, copy in the uncond half too)."""
        if self.edit.mode == "ip2p":
            ratio = self.step / (self.steps - 1) if self.steps > 1 else 0.0
            on = self.edit.self_ > ratio
            return on, on
        on = self.step < int(self.edit.self_ * self.steps) and n <= 32**2
        return on, False

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        p = probs.view(4, self.heads, *probs.shape[1:])  # uncond src, uncond edit, cond src, cond edit
        if not is_cross:
            cond, uncond = self._self_active(p.shape[2])
            if cond:
                p[3] = p[2]
            if uncond:
                p[1] = p[0]
            return probs
        if self.edit.mode != "ip2p":
            base, edit = p[2], p[3]
            mixed = base @ self.mapper
            if self.mapped is not None:
                mixed = mixed * self.mapped + edit * (1 - self.mapped)
            if self.eq is not None:
                mixed = mixed * self.eq
            a = self.alpha[self.step]
            p[3] = a * mixed + (1 - a) * edit
        if self.blend_alpha is not None and p.shape[2] == self.blend_tokens:
            maps = p[2:].clone()  # post-edit cond maps, as the reference store holds them
            if self.layer < len(self.store):
                self.store[self.layer] = self.store[self.layer] + maps
            else:
                self.store.append(maps)
            self.layer += 1
        return probs

    def blend(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        side = int(self.blend_tokens**0.5)
        maps = torch.cat([m.reshape(2, self.heads, side, side, L) for m in self.store], dim=1)
        maps = (maps * self.blend_alpha[:, None, None, None, :]).sum(-1).mean(1, keepdim=True)
        mask = F.max_pool2d(maps, (3, 3), (1, 1), padding=(1, 1))
        mask = F.interpolate(mask, size=hw)
        mask = mask / mask.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
        mask = mask.gt(self.edit.blend_threshold)
        mask = (mask[:1] | mask[1:]).float()
        return torch.cat([x[:1], x[:1] + mask[0] * (x[1:] - x[:1])]), mask[0, 0] > 0


def alpha_table(edit: RefEdit, steps: int) -> torch.Tensor:
    table = torch.zeros(steps + 1, L)
    table[: int(edit.cross * (steps + 1))] = 1.0
    return table


class RefProcessor:
    """The official ``register_attention_control`` forward on diffusers' attention helpers."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = self.ctl(attn.get_attention_scores(q, k, None), is_cross)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def _controller(pipe, source: str, edit: RefEdit, steps: int, latent: int) -> Controller:
    tok = pipe.tokenizer
    heads = next(m.heads for m in pipe.unet.modules() if hasattr(m, "heads"))
    ctl = Controller(edit, steps, heads)
    if edit.mode == "refine":
        ctl.mapper, ctl.mapped = refine_mapper(tok, source, edit.prompt)
    elif edit.mode in ("replace", "reweight"):
        ctl.mapper = replace_mapper(tok, source, edit.prompt)
    ctl.alpha = alpha_table(edit, steps)
    if edit.reweight:
        ctl.eq = torch.ones(L)
        for word, factor in edit.reweight.items():
            ctl.eq[positions(tok, edit.prompt, word)] = factor
    if edit.blend_words:
        ctl.blend_tokens = (latent // edit.blend_downscale) ** 2
        ctl.blend_alpha = torch.zeros(2, L)
        for row, prompt in enumerate((source, edit.prompt)):
            for word in edit.blend_words:
                ctl.blend_alpha[row, positions(tok, prompt, word)] = 1.0
    return ctl


@torch.no_grad()
def render(pipe, source: str, edit: RefEdit, *, seed: int, steps: int, size: int, guidance: float = 7.5):
    """Final latents ``(2, 4, h, w)`` of [source, edit] and the last LocalBlend mask (or None)."""
    latent = size // 8
    ctl = _controller(pipe, source, edit, steps, latent)
    gen = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((1, 4, latent, latent), generator=gen).expand(2, -1, -1, -1)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    pos, neg = pipe.encode_prompt([source, edit.prompt], torch.device("cpu"), 1, True, None)
    context = torch.cat([neg, pos])
    original = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(RefProcessor(ctl))
    mask = None
    try:
        x = x * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            ctl.step, ctl.layer = i, 0
            noise = pipe.unet(sched.scale_model_input(torch.cat([x] * 2), t), t, encoder_hidden_states=context).sample
            uncond, cond = noise.chunk(2)
            x = sched.step(uncond + guidance * (cond - uncond), t, x, eta=0.0).prev_sample
            if ctl.blend_alpha is not None and i >= int(edit.blend_start * steps):
                x, mask = ctl.blend(x, (latent, latent))
    finally:
        pipe.unet.set_attn_processor(original)
    return x, mask
