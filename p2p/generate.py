"""Loading diffusers pipelines and running the Prompt-to-Prompt denoising loop (SD 1.x/2.x and SDXL).

The loop reproduces the diffusers pipelines' own loop step for step (prompt encoding, latent scaling,
``scale_model_input``, UNet call, CFG, ``scheduler.step``, VAE decode), so a source row is a plain
generation; the P2P edits live entirely in the attention processors installed for the call.

Batching: a :class:`RenderRequest` is one *group* -- a source prompt plus its edited prompts, all
starting from the same noise (drawn on CPU from the request's seed, so it is device independent).
Several requests can share one UNet batch when they agree on size, steps, scheduler, CFG on/off and
negative prompt; each keeps its own seed, guidance and controls. Stochastic samplers draw one noise
per group per step, shared by the group's rows.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from editgen.p2p.controls import EditControl, compile_edit
from editgen.p2p.models import refuse_guidance_embedding
from editgen.p2p.processors import (
    EditRow,
    ExplicitP2PProcessor,
    FusedP2PProcessor,
    P2PController,
    attention_downscales,
)
from editgen.p2p.seq_align import tokenize
from editgen.p2p.word_maps import GroupMaps, MapRequest, WordMaps, build_recorder, regions

# name -> (diffusers class, config overrides); built from the loaded model's scheduler config.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    # Few-step generators (docs/fewstep.md): LCM (an LCM-LoRA fused into the model) and SD-Turbo /
    # SDXL-Turbo's Euler ancestral sampler on trailing timesteps; P2P windows use the few-step rule.
    "lcm": ("LCMScheduler", {}),
    "euler_a_trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
}
#: Schedulers whose P2P windows follow the few-step rule (p2p.controls.few_step_window).
FEW_STEP_SCHEDULERS = frozenset({"lcm", "euler_a_trailing"})

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _dtype_kwarg() -> str:
    """``dtype`` on diffusers versions that deprecated ``torch_dtype``, else ``torch_dtype``."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


_DTYPE_KWARG = _dtype_kwarg()


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/"auto": fp16 on CUDA, fp32 on CPU (CPU half precision is slow and not bit-stable)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def make_scheduler(name: str, base_config: dict[str, Any]):
    """Scheduler ``name`` (see :data:`SCHEDULERS`) configured from the model's own scheduler config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


class P2PPipeline:
    """A loaded diffusers pipeline plus what P2P rendering needs (held once per render actor)."""

    def __init__(self, pipe: Any, model: str, device: torch.device, dtype: torch.dtype, scheduler: str) -> None:
        self.pipe = pipe
        self.model = model
        self.device = device
        self.dtype = dtype
        self.scheduler = scheduler
        self.base_scheduler_config = dict(pipe.scheduler.config)
        self.is_sdxl = getattr(pipe, "text_encoder_2", None) is not None or hasattr(pipe, "tokenizer_2")
        unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        downs = attention_downscales(unet)
        self.cross_downscales = {f for name, f in downs.items() if ".attn2." in name}
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.compiled = False  # compiled kernels round differently: regenerate with the same setting

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer


def load_pipeline(
    model: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    scheduler: str = "ddim",
    compile: bool = False,
) -> P2PPipeline:
    """Load a SD 1.x/2.x or SDXL pipeline (hub id or local folder) for P2P rendering.

    Called once per render actor. Uses safetensors only, drops the safety checker (not used here),
    keeps SDXL's VAE in fp32 when its config asks for upcasting, and optionally ``torch.compile``s the
    UNet (the P2P processors are excluded from compilation and run eagerly between compiled blocks;
    compiled kernels round differently from eager ones, so regenerate with the same ``compile``).
    """
    from diffusers import DiffusionPipeline

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = resolve_dtype(dtype, dev)
    model = str(model)
    cfg = DiffusionPipeline.load_config(model)
    kwargs: dict[str, Any] = {_DTYPE_KWARG: dt, "use_safetensors": True}
    if "safety_checker" in cfg:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
    refuse_guidance_embedding(pipe.unet.config, model)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mod = getattr(pipe, part, None)
        if mod is not None:
            mod.eval().requires_grad_(False)
    loaded = P2PPipeline(pipe, model, dev, dt, scheduler)
    if loaded.is_sdxl and dt == torch.float16 and pipe.vae.config.get("force_upcast", False):
        pipe.vae.to(torch.float32)
    make_scheduler(scheduler, loaded.base_scheduler_config)  # fail early on a bad name
    if compile:
        # The P2P processors are excluded from compilation, so every attention layer is a graph break
        # and each block between them is its own compiled frame: allow that many frames.
        import torch._dynamo as dynamo

        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 64))
        pipe.unet = torch.compile(pipe.unet, dynamic=False)
        loaded.compiled = True
    return loaded


@dataclass
class RenderRequest:
    """One P2P group: a source prompt and its edited prompts, rendered from one seed."""

    source: str
    edits: list[EditControl] = field(default_factory=list)
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    height: int = 512
    width: int = 512
    scheduler: str = "ddim"
    negative_prompt: str | None = None

    def batch_key(self) -> tuple[Any, ...]:
        return (self.steps, self.height, self.width, self.scheduler, self.guidance > 1.0, self.negative_prompt)


@dataclass
class Start:
    """Where a group starts instead of seeded noise: an inverted real image (p2p.real).

    ``latent`` (1, C, h, w) replaces the noise; ``uncond[i]`` (1, L, D) is step i's unconditional
    embedding for every row of the batch (null-text / negative-prompt inversion); ``mask`` (h, w) bool,
    if given, confines every edit row to it from step ``mask_start`` (DiffEdit)."""

    latent: torch.Tensor
    uncond: list[torch.Tensor]
    mask: torch.Tensor | None = None
    mask_start: int = 0


@dataclass
class RenderResult:
    """Row 0 is the source image, rows 1.. the edits (same order as ``request.edits``)."""

    request: RenderRequest
    images: np.ndarray  # (1 + E, H, W, 3) float32 in [0, 1]
    latents: torch.Tensor  # final latents (1 + E, C, h, w)
    masks: list[torch.Tensor | None]  # per edit: its mask on the latent grid (bool: LocalBlend's, the
    # fixed one, or the one its MapRequest's words give) or None
    modes: list[str]
    source_mask: torch.Tensor | None = None  # the MapRequest's words in the source row (+ its probe)
    mask_words: list[str] = field(default_factory=list)  # the MapRequest's words some prompt holds


@contextmanager
def p2p_attention(unet: Any, controller: P2PController, explicit: bool = False) -> Iterator[None]:
    """Install one P2P processor per attention layer for the duration of a render, then restore."""
    original = unet.attn_processors
    cls = ExplicitP2PProcessor if explicit else FusedP2PProcessor
    unet.set_attn_processor({name: cls(controller, name) for name in original})
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def encode_prompts(p2p: P2PPipeline, prompts: list[str], negative: str | None, cfg: bool, height: int,
                   width: int) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Step 2: text embeddings ([negative; positive] with CFG) and SDXL's added conditioning."""
    pipe, dev = p2p.pipe, p2p.device
    neg = None if negative is None else [negative] * len(prompts)
    if not p2p.is_sdxl:
        pos, negs = pipe.encode_prompt(prompts, dev, 1, cfg, neg)
        return (torch.cat([negs, pos]) if cfg else pos), None
    pos, negs, pooled, neg_pooled = pipe.encode_prompt(
        prompt=prompts, device=dev, num_images_per_prompt=1, do_classifier_free_guidance=cfg, negative_prompt=neg
    )
    proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else int(pooled.shape[-1])
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), pos.dtype, proj)
    if cfg:
        pos, pooled = torch.cat([negs, pos]), torch.cat([neg_pooled, pooled])
    time_ids = time_ids.to(dev).repeat(pos.shape[0], 1)
    return pos, {"text_embeds": pooled.to(dev), "time_ids": time_ids}


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Generator]:
    """Seeded CPU noise (device independent) and the generator that continues for sampler noise."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32), gen


def decode(p2p: P2PPipeline, latents: torch.Tensor) -> np.ndarray:
    """Step 5: VAE decode to float images in [0, 1]."""
    vae = p2p.pipe.vae
    cfg = vae.config
    lat = latents.to(next(vae.post_quant_conv.parameters()).dtype)
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(lat.device, lat.dtype)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(lat.device, lat.dtype)
        lat = lat * std_t / cfg.scaling_factor + mean_t
    else:
        lat = lat / cfg.scaling_factor
    image = vae.decode(lat, return_dict=False)[0]
    return p2p.pipe.image_processor.postprocess(image, output_type="np")


@dataclass
class _Batch:
    """Requests compiled into one UNet batch: its prompts, P2P rows and each request's row range."""

    prompts: list[str]
    rows: list[EditRow]
    groups: list[tuple[int, int]]
    modes: list[list[str]]


def check_inputs(p2p: P2PPipeline, requests: Sequence[RenderRequest]) -> RenderRequest:
    """Step 1: the requests can share a batch and fit the model; returns the first (the batch's shape)."""
    first = requests[0]
    if any(r.batch_key() != first.batch_key() for r in requests):
        raise ValueError("requests in one batch must share steps, size, scheduler, CFG on/off and negative prompt")
    if first.height % p2p.vae_scale or first.width % p2p.vae_scale:
        raise ValueError(f"height and width must be multiples of {p2p.vae_scale}, got {first.height}x{first.width}")
    return first


def prepare_timesteps(p2p: P2PPipeline, first: RenderRequest) -> Any:
    scheduler = make_scheduler(first.scheduler, p2p.base_scheduler_config)
    scheduler.set_timesteps(first.steps, device=p2p.device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    return scheduler


def compile_batch(p2p: P2PPipeline, requests: Sequence[RenderRequest], num_steps: int) -> _Batch:
    """Each request's source prompt then its edited prompts, with the compiled P2P edit of every row."""
    batch = _Batch([], [], [], [])
    for req in requests:
        start = len(batch.prompts)
        batch.prompts.append(req.source)
        src_tok = tokenize(p2p.tokenizer, req.source)
        group_modes = []
        for edit in req.edits:
            compiled = compile_edit(edit, src_tok, tokenize(p2p.tokenizer, edit.prompt), num_steps,
                                    few_step=req.scheduler in FEW_STEP_SCHEDULERS)
            batch.rows.append(EditRow(len(batch.prompts), start, compiled))
            group_modes.append(compiled.mode)
            batch.prompts.append(edit.prompt)
        batch.groups.append((start, len(batch.prompts)))
        batch.modes.append(group_modes)
    return batch


def prepare_latents(p2p: P2PPipeline, requests: Sequence[RenderRequest], groups: list[tuple[int, int]],
                    scheduler: Any, initial: Sequence[torch.Tensor | None] | None = None,
                    ) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Step 3: one starting latent per group, shared by its rows, scaled by the scheduler's init sigma.

    The default start is seeded CPU noise (device independent); `initial[g]` (1, C, h, w), e.g. an
    inverted latent, replaces group g's noise. The generators continue for stochastic samplers' noise."""
    first = requests[0]
    shape = (1, p2p.pipe.unet.config.in_channels, first.height // p2p.vae_scale, first.width // p2p.vae_scale)
    gens: list[torch.Generator] = []
    noise = []
    for g, ((a, b), req) in enumerate(zip(groups, requests, strict=True)):
        z, gen = initial_noise(req.seed, shape)
        given = initial[g] if initial is not None else None
        noise.append((z if given is None else given.float().cpu()).expand(b - a, -1, -1, -1))
        gens.append(gen)
    return torch.cat(noise).to(p2p.device, p2p.dtype) * scheduler.init_noise_sigma, gens


def _guide(pred: torch.Tensor, requests: Sequence[RenderRequest], groups: list[tuple[int, int]]) -> torch.Tensor:
    """Classifier-free guidance, per group when the requests' guidance scales differ."""
    uncond, cond = pred.chunk(2)
    if len({r.guidance for r in requests}) == 1:
        return uncond + requests[0].guidance * (cond - uncond)
    return torch.cat([uncond[a:b] + req.guidance * (cond[a:b] - uncond[a:b])
                      for (a, b), req in zip(groups, requests, strict=True)])


def _row_generators(groups: list[tuple[int, int]], gens: list[torch.Generator]) -> list[torch.Generator]:
    """One generator per row, rows of a group cloned from the group's generator: same sampler noise."""
    row_gens = []
    for (a, b), gen in zip(groups, gens, strict=True):
        state = gen.get_state()
        for _ in range(a, b):
            g = torch.Generator("cpu")
            g.set_state(state)
            row_gens.append(g)
    return row_gens


def denoise(p2p: P2PPipeline, scheduler: Any, latents: torch.Tensor, embeds: torch.Tensor,
            added: dict[str, torch.Tensor] | None, ctrl: P2PController, requests: Sequence[RenderRequest],
            groups: list[tuple[int, int]], gens: list[torch.Generator],
            uncond_embeddings: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Step 4: the diffusers loop (scale_model_input, UNet, CFG, scheduler.step) with P2P's per-step hooks.

    `uncond_embeddings[i]` (e.g. null-text inversion's), broadcast over the rows, replaces the negative half
    of the embeddings at step i."""
    cfg = requests[0].guidance > 1.0
    params = inspect.signature(scheduler.step).parameters
    step_kwargs: dict[str, Any] = {"eta": 0.0} if "eta" in params else {}
    wants_gen = "generator" in params
    for i, t in enumerate(scheduler.timesteps):
        ctrl.begin_step(i)
        step_embeds = embeds
        if cfg and uncond_embeddings is not None:
            pos = embeds[embeds.shape[0] // 2:]
            step_embeds = torch.cat([uncond_embeddings[i].to(pos).expand_as(pos), pos])
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        pred = p2p.pipe.unet(model_in, t, encoder_hidden_states=step_embeds, timestep_cond=None,
                             added_cond_kwargs=added, return_dict=False)[0]
        if cfg:
            pred = _guide(pred, requests, groups)
        if wants_gen:
            step_kwargs["generator"] = _row_generators(groups, gens)
        latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
        if wants_gen:
            for (a, _), gen in zip(groups, gens, strict=True):
                gen.set_state(step_kwargs["generator"][a].get_state())
        latents = ctrl.end_step(latents)
    return latents


def _check_starts(requests: Sequence[RenderRequest], starts: Sequence[Start] | None) -> None:
    if starts is None:
        return
    if len(starts) != len(requests):
        raise ValueError(f"{len(starts)} starts for {len(requests)} requests")
    if any(s.uncond is not starts[0].uncond for s in starts) or len(starts[0].uncond) != requests[0].steps:
        raise ValueError("requests in one batch must share one inversion's per-step embeddings (one per step)")


def _fixed_masks(batch: _Batch, starts: Sequence[Start] | None) -> dict[int, tuple[int, torch.Tensor, int]]:
    found: dict[int, tuple[int, torch.Tensor, int]] = {}
    for (a, b), start in zip(batch.groups, starts or (), strict=False):
        if start.mask is not None:
            found.update({row: (a, start.mask, start.mask_start) for row in range(a + 1, b)})
    return found


def render(p2p: P2PPipeline, requests: Sequence[RenderRequest], explicit: bool = False,
           starts: Sequence[Start] | None = None, maps: Sequence[MapRequest | None] | None = None,
           ) -> list[RenderResult]:
    """Render compatible requests in one UNet batch (see module docstring); returns one result each.

    Follows diffusers' pipeline steps: check inputs, encode prompts, prepare latents, denoise, decode.
    ``explicit=True`` swaps in the materialised-probability reference processors (tests only);
    ``starts`` (one per request) start groups from inverted real images instead of noise; ``maps`` (one
    per request, or None) gather word maps for edit masks (p2p.word_maps), which change no image.
    """
    if not requests:
        return []
    first = check_inputs(p2p, requests)
    _check_starts(requests, starts)
    scheduler = prepare_timesteps(p2p, first)
    num_steps = len(scheduler.timesteps)
    batch = compile_batch(p2p, requests, num_steps)
    initial = [s.latent for s in starts] if starts is not None else None
    latents, gens = prepare_latents(p2p, requests, batch.groups, scheduler, initial)
    recorder, plans = _recorder(p2p, batch, first, maps)
    ctrl = P2PController(
        n_rows=len(batch.prompts), cfg=first.guidance > 1.0, edits=batch.rows, num_steps=num_steps,
        latent_hw=(first.height // p2p.vae_scale, first.width // p2p.vae_scale), device=p2p.device,
        dtype=p2p.dtype, blend_downscales=p2p.cross_downscales, fixed_masks=_fixed_masks(batch, starts),
        recorder=recorder,
    )
    uncond = starts[0].uncond if starts is not None else None
    with torch.inference_mode(), p2p_attention(p2p.pipe.unet, ctrl, explicit=explicit):
        embeds, added = encode_prompts(p2p, batch.prompts, first.negative_prompt, first.guidance > 1.0,
                                       first.height, first.width)
        latents = denoise(p2p, scheduler, latents, embeds, added, ctrl, requests, batch.groups, gens, uncond)
        images = decode(p2p, latents)
    return [_result(req, images, latents, ctrl.masks(), (a, b), group_modes, recorder, plan)
            for (a, b), req, group_modes, plan in zip(batch.groups, requests, batch.modes, plans, strict=True)]


def _recorder(p2p: P2PPipeline, batch: _Batch, first: RenderRequest, maps: Sequence[MapRequest | None] | None,
              ) -> tuple[WordMaps | None, list[GroupMaps | None]]:
    """The word-map recorder of a batch's map requests (no requests: none, and one None plan per group)."""
    if maps is None or all(m is None for m in maps):
        return None, [None] * len(batch.groups)
    if len(maps) != len(batch.groups):
        raise ValueError(f"{len(maps)} map requests for {len(batch.groups)} requests")

    def encode(prompt: str) -> torch.Tensor:  # a probe's conditional text states
        with torch.inference_mode():
            return encode_prompts(p2p, [prompt], None, False, first.height, first.width)[0]

    latent_hw = (first.height // p2p.vae_scale, first.width // p2p.vae_scale)
    offset = len(batch.prompts) if first.guidance > 1.0 else 0
    return build_recorder(p2p.tokenizer, batch.groups, batch.prompts, maps, offset, latent_hw,
                          p2p.cross_downscales, p2p.device, encode)


def _result(req: RenderRequest, images: np.ndarray, latents: torch.Tensor, fixed: dict[int, torch.Tensor],
            rows: tuple[int, int], modes: list[str], recorder: WordMaps | None, plan: GroupMaps | None,
            ) -> RenderResult:
    """One group's result: its rows, and each edit row's mask (LocalBlend's or a fixed one first, else
    the one its map request's words give)."""
    a, b = rows
    source_mask, edit_masks = regions(recorder, plan)
    masks = []
    for e, r in enumerate(range(a + 1, b)):
        found = fixed[r].cpu() if r in fixed else (edit_masks[e] if e < len(edit_masks) else None)
        masks.append(found)
    return RenderResult(request=req, images=images[a:b], latents=latents[a:b].float().cpu(), masks=masks,
                        modes=modes, source_mask=source_mask, mask_words=plan.words if plan is not None else [])


def check_request(p2p: P2PPipeline, request: RenderRequest) -> list[str]:
    """Validate a request against the model's tokenizer (words exist, windows parse, sizes fit)
    without rendering; returns the resolved mode of each edit. Raises ``ValueError``."""
    if request.height % p2p.vae_scale or request.width % p2p.vae_scale:
        raise ValueError(f"height and width must be multiples of {p2p.vae_scale}")
    if request.steps < 1:
        raise ValueError("steps must be >= 1")
    make_scheduler(request.scheduler, p2p.base_scheduler_config)
    src = tokenize(p2p.tokenizer, request.source)
    few = request.scheduler in FEW_STEP_SCHEDULERS
    return [compile_edit(e, src, tokenize(p2p.tokenizer, e.prompt), request.steps, few_step=few).mode
            for e in request.edits]


def render_one(p2p: P2PPipeline, request: RenderRequest, explicit: bool = False) -> RenderResult:
    return render(p2p, [request], explicit=explicit)[0]


def plan_batches(requests: Sequence[RenderRequest], max_rows: int = 0) -> list[list[int]]:
    """Indices of requests to render together: compatible requests packed up to ``max_rows`` rows per
    CFG half (``0``: one request per batch, the layout ``regenerate`` uses)."""
    batches: list[list[int]] = []
    open_: dict[tuple[Any, ...], tuple[list[int], int]] = {}
    for i, req in enumerate(requests):
        n = 1 + len(req.edits)
        key = req.batch_key()
        if max_rows > 0 and key in open_ and open_[key][1] + n <= max_rows:
            idx, used = open_[key]
            idx.append(i)
            open_[key] = (idx, used + n)
            continue
        idx = [i]
        batches.append(idx)
        open_[key] = (idx, n)
    return batches
