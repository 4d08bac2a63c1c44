"""Real-image inversion for Prompt-to-Prompt: DDIM inversion, Null-text Inversion, Negative-prompt Inversion.

A real photograph has no seed, so before P2P can edit it we need a starting latent ``x_T`` and, for
guided sampling, per-step unconditional embeddings under which the guided DDIM loop from ``x_T`` lands
back on the photograph's latent (docs/inversion.md has the math and the measured errors):

* ``ddim``: invert at guidance 1 with the source caption (the *pivot* ``x_0 .. x_T``); the plain ``""``
  embedding is the unconditional one. Exact only at guidance 1; CFG drifts off the pivot.
* ``null_text`` (Mokady et al. 2022): per step, Adam on the unconditional embedding so the guided step
  from the current latent lands on the pivot's next latent; the next step starts from that embedding.
* ``negative_prompt`` (Miyake et al. 2023): the source caption's embedding *is* the unconditional one,
  so with identical prompts CFG collapses to the w=1 conditional loop that the pivot inverts.

Everything here is deterministic (no sampling except DiffEdit's seeded CPU noise) and SD 1.x/2.x only
(SDXL's pooled and time conditioning would need their own unconditional counterparts). The sampling
loop (:func:`reconstruct`, :func:`denoise_step`) is self-contained on purpose: the render stage will
run the same step through generate's loop with :func:`step_embeddings` supplying the per-step context.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from editgen.filters.pairs.fidelity import psnr, ssim
from editgen.p2p.generate import P2PPipeline, make_scheduler
from editgen.pipeline.settings.render import METHODS, DiffEditConfig, InversionConfig


@dataclass
class Inversion:
    """A pivot trajectory and the unconditional embedding of each denoising step (timestep order)."""

    method: str
    trajectory: list[torch.Tensor]  # x_0 (the encoded image) .. x_T, each (1, C, h, w)
    uncond: list[torch.Tensor]  # one (1, L, D) per denoising step i (t = timesteps[i])
    inner_used: list[int] = field(default_factory=list)  # null_text: Adam steps actually taken per step
    losses: list[float] = field(default_factory=list)  # null_text: last inner loss per step

    @property
    def x_T(self) -> torch.Tensor:
        return self.trajectory[-1]


@dataclass(frozen=True)
class ReconstructionError:
    latent_mse: float
    psnr: float  # dB, images in [0, 1]
    ssim: float


@dataclass(frozen=True)
class InversionCost:
    """UNet work per pair, counted in batch rows (a CFG call on B prompts is 2B rows)."""

    forward_rows: int
    backward_rows: int  # null_text's gradient passes (each ~2x a forward)


# ---------------------------------------------------------------------------------------------- basics


def _require_sd(p2p: P2PPipeline) -> None:
    if p2p.is_sdxl:
        raise ValueError("inversion supports SD 1.x/2.x only (SDXL's pooled/time conditioning is not handled)")


def ddim_scheduler(p2p: P2PPipeline, steps: int) -> Any:
    """The model's DDIM scheduler at ``steps`` steps: the same object generate builds for ``ddim``."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    sched = make_scheduler("ddim", p2p.base_scheduler_config)
    sched.set_timesteps(steps, device=p2p.device)
    return sched


def text_embeddings(p2p: P2PPipeline, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP hidden states ``(B, 77, D)`` of ``prompts`` (``""`` gives the null-text embedding)."""
    _require_sd(p2p)
    with torch.no_grad():
        emb, _ = p2p.pipe.encode_prompt(list(prompts), p2p.device, 1, False)
    return emb


def _vae_dtype(p2p: P2PPipeline) -> torch.dtype:
    return next(p2p.pipe.vae.post_quant_conv.parameters()).dtype


def encode_image(p2p: P2PPipeline, image: Any) -> torch.Tensor:
    """VAE latent ``(B, 4, H/8, W/8)`` of a PIL image / array / tensor (as ``image_processor`` accepts).

    Uses the posterior *mean*, not a sample, so the same image always inverts to the same trajectory.
    """
    _require_sd(p2p)
    pipe = p2p.pipe
    x = pipe.image_processor.preprocess(image).to(p2p.device, _vae_dtype(p2p))
    with torch.no_grad():
        mean = pipe.vae.encode(x).latent_dist.mean
    return (mean * pipe.vae.config.scaling_factor).to(p2p.dtype)


def decode_latent(p2p: P2PPipeline, latent: torch.Tensor) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] (float) from latents, for pixel-space checks."""
    pipe = p2p.pipe
    with torch.no_grad():
        img = pipe.vae.decode(latent.to(_vae_dtype(p2p)) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (img / 2 + 0.5).clamp(0, 1)


def _eps(p2p: P2PPipeline, sched: Any, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """One UNet noise prediction (``x`` and ``emb`` have the same batch size)."""
    return p2p.pipe.unet(sched.scale_model_input(x, t), t, encoder_hidden_states=emb, return_dict=False)[0]


def _alphas(sched: Any, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar_t, alpha_bar_prev) exactly as ``DDIMScheduler.step`` picks them for step ``t``."""
    prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
    a_t = sched.alphas_cumprod[int(t)]
    a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
    return a_t, a_prev


def ddim_next(sched: Any, eps: torch.Tensor, t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """Inverse DDIM step: from the latent at ``t``'s previous level up to level ``t`` with noise ``eps``.

    x_t = sqrt(a_t) * x0_pred + sqrt(1 - a_t) * eps, x0_pred = (x_prev - sqrt(1 - a_prev) eps) / sqrt(a_prev);
    the exact algebraic inverse of ``DDIMScheduler.step`` (eta 0) for the same ``eps``. Coefficients are
    computed in the scheduler's own dtype (float32 alphas), as ``step`` does, so the two agree to rounding
    of the latent's dtype rather than of float32.
    """
    a_t, a_prev = (a.to(x_prev.device) for a in _alphas(sched, t))
    x0 = (x_prev - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps


# ------------------------------------------------------------------------------------------- inversion


def ddim_invert(p2p: P2PPipeline, latent: torch.Tensor, cond_emb: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The pivot ``[x_0, .., x_T]``: DDIM inversion at guidance 1 under the source caption.

    As the reference, the noise at each inverse step is predicted at the *target* timestep from the
    current latent (``eps(x_{t-1}, t)`` stands in for the unknown ``eps(x_t, t)``): that approximation is
    the only error source, which is why reconstruction at guidance 1 is close but not exact.
    """
    _require_sd(p2p)
    sched = ddim_scheduler(p2p, steps)
    x = latent.to(p2p.device, p2p.dtype)
    out = [x]
    with torch.no_grad():
        for t in reversed(sched.timesteps):
            x = ddim_next(sched, _eps(p2p, sched, x, t, cond_emb), t, x)
            out.append(x)
    return out


def _optimize_step(
    p2p: P2PPipeline, sched: Any, i: int, x: torch.Tensor, target: torch.Tensor, cond_emb: torch.Tensor,
    uncond: torch.Tensor, guidance: float, cfg: InversionConfig,
) -> tuple[torch.Tensor, int, float, torch.Tensor]:
    """Null-text step ``i``: Adam on ``uncond`` until the guided step from ``x`` lands on ``target``;
    returns (embedding, Adam steps taken, last loss, the latent the optimised guided step reaches)."""
    t = sched.timesteps[i]
    with torch.no_grad():
        eps_c = _eps(p2p, sched, x, t, cond_emb)
    emb = uncond.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=cfg.lr * (1.0 - cfg.lr_decay * i))
    tol = cfg.early_stop_epsilon + i * cfg.early_stop_growth
    used, loss_v = 0, math.inf
    with torch.enable_grad():
        for _ in range(cfg.inner_steps):
            eps_u = _eps(p2p, sched, x, t, emb)
            pred = eps_u + guidance * (eps_c - eps_u)
            loss = F.mse_loss(sched.step(pred, t, x, eta=0.0, return_dict=False)[0], target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()  # as the reference: step, then test the loss measured before it
            used, loss_v = used + 1, float(loss.detach())
            if loss_v < tol:
                break
    emb = emb.detach()
    with torch.no_grad():  # advance with the optimised embedding; eps_c is unchanged (same x, t, caption)
        eps_u = _eps(p2p, sched, x, t, emb)
        x_next = sched.step(eps_u + guidance * (eps_c - eps_u), t, x, eta=0.0, return_dict=False)[0]
    return emb, used, loss_v, x_next


def null_text_optimize(
    p2p: P2PPipeline, trajectory: list[torch.Tensor], cond_emb: torch.Tensor, uncond_emb: torch.Tensor,
    guidance: float, config: InversionConfig | None = None,
) -> Inversion:
    """Null-text Inversion: one optimised unconditional embedding per step (Mokady et al., Alg. 1).

    Step ``i`` starts from step ``i-1``'s result (the first from ``uncond_emb``, normally ``""``), and
    the next step starts from the latent the *optimised* guided step reaches, not from the pivot, so
    errors do not accumulate. The result is specific to ``guidance``: a new scale needs a new run.
    """
    _require_sd(p2p)
    cfg = config or InversionConfig(method="null_text")
    steps = len(trajectory) - 1
    if steps < 1:
        raise ValueError("trajectory needs at least x_0 and x_1")
    if 1.0 - cfg.lr_decay * (steps - 1) <= 0:
        raise ValueError(f"lr_decay {cfg.lr_decay} makes the learning rate non-positive within {steps} steps")
    sched = ddim_scheduler(p2p, steps)
    x, emb = trajectory[-1], uncond_emb.detach()
    inv = Inversion("null_text", list(trajectory), [])
    with deterministic_backward(p2p.device):
        for i in range(steps):
            emb, used, loss_v, x = _optimize_step(p2p, sched, i, x, trajectory[steps - i - 1], cond_emb, emb,
                                                  guidance, cfg)
            inv.uncond.append(emb)
            inv.inner_used.append(used)
            inv.losses.append(loss_v)
    return inv


@contextmanager
def deterministic_backward(device: torch.device) -> Iterator[None]:
    """One CPU thread for the optimisation: with several, the UNet's backward reduces in a
    scheduling-dependent order (measured: two runs at 2 threads gave different embeddings), and a record
    regenerates only if its inversion is recomputed bit for bit. On CUDA, cuBLAS/cuDNN backward is
    deterministic only under torch.use_deterministic_algorithms (docs/real_images.md)."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def negative_prompt_inversion(
    p2p: P2PPipeline, latent: torch.Tensor, cond_emb: torch.Tensor, steps: int
) -> Inversion:
    """Negative-prompt Inversion (Miyake et al.): the pivot plus ``uncond_i := cond`` at every step.

    No optimisation: the paper's observation is that null-text's optimum lies close to the source
    caption's embedding, and with it CFG on the source row is exactly the w=1 loop the pivot inverts.
    """
    traj = ddim_invert(p2p, latent, cond_emb, steps)
    return Inversion("negative_prompt", traj, [cond_emb] * steps)


def invert(
    p2p: P2PPipeline, latent: torch.Tensor, source: str, steps: int, guidance: float, config: InversionConfig
) -> Inversion:
    """Entry point for the render stage: invert ``latent`` under caption ``source`` with ``config.method``."""
    cond = text_embeddings(p2p, [source])
    if config.method == "negative_prompt":
        return negative_prompt_inversion(p2p, latent, cond, steps)
    traj = ddim_invert(p2p, latent, cond, steps)
    null = text_embeddings(p2p, [""])
    if config.method == "ddim":
        return Inversion("ddim", traj, [null] * steps)
    return null_text_optimize(p2p, traj, cond, null, guidance, config)


# -------------------------------------------------------------------------------------------- sampling


def step_embeddings(cond: torch.Tensor, uncond_i: torch.Tensor, guidance: float) -> torch.Tensor:
    """The UNet context of one step for a ``B``-row group: ``[uncond_i] * B + cond`` under CFG, else ``cond``.

    The one per-step unconditional embedding is shared by every row (source and edits), as null-text
    and negative-prompt inversion require; this is what generate's loop needs per step.
    """
    if guidance <= 1.0:
        return cond
    return torch.cat([uncond_i.expand(cond.shape[0], -1, -1), cond])


def denoise_step(
    p2p: P2PPipeline, sched: Any, latents: torch.Tensor, i: int, cond: torch.Tensor, uncond_i: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """One guided DDIM step (the diffusers loop's: batch, UNet, CFG, ``scheduler.step`` with eta 0)."""
    t = sched.timesteps[i]
    cfg = guidance > 1.0
    model_in = torch.cat([latents] * 2) if cfg else latents
    pred = _eps(p2p, sched, model_in, t, step_embeddings(cond, uncond_i, guidance))
    if cfg:
        u, c = pred.chunk(2)
        pred = u + guidance * (c - u)
    return sched.step(pred, t, latents, eta=0.0, return_dict=False)[0]


def reconstruct(
    p2p: P2PPipeline, x_T: torch.Tensor, cond: torch.Tensor, uncond: Sequence[torch.Tensor], guidance: float
) -> torch.Tensor:
    """Final latents ``(B, C, h, w)`` of the guided DDIM loop from ``x_T`` for prompts ``cond`` (B rows),
    step ``i`` using ``uncond[i]`` for all rows. With the source caption alone it is the reconstruction."""
    _require_sd(p2p)
    sched = ddim_scheduler(p2p, len(uncond))
    latents = x_T.to(p2p.device, p2p.dtype).expand(cond.shape[0], -1, -1, -1)
    with torch.no_grad():
        for i in range(len(uncond)):
            latents = denoise_step(p2p, sched, latents, i, cond, uncond[i], guidance)
    return latents


# ---------------------------------------------------------------------------------------------- errors


def reconstruction_error(
    p2p: P2PPipeline, latent: torch.Tensor, reference: torch.Tensor, image: torch.Tensor | None = None
) -> ReconstructionError:
    """Latent MSE of ``latent`` vs ``reference`` and PSNR/SSIM of its decode vs ``image`` ((B, 3, H, W) in
    [0, 1]; default: the decode of ``reference``, which isolates the inversion from the VAE's own loss)."""
    mse = float(torch.mean((latent.double() - reference.double()) ** 2))
    ref_img = decode_latent(p2p, reference) if image is None else image.to(p2p.device)
    rec_img = decode_latent(p2p, latent)
    return ReconstructionError(mse, psnr(rec_img, ref_img), ssim(rec_img, ref_img))


# ------------------------------------------------------------------------------------------------ mask


def diffedit_mask(
    p2p: P2PPipeline, latent: torch.Tensor, src_emb: torch.Tensor, dst_emb: torch.Tensor, n_draws: int = 10,
    strength: float = 0.5, threshold: float = 0.5, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffEdit's mask: where the two captions predict different noise. Returns ``(mask, map)``, both
    ``(h, w)`` on the latent grid (LocalBlend's mask layout); ``mask = map > threshold``.

    ``latent`` (1, C, h, w) is noised to ``t = strength * (T_train - 1)`` with ``n_draws`` seeded CPU
    draws; ``map`` is ``|eps_dst - eps_src|`` averaged over draws and channels, divided by its maximum.
    No CFG: with a shared unconditional branch CFG only scales the difference by ``w``, which the
    normalisation removes. Identical captions give an all-zero map (not 0/0).
    """
    _require_sd(p2p)
    sched = make_scheduler("ddim", p2p.base_scheduler_config)
    t = torch.tensor(int(strength * (sched.config.num_train_timesteps - 1)), device=p2p.device)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((n_draws, *latent.shape[1:]), generator=gen, dtype=torch.float32)
    x = sched.add_noise(latent.expand(n_draws, -1, -1, -1), noise.to(p2p.device, latent.dtype), t)
    emb = torch.cat([src_emb.expand(n_draws, -1, -1), dst_emb.expand(n_draws, -1, -1)])
    with torch.no_grad():
        eps_src, eps_dst = _eps(p2p, sched, torch.cat([x, x]), t, emb).chunk(2)
    diff = (eps_dst - eps_src).abs().mean(dim=(0, 1)).double()
    peak = diff.max()
    heat = diff / peak if peak > 0 else torch.zeros_like(diff)
    return heat > threshold, heat


# ------------------------------------------------------------------------------------------------ cost


def inversion_cost(
    method: str, steps: int, inner_steps: int = 10, inner_used: Sequence[int] | None = None, diffedit_draws: int = 0
) -> InversionCost:
    """UNet rows spent inverting one source image (the P2P render itself is extra and method-independent).

    ``ddim`` / ``negative_prompt``: ``steps`` (the pivot). ``null_text``: pivot + per step one conditional
    prediction, ``k_i`` gradient steps and one advance, so ``steps * (3 + k)`` at most (``k_i = inner_steps``);
    pass ``inner_used`` for the exact count after early stopping. DiffEdit adds ``2 * draws``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; expected one of {METHODS}")
    extra = 2 * diffedit_draws
    if method != "null_text":
        return InversionCost(steps + extra, 0)
    ks = list(inner_used) if inner_used is not None else [inner_steps] * steps
    if len(ks) != steps:
        raise ValueError(f"inner_used has {len(ks)} entries for {steps} steps")
    return InversionCost(steps + sum(2 + k for k in ks) + extra, sum(ks))


__all__ = [
    "METHODS", "DiffEditConfig", "Inversion", "InversionConfig", "InversionCost", "ReconstructionError",
    "ddim_invert", "ddim_next", "ddim_scheduler", "decode_latent", "denoise_step", "diffedit_mask",
    "encode_image", "inversion_cost", "invert", "negative_prompt_inversion", "null_text_optimize", "psnr",
    "reconstruct", "reconstruction_error", "ssim", "step_embeddings", "text_embeddings",
]
