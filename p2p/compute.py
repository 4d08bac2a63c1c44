"""UNet compute accounting: FLOPs per UNet row per step, per candidate, per kept sample, vs InstructPix2Pix.

What a lab pays for is GPU time per *kept* training sample, so the unit here is the UNet *row-step*: one
batch row through one UNet evaluation (a P2P candidate with CFG is 4 rows: source + edit, each as an
unconditional and a conditional half). FLOPs per row-step are measured once per (UNet config, size) with
``torch.utils.flop_counter.FlopCounterMode`` on a weightless twin of the UNet built on the meta device
(no allocation, no effect on the live model, the same count on every device), batch 1, one step.

What the counter counts: matmuls (``mm``/``addmm``/``bmm``) and convolutions at 2 FLOPs per
multiply-add; norms, activations, softmax and elementwise ops are not counted (a few % of the time, ~0 %
of the FLOPs). Attention scores (``QK^T`` and ``PV``) are counted when SDPA reaches the counter as a known
op: on the meta device SDPA decomposes into two ``bmm`` (counted), on CUDA the flash / memory-efficient /
cuDNN kernels are in torch's registry (counted), but CPU's ``_scaled_dot_product_flash_attention_for_cpu``
is not (torch 2.14: counted as 0). :func:`flop_counter` maps that op too, so all devices agree, and
:class:`UNetFlops` reports the attention-score share separately (``dense`` = without it, the figure a
plain CPU count gives). See docs/compute.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from editgen.pipeline.cache import cache_dir

#: Bump when what is counted changes, so disk-cached figures are re-measured.
COUNT_VERSION = 1
CACHE_FILE = "unet_flops.json"
#: Ops whose FLOPs are attention scores (QK^T, PV): SDPA kernels, and ``bmm`` (SDPA's math path; a
#: diffusers SD/SDXL UNet uses ``bmm`` nowhere else -- linears are ``mm``/``addmm``, tested).
ATTENTION_OPS = (
    "aten.bmm",
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_cudnn_attention",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._flash_attention_forward",
    "aten._efficient_attention_forward",
)


def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
    """FLOPs of CPU's fused SDPA kernel: the same two matmuls torch counts for the CUDA kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> torch.utils.flop_counter.FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU's fused SDPA kernel (see module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping: dict[Any, Callable[..., int]] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs by op name) of one call of ``fn``, under no_grad."""
    counter = flop_counter()
    with torch.no_grad(), counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


@dataclass(frozen=True)
class UNetFlops:
    """FLOPs of one UNet row for one step (batch 1) at a given size; ``total`` includes attention scores."""

    total: int
    attention: int
    latent_hw: tuple[int, int]
    text_len: int

    @property
    def dense(self) -> int:
        """Convolutions and linear layers only (what a CPU count without the SDPA mapping reports)."""
        return self.total - self.attention

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "attention": self.attention, "dense": self.dense,
                "latent_hw": list(self.latent_hw), "text_len": self.text_len}


def _base_unet(unet: Any) -> Any:
    return getattr(unet, "_orig_mod", unet)  # torch.compile wrapper -> the module


def _cross_dim(unet: Any, cross_dim: int | None) -> int:
    if cross_dim is not None:
        return int(cross_dim)
    dim = unet.config.cross_attention_dim
    return int(dim[0] if isinstance(dim, (list, tuple)) else dim)


def _unet_inputs(unet: Any, latent_hw: tuple[int, int], text_len: int, cross_dim: int, device: Any) -> dict:
    """Batch-1 inputs for one UNet call; SDXL-style ``text_time`` conditioning gets its extra inputs."""
    cfg = unet.config
    kwargs: dict[str, Any] = {
        "sample": torch.zeros(1, cfg.in_channels, *latent_hw, device=device),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": torch.zeros(1, text_len, cross_dim, device=device),
        "return_dict": False,
    }
    if cfg.get("addition_embed_type") == "text_time":
        time_dim = int(cfg.addition_time_embed_dim)
        text_dim = int(cfg.projection_class_embeddings_input_dim) - 6 * time_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, text_dim, device=device),
                                       "time_ids": torch.zeros(1, 6, device=device)}
    return kwargs


def measure_unet_flops(
    unet: Any, height: int, width: int, text_len: int = 77, cross_dim: int | None = None,
    vae_scale: int = 8, meta: bool = True,
) -> UNetFlops:
    """Count one batch-1 UNet step at ``height`` x ``width`` pixels (uncached; see :func:`unet_flops`).

    ``meta=True`` builds a weightless twin from ``unet.config`` on the meta device: no memory, default
    attention processors whatever is installed on the live model, and device-independent op choice.
    """
    base = _base_unet(unet)
    if height % vae_scale or width % vae_scale:
        raise ValueError(f"height and width must be multiples of {vae_scale}, got {height}x{width}")
    latent_hw = (height // vae_scale, width // vae_scale)
    dim = _cross_dim(base, cross_dim)
    if meta:
        with torch.device("meta"):
            model = type(base).from_config(dict(base.config))
        device: Any = "meta"
    else:
        model = base
        device = next(base.parameters()).device
    model.eval()
    inputs = _unet_inputs(model, latent_hw, text_len, dim, device)
    if not meta:
        dtype = next(base.parameters()).dtype
        inputs = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                  for k, v in inputs.items()}
    total, by_op = count_flops(lambda: model(**inputs))
    attention = sum(v for k, v in by_op.items() if k in ATTENTION_OPS)
    return UNetFlops(total=total, attention=attention, latent_hw=latent_hw, text_len=text_len)


def unet_cache_key(unet: Any, height: int, width: int, text_len: int, cross_dim: int | None, vae_scale: int) -> str:
    """Identity of a measurement: the UNet's class and config (FLOPs do not depend on weights), the size."""
    base = _base_unet(unet)
    cfg = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
    blob = json.dumps({"v": COUNT_VERSION, "cls": type(base).__name__, "config": cfg, "size": [height, width],
                       "text_len": text_len, "cross_dim": _cross_dim(base, cross_dim), "vae_scale": vae_scale},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


#: Stable Diffusion 1.5's UNet config (stable-diffusion-v1-5 ``unet/config.json``): the real architecture,
#: for counting FLOPs and GPU benches with random weights (no hub access needed).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}


#: Stable Diffusion XL base 1.0's UNet config (``unet/config.json``), also SDXL-Turbo's (a distilled SDXL).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 2048, "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def sdxl_unet(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32) -> Any:
    """A random-weight SDXL UNet (on ``meta`` by default: no 10 GB allocation)."""
    return sd15_unet(device, dtype, SDXL_UNET_CONFIG)


def sd15_unet(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32,
              config: dict[str, Any] | None = None) -> Any:
    """A random-weight SD 1.5 UNet (on ``meta`` by default: no 3.4 GB allocation); ``config``: another
    architecture's UNet config."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**(config or SD15_UNET_CONFIG))
    if dtype != torch.float32:
        unet = unet.to(dtype)
    return unet.eval().requires_grad_(False)


_CACHE: dict[str, UNetFlops] = {}
_LOCK = threading.Lock()


def default_cache_file() -> Path:
    """``<editgen cache dir>/unet_flops.json`` ($EDITGEN_CACHE or ~/.cache/editgen)."""
    return cache_dir() / CACHE_FILE


def _read_disk(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_disk(path: Path, key: str, flops: UNetFlops) -> None:
    """Merge one entry into the JSON cache, atomically (concurrent actors may write the same file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_disk(path)
        data[key] = flops.to_dict()
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, sort_keys=True, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir costs a re-measurement, never a failed render


def _from_dict(d: Mapping[str, Any]) -> UNetFlops:
    return UNetFlops(int(d["total"]), int(d["attention"]), tuple(d["latent_hw"]), int(d["text_len"]))


def unet_flops(
    unet: Any, height: int, width: int, text_len: int = 77, cross_dim: int | None = None, vae_scale: int = 8,
    cache_file: str | os.PathLike[str] | bool | None = None,
) -> UNetFlops:
    """:func:`measure_unet_flops`, cached in memory per (config hash, size) and optionally on disk.

    ``cache_file``: None/False = memory only, True = :func:`default_cache_file`, or a path.
    """
    key = unet_cache_key(unet, height, width, text_len, cross_dim, vae_scale)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    path = default_cache_file() if cache_file is True else (Path(cache_file) if cache_file else None)
    if path is not None:
        entry = _read_disk(path).get(key)
        if isinstance(entry, dict):
            try:
                flops = _from_dict(entry)
            except (KeyError, TypeError, ValueError):
                flops = None
            if flops is not None:
                with _LOCK:
                    _CACHE[key] = flops
                return flops
    flops = measure_unet_flops(unet, height, width, text_len, cross_dim, vae_scale)
    with _LOCK:
        _CACHE[key] = flops
    if path is not None:
        _write_disk(path, key, flops)
    return flops


def unet_flops_per_row(
    unet: Any, height: int, width: int, text_len: int = 77, cross_dim: int | None = None,
    include_attention: bool = True, vae_scale: int = 8, cache_file: str | os.PathLike[str] | bool | None = None,
) -> int:
    """FLOPs of one UNet row for one step (cached); ``include_attention=False`` gives the dense count."""
    f = unet_flops(unet, height, width, text_len, cross_dim, vae_scale, cache_file)
    return f.total if include_attention else f.dense


def pipeline_flops(p2p: Any, height: int, width: int, cache_file: str | os.PathLike[str] | bool | None = True
                   ) -> UNetFlops:
    """:func:`unet_flops` for a loaded :class:`p2p.generate.P2PPipeline` (what a render actor calls once)."""
    text_len = int(getattr(p2p.tokenizer, "model_max_length", 77) or 77)
    text_len = text_len if text_len < 10_000 else 77  # tokenizers without a limit report a huge sentinel
    return unet_flops(p2p.pipe.unet, height, width, text_len, None, int(p2p.vae_scale), cache_file)


# ----------------------------------------------------------------------------------------------------
# Per-candidate accounting

#: UNet evaluations per step beyond one (PNDM's PLMS adds one warm-up evaluation per run, not per step).
_EXTRA_EVALS = {"pndm": 1}


def unet_evals(scheduler: str, steps: int) -> int:
    """UNet evaluations of a ``steps``-step run with ``scheduler`` (the render loop's ``len(timesteps)``)."""
    return int(steps) + _EXTRA_EVALS.get(scheduler, 0)


def rows_per_candidate(cfg: bool = True, edits: int = 1, share: int = 1) -> float:
    """UNet rows one candidate costs: (1 source + ``edits``) prompts, x2 with CFG; a source shared by
    ``share`` candidates is paid once per group, so (1 + share) prompts per ``share`` candidates."""
    if edits < 1 or share < 1:
        raise ValueError("edits and share must be >= 1")
    halves = 2 if cfg else 1
    return halves * (1 / share + edits)


@dataclass
class CandidateCompute:
    """UNet work of one candidate: rows x steps row-steps, plus extra row-steps (inversion, early-stop
    scoring) when a caller has them; FLOPs = row-steps x FLOPs per row-step."""

    rows: float
    steps: int
    flops_per_row: int
    inversion_row_steps: float = 0.0
    scoring_row_steps: float = 0.0

    @property
    def unet_row_steps(self) -> float:
        return self.rows * self.steps + self.inversion_row_steps + self.scoring_row_steps

    @property
    def unet_flops(self) -> float:
        return self.unet_row_steps * self.flops_per_row

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unet_row_steps": self.unet_row_steps, "unet_flops": self.unet_flops}


def record_compute(record: Mapping[str, Any], flops_per_row: int, share: int = 1, inversion_row_steps: float = 0.0,
                   scoring_row_steps: float = 0.0) -> CandidateCompute:
    """Compute of one P2P render (a P2P record's parameters: p2p.candidates.request_params, or a whole record):
    CFG from its guidance, rows from its edits."""
    cfg = float(record["guidance"]) > 1.0
    rows = rows_per_candidate(cfg, max(1, len(record.get("edits") or [])), share)
    steps = unet_evals(str(record.get("scheduler", "ddim")), int(record["steps"]))
    return CandidateCompute(rows, steps, int(flops_per_row), inversion_row_steps, scoring_row_steps)


def _per(num: float | None, den: float) -> float | None:
    return None if num is None or den <= 0 else num / den


@dataclass
class ComputeSummary:
    """Totals of a run (or partition): additive, so partitions merge with ``+``; ``to_dict`` is the JSON
    the manifest and ``editgen status`` carry."""

    candidates: int = 0
    kept: int = 0
    unet_row_steps: float = 0.0
    unet_flops: float = 0.0
    gpu_seconds: float | None = None
    flops_per_row: dict[str, int] = field(default_factory=dict)  # size "HxW" -> measured FLOPs per row-step

    @classmethod
    def from_candidates(cls, candidates: Iterable[CandidateCompute], kept: int, gpu_seconds: float | None = None
                        ) -> ComputeSummary:
        cands = list(candidates)
        return cls(len(cands), int(kept), sum(c.unet_row_steps for c in cands), sum(c.unet_flops for c in cands),
                   gpu_seconds)

    def __add__(self, other: ComputeSummary) -> ComputeSummary:
        secs = None if self.gpu_seconds is None and other.gpu_seconds is None else \
            (self.gpu_seconds or 0.0) + (other.gpu_seconds or 0.0)
        return ComputeSummary(self.candidates + other.candidates, self.kept + other.kept,
                              self.unet_row_steps + other.unet_row_steps, self.unet_flops + other.unet_flops,
                              secs, {**self.flops_per_row, **other.flops_per_row})

    @property
    def flops_per_kept(self) -> float | None:
        return _per(self.unet_flops, self.kept)

    @property
    def row_steps_per_kept(self) -> float | None:
        return _per(self.unet_row_steps, self.kept)

    @property
    def candidates_per_kept(self) -> float | None:
        return _per(self.candidates, self.kept)

    @property
    def gpu_seconds_per_kept(self) -> float | None:
        return _per(self.gpu_seconds, self.kept)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unet_flops_per_kept": self.flops_per_kept,
                "unet_row_steps_per_kept": self.row_steps_per_kept,
                "candidates_per_kept": self.candidates_per_kept, "gpu_seconds_per_kept": self.gpu_seconds_per_kept}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ComputeSummary:
        return cls(int(d["candidates"]), int(d["kept"]), float(d["unet_row_steps"]), float(d["unet_flops"]),
                   None if d.get("gpu_seconds") is None else float(d["gpu_seconds"]),
                   dict(d.get("flops_per_row") or {}))


# ----------------------------------------------------------------------------------------------------
# Acceptance model: how many candidates a pair draws before top_k pass the filter


@dataclass(frozen=True)
class AcceptanceModel:
    """Each candidate of a pair passes the filter thresholds independently with the pair's probability q:
    a fixed ``p`` for every pair, or (``beta`` given) q ~ Beta(a, b) drawn once per pair -- pairs differ
    (some edits almost never work), which is what makes a cap of 100 draws bite.
    """

    p: float = 0.2
    beta: tuple[float, float] | None = None

    @property
    def mean(self) -> float:
        return self.p if self.beta is None else self.beta[0] / sum(self.beta)

    def prob_fewer(self, k: int, n: int) -> float:
        """P(fewer than k of n candidates pass), marginal over the pair's q."""
        if k <= 0:
            return 0.0
        if k > n:
            return 1.0
        total = 0.0
        for j in range(k):
            log_c = math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
            if self.beta is None:
                if self.p in (0.0, 1.0):
                    total += float((j == 0 and self.p == 0.0) or (j == n and self.p == 1.0))
                    continue
                total += math.exp(log_c + j * math.log(self.p) + (n - j) * math.log1p(-self.p))
            else:
                a, b = self.beta
                total += math.exp(log_c + _log_beta(j + a, n - j + b) - _log_beta(a, b))
        return min(1.0, total)

    def sample_q(self, rng: np.random.Generator, pairs: int) -> np.ndarray:
        return np.full(pairs, self.p) if self.beta is None else rng.beta(*self.beta, size=pairs)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def expected_drawn(model: AcceptanceModel, k: int | None, n_max: int, early_stop: bool = True, group: int = 1,
                   min_candidates: int = 0) -> float:
    """E[candidates drawn per pair]. Early stop draws rounds of ``group`` candidates (shared-source groups)
    and stops after the first round that brings the passes to ``k`` (and the draws to ``min_candidates``),
    or at ``n_max``:  E[D] = sum_r P(continue into round r) * |round r|, with P = P(X_{r g} < k) once
    r g >= min_candidates (1 before), X_n = passes among the first n (Binomial / Beta-binomial)."""
    if not early_stop or k is None:
        return float(n_max)
    total = 0.0
    for start in range(0, n_max, group):
        cont = 1.0 if start < min_candidates else model.prob_fewer(k, start)
        total += cont * min(group, n_max - start)
    return total


def expected_kept(model: AcceptanceModel, k: int | None, n_max: int) -> float:
    """E[min(X_N, k)] = sum_{j=1..k} P(X_N >= j); early stop keeps the same (it only skips draws after the
    k-th pass). ``k=None`` keeps every passing candidate: E[X_N] = N q."""
    if k is None:
        return n_max * model.mean
    return sum(1.0 - model.prob_fewer(j, n_max) for j in range(1, k + 1))


def simulate_acceptance(model: AcceptanceModel, k: int, n_max: int, pairs: int, seed: int = 0,
                        early_stop: bool = True, group: int = 1) -> tuple[float, float]:
    """Monte-Carlo (mean drawn, mean kept) per pair under ``model``: the check of the closed forms."""
    rng = np.random.default_rng(seed)
    q = model.sample_q(rng, pairs)
    passes = rng.random((pairs, n_max)) < q[:, None]
    kept = np.minimum(passes.sum(1), k)
    drawn = early_stop_draws(passes, k, group) if early_stop else np.full(pairs, n_max)
    return float(drawn.mean()), float(kept.mean())


def early_stop_draws(passes: np.ndarray, k: int, group: int = 1) -> np.ndarray:
    """Per pair (row of pass/fail outcomes in draw order): candidates drawn when drawing rounds of
    ``group`` and stopping after the round with the k-th pass, or at the last column."""
    n_max = passes.shape[1]
    cum = passes.cumsum(1)
    reached = cum[:, -1] >= k
    kth = np.where(reached, (cum >= k).argmax(1) + 1, n_max)  # 1-based index of the k-th pass
    return np.minimum(-(-kth // group) * group, n_max)


# ----------------------------------------------------------------------------------------------------
# Recipes: FLOPs per caption pair and per kept sample


@dataclass(frozen=True)
class Recipe:
    """How candidates are drawn for a caption pair."""

    name: str
    steps: int  # UNet evaluations per candidate
    rows_per_candidate: float
    max_candidates: int
    top_k: int | None
    early_stop: bool = False
    group: int = 1  # candidates drawn per early-stop round (shared-source group size)
    min_candidates: int = 0


#: InstructPix2Pix (Brooks et al. 2023): 100 candidates per caption pair, 100 Euler-ancestral steps,
#: source + edit with CFG (4 rows), all 100 drawn, at most 4 kept after CLIP filtering.
IP2P = Recipe("instructpix2pix", steps=100, rows_per_candidate=4, max_candidates=100, top_k=4)


@dataclass(frozen=True)
class RecipeCost:
    recipe: Recipe
    flops_per_row: int
    drawn_per_pair: float
    kept_per_pair: float

    @property
    def row_steps_per_pair(self) -> float:
        return self.drawn_per_pair * self.recipe.rows_per_candidate * self.recipe.steps

    @property
    def flops_per_pair(self) -> float:
        return self.row_steps_per_pair * self.flops_per_row

    @property
    def flops_per_kept(self) -> float:
        return self.flops_per_pair / self.kept_per_pair if self.kept_per_pair > 0 else math.inf

    @property
    def candidates_per_kept(self) -> float:
        return self.drawn_per_pair / self.kept_per_pair if self.kept_per_pair > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": asdict(self.recipe), "flops_per_row": self.flops_per_row,
                "drawn_per_pair": self.drawn_per_pair, "kept_per_pair": self.kept_per_pair,
                "row_steps_per_pair": self.row_steps_per_pair, "flops_per_pair": self.flops_per_pair,
                "flops_per_kept": self.flops_per_kept, "candidates_per_kept": self.candidates_per_kept}


def recipe_cost(recipe: Recipe, flops_per_row: int, model: AcceptanceModel | None = None) -> RecipeCost:
    """Expected UNet cost of ``recipe`` per caption pair and per kept sample under ``model``."""
    model = model or AcceptanceModel()
    drawn = expected_drawn(model, recipe.top_k, recipe.max_candidates, recipe.early_stop, recipe.group,
                           recipe.min_candidates)
    return RecipeCost(recipe, int(flops_per_row), drawn, expected_kept(model, recipe.top_k, recipe.max_candidates))


def ip2p_flops_per_pair(flops_per_row: int) -> float:
    """InstructPix2Pix's UNet FLOPs per caption pair: 100 candidates x 100 steps x 4 rows x FLOPs/row."""
    return float(IP2P.max_candidates * IP2P.steps * IP2P.rows_per_candidate * flops_per_row)


def profile_recipe(render: Any, top_k: int | None, share: int | None = None, name: str = "profile") -> Recipe:
    """The :class:`Recipe` a render config (``pipeline.settings.render.RenderConfig``) runs. ``share``:
    candidates per shared source (default: the config's ``shared_sources`` if it has one, else 1)."""
    k = int(share or getattr(render, "shared_sources", None) or 1)
    cfg = float(render.guidance_range[0]) > 1.0
    early = bool(render.early_stop) and top_k is not None
    return Recipe(name, unet_evals(render.scheduler, render.steps), rows_per_candidate(cfg, 1, k),
                  int(render.candidates), top_k, early, k if early else 1,
                  int(getattr(render, "early_stop_min_candidates", 0) or 0))


def production_estimate(render: Any, top_k: int | None, flops_per_row: int, model: AcceptanceModel | None = None,
                        share: int | None = None, target: float = 0.1, ip2p_flops_per_row: int | None = None
                        ) -> dict[str, Any]:
    """FLOPs per kept sample of a profile's render settings vs InstructPix2Pix's recipe, as a ratio
    (target <= 1/10), both under the same acceptance model. ``ip2p_flops_per_row``: InstructPix2Pix's
    UNet (SD 1.5 at 512 px) when the profile's model is another (default: the same as ours)."""
    model = model or AcceptanceModel()
    ours = recipe_cost(profile_recipe(render, top_k, share), flops_per_row, model)
    ip2p = recipe_cost(IP2P, ip2p_flops_per_row or flops_per_row, model)
    ratio = ours.flops_per_kept / ip2p.flops_per_kept
    return {"profile": ours.to_dict(), "ip2p": ip2p.to_dict(), "acceptance": asdict(model),
            "ratio": ratio, "target": target, "pass": ratio <= target}
