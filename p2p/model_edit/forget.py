"""Forget-Me-Not attention re-steering (Zhang et al., 2023): our implementation, see docs/model_edits.md.

The model first draws a few images of the concept (seeded, few sampler steps; the final latents are used
directly, no decode/encode round trip). Then, for ``steps`` Adam steps, one of those latents is noised at a
random timestep and the UNet is run on the concept prompt with :class:`ForgetProcessor` on every
cross-attention layer: it computes the attention probabilities explicitly (``processors.attention_probs``) from
float32 master copies of the layer's ``to_k`` / ``to_v`` weights, so the loss -- the squared L2 norm of the
probabilities on the concept's tokens, averaged over layers, heads and pixels -- has gradients for those
masters only. Only K/V change (like the closed-form edits, so the same checksum, folder and reapply paths
hold) instead of a LoRA: a rank-r adapter saves nothing at this size and would add a merge step to every
consumer. Masters keep Adam in float32 on a float16 model.

Bit reproducibility: every random draw comes from seeded CPU generators, the optimisation runs with a fixed
thread count and ``torch.use_deterministic_algorithms`` (both restored afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from editgen.p2p.generate import RenderRequest, encode_prompts, make_scheduler, render
from editgen.p2p.model_edit.targets import embed
from editgen.p2p.processors import attention_probs, split_heads
from editgen.p2p.seq_align import tokenize
from editgen.pipeline.settings.model_edits import ForgetEdit

CHECK_SEED = 7919  # offset of the before/after check's timesteps and noise from the training draws


@dataclass
class Capture:
    """What the cross-attention layers saw in one UNet call: the loss terms and the mean mass per token."""

    positions: list[int]
    losses: list[torch.Tensor] = field(default_factory=list)
    mass: list[torch.Tensor] = field(default_factory=list)  # per layer, (L,) mean probability per token


class ForgetProcessor:
    """Cross-attention with explicit probabilities, K/V from ``weights`` (float32 masters) if given.

    Mirrors diffusers' ``AttnProcessor2_0`` for the layouts SD and SDXL cross-attention use."""

    def __init__(self, capture: Capture, weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.capture, self.weights = capture, weights

    def _kv(self, attn: Any, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weights is None:
            return attn.to_k(context), attn.to_v(context)
        wk, wv = self.weights
        return (F.linear(context, wk.to(context.dtype), attn.to_k.bias),
                F.linear(context, wv.to(context.dtype), attn.to_v.bias))

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.to_q(hidden_states)
        key, value = self._kv(attn, context)
        probs = attention_probs(attn, query, key, None)  # (B, H, N, L) float32; SD/SDXL pass no cross mask
        self.capture.losses.append(probs[..., self.capture.positions].pow(2).sum(-1).mean())
        self.capture.mass.append(probs.detach().mean(dim=(0, 1, 2)))
        out = (probs.to(value.dtype) @ split_heads(value, attn.heads)).transpose(1, 2).flatten(2)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def concept_positions(tokenizer: Any, concept: str) -> list[int]:
    """Token positions of the concept prompt's content (BOS and EOS excluded)."""
    tok = tokenize(tokenizer, concept)
    if not concept.strip() or tok.eos < 2:
        raise ValueError(f"forget concept {concept!r} has no tokens")
    if tok.truncated:
        raise ValueError(f"forget concept {concept!r} is longer than the text encoder's {tok.length} tokens")
    return list(range(1, tok.eos))


def cross_layers(unet: Any) -> Iterator[tuple[str, Any]]:
    unet = getattr(unet, "_orig_mod", unet)
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            yield name, module


@contextmanager
def capturing(unet: Any, capture: Capture,
              masters: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> Iterator[Capture]:
    """:class:`ForgetProcessor` on every cross-attention layer for the duration, then the originals back."""
    original = unet.attn_processors
    procs = dict(original)
    for name, _ in cross_layers(unet):
        procs[f"{name}.processor"] = ForgetProcessor(capture, None if masters is None else masters[name])
    unet.set_attn_processor(procs)
    try:
        yield capture
    finally:
        unet.set_attn_processor(original)


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the duration (restored afterwards)."""
    n, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        torch.use_deterministic_algorithms(det, warn_only=warn)


def image_side(p2p: Any, edit: ForgetEdit) -> int:
    return edit.size or int(p2p.pipe.unet.config.sample_size) * p2p.vae_scale


def concept_latents(p2p: Any, edit: ForgetEdit, seeds: list[int]) -> torch.Tensor:
    """Final latents (n, C, h, w) of the model's own images of the concept, one per seed."""
    side = image_side(p2p, edit)
    reqs = [RenderRequest(source=edit.concept, seed=s, steps=edit.image_steps, guidance=7.5, height=side,
                          width=side, scheduler="ddim") for s in seeds]
    return torch.cat([r.latents for r in render(p2p, reqs)]).clone()


@dataclass
class Batch:
    """Noised latents, their timesteps and the conditioning for one UNet call."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None


def noised(p2p: Any, edit: ForgetEdit, clean: torch.Tensor, gen: torch.Generator) -> Batch:
    """``clean`` noised at random timesteps (drawn from ``gen``), with the concept's conditioning."""
    sched = make_scheduler("ddim", p2p.base_scheduler_config)
    t = torch.randint(0, int(sched.config.num_train_timesteps), (clean.shape[0],), generator=gen)
    noise = torch.randn(clean.shape, generator=gen, dtype=torch.float32)
    x = sched.add_noise(clean.float(), noise, t)
    side = image_side(p2p, edit)
    with torch.no_grad():
        embeds, added = encode_prompts(p2p, [edit.concept] * clean.shape[0], None, False, side, side)
    return Batch(x.to(p2p.device, p2p.dtype), t.to(p2p.device), embeds, added)


def unet_pass(p2p: Any, batch: Batch) -> None:
    p2p.pipe.unet(batch.latents, batch.timesteps, encoder_hidden_states=batch.embeds,
                  added_cond_kwargs=batch.added, return_dict=False)


def attention_mass(p2p: Any, edit: ForgetEdit, batch: Batch) -> torch.Tensor:
    """(L,) mean cross-attention probability per token position, over layers, heads, pixels and rows."""
    capture = Capture(concept_positions(p2p.tokenizer, edit.concept))
    with torch.no_grad(), capturing(p2p.pipe.unet, capture):
        unet_pass(p2p, batch)
    return torch.stack(capture.mass).mean(0).cpu()


@dataclass
class ForgetResult:
    """Concept tokens' attention mass (summed over them; mean over layers, heads, pixels) before and after,
    on the concept latents at timesteps the optimisation did not draw."""

    concept: str
    mass_before: float
    mass_after: float
    seconds: float

    def describe(self) -> dict[str, object]:
        return {"concept": self.concept, "mass_before": round(self.mass_before, 6),
                "mass_after": round(self.mass_after, 6), "seconds": round(self.seconds, 3)}


def _masters(p2p: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: tuple(getattr(m, part).weight.detach().float().clone().requires_grad_(True)  # type: ignore[misc]
                        for part in ("to_k", "to_v")) for name, m in cross_layers(p2p.pipe.unet)}


def keep_rows(p2p: Any, edit: ForgetEdit, preserve: list[str]) -> torch.Tensor:
    """(n, d) float32 conditioning rows whose projections should not move: the concept prompt's other
    positions (BOS, EOS, padding) and every preserved prompt's BOS..EOS."""
    positions = set(concept_positions(p2p.tokenizer, edit.concept))
    rows = embed(p2p, edit.concept)
    kept = [rows[[i for i in range(rows.shape[0]) if i not in positions]]]
    kept += [embed(p2p, prompt)[: tokenize(p2p.tokenizer, prompt).eos + 1] for prompt in preserve]
    return torch.cat(kept).float().to(p2p.device)


def _drift(masters: dict[str, tuple[torch.Tensor, torch.Tensor]], olds: dict[str, torch.Tensor],
           keep: torch.Tensor) -> torch.Tensor:
    """Mean over projections of ‖(W − W_old) Cᵀ‖² / ‖W_old Cᵀ‖² for the kept rows C."""
    terms = []
    for name, pair in masters.items():
        for part, w in zip(("to_k", "to_v"), pair, strict=True):
            old = olds[f"{name}.{part}"]
            terms.append(((w - old) @ keep.T).pow(2).sum() / (old @ keep.T).pow(2).sum())
    return torch.stack(terms).mean()


def _optimise(p2p: Any, edit: ForgetEdit, clean: torch.Tensor, gen: torch.Generator,
              masters: dict[str, tuple[torch.Tensor, torch.Tensor]], keep: torch.Tensor) -> None:
    """``edit.steps`` Adam steps, one concept latent per step (cycling), each at a random timestep. The loss
    is the concept tokens' attention (relative to its first value) plus ``edit.keep`` times the drift."""
    opt = torch.optim.Adam([w for pair in masters.values() for w in pair], lr=edit.lr)
    olds = {f"{name}.{part}": w.detach().clone() for name, pair in masters.items()
            for part, w in zip(("to_k", "to_v"), pair, strict=True)}
    positions = concept_positions(p2p.tokenizer, edit.concept)
    first = None
    for step in range(edit.steps):
        i = step % clean.shape[0]
        batch = noised(p2p, edit, clean[i: i + 1], gen)
        capture = Capture(positions)
        with torch.enable_grad(), capturing(p2p.pipe.unet, capture, masters):
            unet_pass(p2p, batch)
            attn = torch.stack(capture.losses).mean()
            first = float(attn.detach()) if first is None else first
            loss = attn / max(first, 1e-12)
            if edit.keep > 0:
                loss = loss + edit.keep * _drift(masters, olds, keep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()


def forget(p2p: Any, edit: ForgetEdit, preserve: list[str] | None = None) -> ForgetResult:
    """Apply one forget edit in place to the loaded pipeline's cross-attention K/V weights."""
    t0 = time.perf_counter()
    positions = concept_positions(p2p.tokenizer, edit.concept)  # fail before drawing anything
    with deterministic(edit.threads):
        clean = concept_latents(p2p, edit, [edit.seed + i for i in range(edit.images)])
        check = noised(p2p, edit, clean, torch.Generator("cpu").manual_seed(edit.seed + CHECK_SEED))
        before = float(attention_mass(p2p, edit, check)[positions].sum())
        masters = _masters(p2p)
        keep = keep_rows(p2p, edit, list(preserve or []))
        _optimise(p2p, edit, clean, torch.Generator("cpu").manual_seed(edit.seed), masters, keep)
        with torch.no_grad():
            for name, m in cross_layers(p2p.pipe.unet):
                for part, w in zip(("to_k", "to_v"), masters[name], strict=True):
                    getattr(m, part).weight.copy_(w.detach().to(getattr(m, part).weight.dtype))
        after = float(attention_mass(p2p, edit, check)[positions].sum())
    return ForgetResult(edit.concept, before, after, time.perf_counter() - t0)
