"""SDEdit's draws and rendering (engines/sdedit.py): the source latent, the partial schedule, the images.

The loop is diffusers' img2img loop written against the loaded pipeline's own parts rather than a
`StableDiffusionImg2ImgPipeline` built from them, so that SD and SDXL share one path and every input is the
record's: the prompts go through the same `encode_prompts` and the latents through the same `decode` as
P2P's renders (SDXL's pooled and time conditioning included); the noise is drawn on the CPU from the
record's seed (device independent, as P2P's), not by the pipeline's `randn_tensor` on the device; a real
photograph is encoded to its posterior *mean* (the pipeline samples it, which would need a second stored
seed); and at strength 1 the start is pure noise, as the paper's t0 = 1 (img2img still mixes
sqrt(alphā) of the source in at its first timestep: ~0.07 at 50 steps, ~0.5 at 2 `leading` steps).

Schedule (diffusers' `get_timesteps`): `set_timesteps(steps)`, n = int(steps x strength) steps re-run,
the last n of the schedule (plus PNDM's warm-up evaluation); `set_begin_index` at the first of them and
`add_noise(source latent, noise, that timestep)`. n = 0 decodes the source latent as it is.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from editgen.engines.base import PairRejected, RenderedCandidate
from editgen.engines.record import CandidateRecord
from editgen.engines.sdedit_request import GENERATED, SDEditRequest
from editgen.filters.pairs.fidelity import image_pixels
from editgen.p2p.candidates import candidate_rng, encode_image, image_format_name, source_draw
from editgen.p2p.generate import (
    P2PPipeline,
    RenderRequest,
    decode,
    dtype_name,
    encode_prompts,
    make_scheduler,
    render,
)
from editgen.p2p.real import candidate_input, decode_image, pixels_sha256
from editgen.pipeline.settings.render import RenderConfig


@dataclass
class Source:
    """A candidate's source: its latent (1, C, h, w; float32, CPU) and its image as the shard stores it."""

    latent: torch.Tensor
    input_image: bytes


@dataclass
class SDEditResult:
    """What a render computed besides the images (tests and tools): the final latent, the UNet
    evaluations of the partial schedule and the timestep the noise was added at (None: no denoising)."""

    latents: torch.Tensor
    evals: int
    start_timestep: int | None
    source: Source


# ---- draws ---------------------------------------------------------------------------------------------
def draw_params(s: RenderConfig, pair_id: str, i: int, k: int) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Candidate `i`'s seed, its own parameters (strength and CFG scale, from this engine's RNG) and its
    generated source: the seed and scale P2P draws for its group's first candidate (`k` candidates share
    one source, as P2P's shared sources)."""
    seed, guidance = source_draw(pair_id, i, s)
    lead_seed, lead_guidance = source_draw(pair_id, i // k * k, s) if k > 1 else (seed, guidance)
    own = candidate_rng(f"{pair_id}\x00sdedit", i)
    strength = own.uniform(*s.sdedit.strength_range)
    scale = own.uniform(*s.sdedit.guidance_range)
    source = {"kind": GENERATED, "seed": lead_seed, "guidance": lead_guidance, "shared_by": k}
    return seed, {"guidance": scale, "strength": strength}, source


# ---- checks ----------------------------------------------------------------------------------------------
def _token_ids(tokenizer: Any, prompt: str) -> list[int]:
    length = int(getattr(tokenizer, "model_max_length", 77) or 77)
    length = length if length <= 10_000 else 77  # tokenizers without a limit report a huge sentinel
    return list(tokenizer(prompt, truncation=True, max_length=length)["input_ids"])


def check_request(p2p: P2PPipeline, req: SDEditRequest) -> None:
    """Sizes, steps and scheduler against the model; PairRejected when every text encoder sees the same
    tokens for both captions (an edit past the 77-token window: the candidate would only re-noise its source)."""
    if req.height % p2p.vae_scale or req.width % p2p.vae_scale:
        raise ValueError(f"height and width must be multiples of {p2p.vae_scale}, got {req.height}x{req.width}")
    if req.steps < 1:
        raise ValueError("steps must be >= 1")
    make_scheduler(req.scheduler, p2p.base_scheduler_config)
    tokenizers = [t for t in (p2p.pipe.tokenizer, getattr(p2p.pipe, "tokenizer_2", None)) if t is not None]
    if all(_token_ids(t, req.source_prompt) == _token_ids(t, req.edit_prompt) for t in tokenizers):
        raise PairRejected("render_edit_truncated", "the edited caption gives the text encoder the same tokens as "
                           "the caption (any difference lies past its token window): nothing to edit towards")


def check_model(p2p: P2PPipeline, record: CandidateRecord) -> None:
    if record.model.model != p2p.model:
        raise ValueError(f"record for model {record.model.model!r} given to a pipeline for {p2p.model!r}")
    if record.model.dtype != dtype_name(p2p.dtype):
        raise ValueError(f"record wants dtype {record.model.dtype}, pipeline runs {dtype_name(p2p.dtype)}")


def photograph(image: bytes | None, sha: str) -> Image.Image:
    """A real source's photograph from its bytes, checked against the record's pixel hash."""
    if image is None:
        raise ValueError("a real-source sdedit record regenerates only with its source image (image=...)")
    picture = decode_image(image)
    got = pixels_sha256(picture)
    if got != sha:
        raise ValueError(f"image pixels sha256 {got[:12]} are not the record's {sha[:12]}")
    return picture


# ---- sources ---------------------------------------------------------------------------------------------
def vae_encode(p2p: P2PPipeline, picture: Image.Image) -> torch.Tensor:
    """The photograph's latent (1, C, h, w): the VAE posterior mean, scaled as `decode` unscales it (SDXL's
    latents_mean/std where the VAE has them), in the VAE's own dtype (fp32 where SDXL's VAE is upcast)."""
    pipe = p2p.pipe
    vae, cfg = pipe.vae, pipe.vae.config
    x = pipe.image_processor.preprocess(picture).to(p2p.device, vae.dtype)
    with torch.inference_mode():
        mean = vae.encode(x).latent_dist.mean
    lm, ls = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if lm is not None and ls is not None:
        lm_t = torch.tensor(lm).view(1, -1, 1, 1).to(mean.device, mean.dtype)
        ls_t = torch.tensor(ls).view(1, -1, 1, 1).to(mean.device, mean.dtype)
        return (mean - lm_t) * cfg.scaling_factor / ls_t
    return mean * cfg.scaling_factor


def source_key(req: SDEditRequest) -> str:
    """Records with the same key share one source within a render call (a shared-source group)."""
    shape = [req.source_prompt, req.steps, req.scheduler, req.height, req.width, req.negative_prompt]
    return json.dumps([dict(req.source), shape if req.generated else [req.height, req.width]], sort_keys=True)


def prepare_source(p2p: P2PPipeline, req: SDEditRequest, picture: Image.Image | None, fmt: str,
                   quality: int) -> Source:
    """A generated source: P2P's generation path on the source caption alone (its seed and CFG scale); a
    real one: the photograph (its size must be the record's) VAE-encoded."""
    if req.generated:
        src = req.source
        request = RenderRequest(source=req.source_prompt, edits=[], seed=int(src["seed"]), steps=req.steps,
                                guidance=float(src["guidance"]), height=req.height, width=req.width,
                                scheduler=req.scheduler, negative_prompt=req.negative_prompt)
        res = render(p2p, [request])[0]
        return Source(res.latents[:1], encode_image(res.images[0], fmt, quality))
    if picture is None:
        raise ValueError("no photograph for this real-source record (the pair's image was not drawn)")
    if picture.size != (req.width, req.height):
        raise ValueError(f"photograph is {picture.size[0]}x{picture.size[1]}, the record says {req.width}x{req.height}")
    latent = vae_encode(p2p, picture).float().cpu()
    return Source(latent, candidate_input(image_pixels(picture, np.float32), fmt, quality))


# ---- the partial schedule --------------------------------------------------------------------------------
def denoise_partial(p2p: P2PPipeline, scheduler: Any, timesteps: torch.Tensor, latents: torch.Tensor,
                    embeds: torch.Tensor, added: dict[str, torch.Tensor] | None, guidance: float,
                    gen: torch.Generator) -> torch.Tensor:
    """Diffusers' loop (scale_model_input, UNet, CFG, scheduler.step) over the partial schedule."""
    cfg = guidance > 1.0
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {"eta": 0.0} if "eta" in params else {}
    if "generator" in params:
        kwargs["generator"] = gen  # a stochastic sampler's noise continues the record seed's CPU generator
    for t in timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        pred = p2p.pipe.unet(model_in, t, encoder_hidden_states=embeds, timestep_cond=None,
                             added_cond_kwargs=added, return_dict=False)[0]
        if cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance * (cond - uncond)
        latents = scheduler.step(pred, t, latents, **kwargs, return_dict=False)[0]
    return latents


def sdedit_latents(p2p: P2PPipeline, start: torch.Tensor, req: SDEditRequest) -> tuple[torch.Tensor, int, int | None]:
    """The source latent noised to the request's strength and denoised under the edited caption: (final
    latent, UNet evaluations, the timestep noised to). The noise is the 2nd draw of the record seed's CPU
    generator (the 1st is a generated source's start when the seeds agree: the two stay independent)."""
    scheduler = make_scheduler(req.scheduler, p2p.base_scheduler_config)
    scheduler.set_timesteps(req.steps, device=p2p.device)
    x0 = start.to(p2p.device, p2p.dtype)
    n = req.denoise_steps()
    if n == 0:
        return x0, 0, None
    begin = (req.steps - n) * scheduler.order
    timesteps = scheduler.timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    gen = torch.Generator("cpu").manual_seed(req.seed)
    torch.randn(tuple(x0.shape), generator=gen, dtype=torch.float32)
    eps = torch.randn(tuple(x0.shape), generator=gen, dtype=torch.float32).to(p2p.device, p2p.dtype)
    if begin == 0:  # strength 1: pure noise, the source is not read (module docstring)
        latents = eps * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(x0, eps, timesteps[:1])
    with torch.inference_mode():
        embeds, added = encode_prompts(p2p, [req.edit_prompt], req.negative_prompt, req.guidance > 1.0,
                                       req.height, req.width)
        latents = denoise_partial(p2p, scheduler, timesteps, latents, embeds, added, req.guidance, gen)
    return latents, len(timesteps), int(timesteps[0])


def render_records(p2p: P2PPipeline, records: Sequence[CandidateRecord], images: Mapping[str, Image.Image],
                   fmt: str = "png", quality: int = 95) -> list[RenderedCandidate]:
    """Render sdedit records (input order), one candidate per UNet batch (so a record alone re-renders
    the same bytes); records of one shared-source group reuse its source. `images`: pair key -> photograph."""
    sources: dict[str, Source] = {}
    out = []
    for rec in records:
        check_model(p2p, rec)
        req = SDEditRequest.of(rec)
        key = source_key(req)
        if key not in sources:
            sources[key] = prepare_source(p2p, req, images.get(str(rec.pair_id)), fmt, quality)
        src = sources[key]
        latents, evals, t0 = sdedit_latents(p2p, src.latent, req)
        with torch.inference_mode():
            image = decode(p2p, latents)[0]
        out.append(RenderedCandidate(
            record=rec, input_image=src.input_image, edited_image=encode_image(image, fmt, quality),
            image_format=image_format_name(fmt), result=SDEditResult(latents.float().cpu(), evals, t0, src),
        ))
    return out
