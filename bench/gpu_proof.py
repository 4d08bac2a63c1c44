"""`make gpu-proof`: one prepared run that answers, on a CUDA machine, what matters before spending GPU time.

With random weights built from the real architectures (bench/gpu_proof_models.py, no model hub):

* Stable Diffusion 1.5's UNet at 512 px in fp16 and bf16, packed batches of 4/8/16/32 rows per CFG half,
  eager and ``torch.compile``d: candidates per second (UNet only, the sd15 profile's recipe), UNet TFLOP/s
  (p2p.compute's FLOPs per row-step, the figure render records use) and MFU against the device's dense
  fp16/bf16 peak (PEAKS, by device name; "unknown peak" otherwise);
* the fused Prompt-to-Prompt processors vs plain SDPA at the best eager batch: time and peak memory;
* a packed record rendered and regenerated (engines.regenerate) under ``torch.use_deterministic_algorithms``
  on the SD-1.5-architecture pipeline: bit for bit or not, and how far packing moves a row;
* open_clip ViT-L/14 image tower images per second;
* the ``sdxl-turbo`` profile's render: SDXL's UNet at 512 px, guidance-free (one row per prompt), 32 rows:
  candidates per second by the profile's recipe, TFLOP/s, MFU;
* vLLM tokens per second on a Qwen2.5-0.5B-architecture model when vLLM is installed
  (bench/gpu_proof_vllm.py, in its own process).

One global time budget (``--budget-s``, 420 s on a GPU: under 8 minutes on one H100 with model
construction): the essential sections run first, ``torch.compile`` cells last (the largest batches
first), and a section that would not fit is skipped with its reason. On CPU a reduced run (tiny UNet and
CLIP, 1-2 rows, no compile, no vLLM) keeps the script working in CI; its header says it is not a GPU figure
and every GPU-only field reads "not measured on CPU". Prints one table, writes one JSON (``--json``).
    python bench/gpu_proof.py [--json gpu-proof.json] [--budget-s 420] [--iters 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# deterministic cuBLAS needs this before the first cuBLAS call (regeneration section)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

NOT_CPU = "not measured on CPU"
UNKNOWN_PEAK = "unknown peak"
DTYPES = ("float16", "bfloat16")
BATCHES = {True: (4, 8, 16, 32), False: (1, 2)}  # rows per CFG half: GPU, CPU
#: Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s with fp32 accumulation, by a substring of
#: torch.cuda.get_device_name(); first match wins, so more specific names come first.
PEAKS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 35.6), ("V100", 125.0), ("T4", 65.0),
)
SRC = "a photo of a cat sitting on a wooden bench in a park"
EDITS = ("a photo of a dog sitting on a wooden bench in a park",
         "a photo of a fox sitting on a wooden bench in a park",
         "a photo of a cat sitting on a stone bench in a park",
         "a photo of a cat sitting on a wooden bench in a garden")
#: Every field of the JSON, per section (the test checks each is present and not None).
SCHEMA: dict[str, tuple[str, ...]] = {
    "unet": ("model", "size", "flops_per_row_step", "row_steps_per_candidate", "runs"),
    "best": ("dtype", "rows_per_half", "compile", "candidates_per_s", "unet_tflops", "mfu"),
    "p2p": ("dtype", "rows_per_half", "steps", "plain_step_s", "p2p_step_s", "time_ratio", "plain_peak_mib",
            "p2p_peak_mib", "mem_ratio"),
    "regeneration": ("model", "dtype", "size", "steps", "records", "rows_per_half", "deterministic", "bit_exact",
                     "regenerated", "latents_finite", "packed_vs_alone_max_abs_diff", "seconds"),
    "clip": ("model", "dtype", "batch", "images_per_s"),
    "turbo": ("model", "dtype", "size", "rows", "flops_per_row_step", "row_steps_per_candidate", "step_s",
              "candidates_per_s", "unet_tflops", "mfu"),
    "vllm": ("model", "prompts", "prompt_tokens", "max_tokens", "engine_start_s", "generated_tokens", "tokens_per_s"),
}
TOP = ("header", "gpu_figure", "device", "torch", "cuda", "peak_tflops", "budget_s", "elapsed_s", *SCHEMA)
RUN_FIELDS = ("dtype", "rows_per_half", "compile", "step_s", "candidates_per_s", "unet_tflops", "mfu", "peak_mib")


@dataclass
class Ctx:
    """Where the run is (device, GPU or not), its clock and budget, and timed calls per measurement."""

    gpu: bool
    device: torch.device
    budget: float
    iters: int
    start: float

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def short(self, need: float) -> str | None:
        """The skip reason when fewer than ``need`` seconds are left, else None."""
        left = self.left()
        return None if left >= need else f"skipped: time budget spent ({left:.0f} s left, needs ~{need:.0f} s)"


def peak_tflops(name: str) -> float | None:
    """The device's dense fp16/bf16 peak (TFLOP/s) from PEAKS, or None."""
    return next((v for k, v in PEAKS if k in name), None)


def complete(section: dict[str, Any], name: str, reason: str) -> dict[str, Any]:
    """Every field of ``name`` present: the measured value, else ``reason``."""
    return {f: section[f] if section.get(f) is not None else reason for f in SCHEMA[name]}


# ------------------------------------------------------------------------------------------- UNet grid
def _inputs(unet: Any, rows: int, size: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    from editgen.p2p import compute

    cross = compute._cross_dim(unet, None)
    return {"sample": torch.randn(rows, 4, size // 8, size // 8, device=device, dtype=dtype),
            "timestep": torch.tensor([500], device=device),
            "encoder_hidden_states": torch.randn(rows, 77, cross, device=device, dtype=dtype), "return_dict": False}


def timed_peak(ctx: Ctx, fn: Callable[[], float]) -> tuple[float, float | str]:
    """(what ``fn`` returns, peak memory MiB above what was allocated before; CPU: not measured)."""
    if not ctx.gpu:
        return fn(), NOT_CPU
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - before) / 2**20


def measure_cell(ctx: Ctx, run: Any, unet: Any, dtype: str, rows: int, compiled: bool, grid: dict[str, Any]
                 ) -> dict[str, Any]:
    """One (dtype, rows per CFG half, compile) cell: median UNet call, candidates/s, TFLOP/s, MFU."""
    from bench.bench_render import _step_time

    dt = getattr(torch, dtype)
    unet.to(dt)
    inputs = _inputs(unet, 2 * rows, grid["size"], dt, ctx.device)
    step, peak = timed_peak(ctx, lambda: _step_time(run, inputs, ctx.iters, lambda i: None, ctx.gpu))
    tflops = 2 * rows * grid["flops_per_row_step"] / step / 1e12
    peak_t = grid["peak"]
    mfu: float | str = NOT_CPU if not ctx.gpu else (UNKNOWN_PEAK if peak_t is None else tflops / peak_t)
    return {"dtype": dtype, "rows_per_half": rows, "compile": compiled, "step_s": step,
            "candidates_per_s": 2 * rows / grid["row_steps_per_candidate"] / step, "unet_tflops": tflops,
            "mfu": mfu, "peak_mib": peak}


def skipped_cell(dtype: str, rows: int, compiled: bool, reason: str) -> dict[str, Any]:
    return {"dtype": dtype, "rows_per_half": rows, "compile": compiled,
            **{f: reason for f in RUN_FIELDS[3:]}}


def unet_setup(ctx: Ctx) -> tuple[Any, dict[str, Any]]:
    """The UNet the grid times (SD 1.5 random on a GPU, tiny on CPU) and the grid's accounting."""
    from editgen.p2p import compute
    from editgen.pipeline.config import build_config

    if ctx.gpu:
        unet, model, size = compute.sd15_unet(ctx.device, torch.float16), "sd15 UNet (random)", 512
    else:
        from bench.gpu_proof_models import tiny_pipeline

        unet, model, size = tiny_pipeline(ctx.device, torch.float32).pipe.unet, "tiny SD UNet (random)", 64
    cfg = build_config("sd15")
    recipe = compute.profile_recipe(cfg.render, cfg.filter.top_k)
    name = torch.cuda.get_device_name(ctx.device) if ctx.gpu else "cpu"
    grid = {"model": model, "size": size, "flops_per_row_step": compute.measure_unet_flops(unet, size, size).total,
            "row_steps_per_candidate": recipe.rows_per_candidate * recipe.steps, "peak": peak_tflops(name)}
    return unet, grid


def eager_grid(ctx: Ctx, unet: Any, grid: dict[str, Any]) -> list[dict[str, Any]]:
    runs = []
    for dtype in DTYPES:
        for rows in BATCHES[ctx.gpu]:
            reason = ctx.short(10.0 if ctx.gpu else 2.0)
            runs.append(skipped_cell(dtype, rows, False, reason) if reason
                        else measure_cell(ctx, unet, unet, dtype, rows, False, grid))
    return runs


def compile_grid(ctx: Ctx, unet: Any, grid: dict[str, Any]) -> list[dict[str, Any]]:
    """torch.compile cells, largest batch first and the dtypes interleaved, while the budget lasts
    (a compilation cannot be cut short: a cell starts only if its estimate fits)."""
    if not ctx.gpu:
        return [skipped_cell(d, r, True, NOT_CPU) for d in DTYPES for r in BATCHES[False]]
    import torch._dynamo as dynamo

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, knob):
            setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 64))
    run = torch.compile(unet, dynamic=False)
    runs, first = [], True
    for rows in reversed(BATCHES[True]):
        for dtype in DTYPES:
            reason = ctx.short(150.0 if first else 75.0)
            if reason:
                runs.append(skipped_cell(dtype, rows, True, reason))
                continue
            try:
                runs.append(measure_cell(ctx, run, unet, dtype, rows, True, grid))
            except Exception as exc:  # a compiler failure is a finding, not the end of the run
                runs.append(skipped_cell(dtype, rows, True, f"error: {type(exc).__name__}: {exc}"[:300]))
            first = False
    return runs


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in runs if isinstance(r["candidates_per_s"], float)]
    if not measured:
        return {}
    b = max(measured, key=lambda r: r["candidates_per_s"])
    return {k: b[k] for k in SCHEMA["best"]}


# ------------------------------------------------------------------------------------------- sections
def p2p_section(ctx: Ctx, unet: Any, grid: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """Fused P2P processors (replace + self-attention window on every edit row) vs the UNet's own SDPA
    processors at the best eager batch (at least 2 rows per half: one source + one edit)."""
    from bench.bench_render import _p2p_controller, _step_time
    from editgen.p2p.generate import p2p_attention

    dtype = best.get("dtype", DTYPES[0])
    rows = max(2, int(best.get("rows_per_half", 2)))
    steps = 25  # the sd15 profile's; the windows cycle through them
    dt = getattr(torch, dtype)
    unet.to(dt)
    inputs = _inputs(unet, 2 * rows, grid["size"], dt, ctx.device)
    hw = (grid["size"] // 8, grid["size"] // 8)
    plain, plain_peak = timed_peak(ctx, lambda: _step_time(unet, inputs, ctx.iters, lambda i: None, ctx.gpu))
    ctrl = _p2p_controller(2 * rows, steps, hw, ctx.device, dt)
    with p2p_attention(unet, ctrl):
        fused, fused_peak = timed_peak(
            ctx, lambda: _step_time(unet, inputs, ctx.iters, lambda i: ctrl.begin_step(i % steps), ctx.gpu))
    mem = fused_peak / plain_peak if isinstance(plain_peak, float) and plain_peak > 0 else NOT_CPU
    return {"dtype": dtype, "rows_per_half": rows, "steps": steps, "plain_step_s": plain, "p2p_step_s": fused,
            "time_ratio": fused / plain, "plain_peak_mib": plain_peak, "p2p_peak_mib": fused_peak, "mem_ratio": mem}


def _replay(p2p: Any, recs: list[Any], rows: int, model: Any) -> tuple[Any, Any, list[bool]]:
    """(packed renders, the first record rendered alone, exact? for the first and last regenerated)."""
    from editgen.engines.p2p_records import render_records
    from editgen.engines.regenerate import regenerate
    from editgen.engines.runtime import Runtime

    packed = render_records(p2p, recs, max_rows=rows)
    alone = render_records(p2p, recs[:1])[0]
    exact = []
    for out in (packed[0], packed[-1]):
        again = regenerate(json.loads(out.record.to_json()), Runtime.wrap(p2p, model))
        exact.append(again.input_image == out.input_image and again.edited_image == out.edited_image
                     and _bits(again.result.latents) == _bits(out.result.latents))
    return packed, alone, exact


def _bits(t: torch.Tensor) -> bytes:
    """A tensor's bytes: bitwise equality that also holds for NaNs (random fp16 weights may overflow)."""
    return t.detach().cpu().contiguous().numpy().tobytes()


def _deterministic_replay(p2p: Any, recs: list[Any], rows: int, model: Any) -> tuple[Any, Any, list[bool], str]:
    """:func:`_replay` under ``torch.use_deterministic_algorithms``: strict, or, if some op has no
    deterministic kernel (it raises), warn-only, saying which op raised."""
    mode = "strict"
    try:
        torch.use_deterministic_algorithms(True)
        try:
            return (*_replay(p2p, recs, rows, model), mode)
        except RuntimeError as exc:
            if "determinis" not in str(exc):
                raise
            mode = f"warn_only (strict raised: {str(exc)[:160]})"
        torch.use_deterministic_algorithms(True, warn_only=True)
        return (*_replay(p2p, recs, rows, model), mode)
    finally:
        torch.use_deterministic_algorithms(False)


def regeneration_section(ctx: Ctx) -> dict[str, Any]:
    """Render candidates packed into one UNet batch, regenerate the first and last from their stored JSON
    records, and compare bytes and latents; also how far packing moves a row from its one-record render."""
    from bench.gpu_proof_models import sd15_pipeline, tiny_pipeline
    from editgen.engines.p2p_records import sample_candidates
    from editgen.engines.record import ModelRef
    from editgen.p2p.candidates import CandidateSpace
    from editgen.p2p.generate import dtype_name

    t0 = time.perf_counter()
    p2p = sd15_pipeline(ctx.device, torch.float16) if ctx.gpu else tiny_pipeline(ctx.device, torch.float32)
    size, steps, pairs, rows = (512, 10, 4, 16) if ctx.gpu else (64, 2, 1, 4)
    model = ModelRef(p2p.model, dtype_name(p2p.dtype))
    space = CandidateSpace(steps=steps, height=size, width=size, scheduler="dpmpp_2m")
    recs = [r for i, e in enumerate(EDITS[:pairs])
            for r in sample_candidates(f"gpu-proof-{i}", SRC, e, rows // (2 * pairs), model=model, space=space)]
    packed, alone, exact, mode = _deterministic_replay(p2p, recs, rows, model)
    diff = float((alone.result.latents - packed[0].result.latents).abs().max())
    return {"model": p2p.model, "dtype": dtype_name(p2p.dtype), "size": size, "steps": steps, "records": len(recs),
            "rows_per_half": rows, "deterministic": mode, "bit_exact": all(exact), "regenerated": len(exact),
            "latents_finite": all(bool(torch.isfinite(o.result.latents).all()) for o in packed),
            "packed_vs_alone_max_abs_diff": diff, "seconds": time.perf_counter() - t0}


def clip_section(ctx: Ctx) -> dict[str, Any]:
    """Image-tower throughput (what the filter's CLIP scoring spends per candidate image)."""
    from bench.gpu_proof_models import clip_model

    model, name, side = clip_model(ctx.device, ctx.gpu)
    dtype = torch.float16 if ctx.gpu else torch.float32
    batch = 64 if ctx.gpu else 8
    images = torch.randn(batch, 3, side, side, device=ctx.device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for i in range(ctx.iters + 2):
            if ctx.gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.encode_image(images)
            if ctx.gpu:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return {"model": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
            "images_per_s": batch / sorted(times)[len(times) // 2]}


def turbo_section(ctx: Ctx) -> dict[str, Any]:
    """The sdxl-turbo profile's render on the SDXL architecture (random) at its 512 px, guidance-free: one
    UNet row per prompt, 32 rows per call; candidates/s by the profile's recipe (UNet only)."""
    from editgen.p2p import compute
    from editgen.pipeline.config import build_config
    from editgen.tiny.sd import build_tiny_sd

    cfg = build_config("sdxl-turbo")
    recipe = compute.profile_recipe(cfg.render, cfg.filter.top_k)
    if ctx.gpu:
        unet, model, size, rows = compute.sdxl_unet(ctx.device, torch.float16), "SDXL UNet (random)", 512, 32
    else:
        from diffusers import UNet2DConditionModel

        path = build_tiny_sd(variant="sdxl") / "unet"
        unet = UNet2DConditionModel.from_pretrained(str(path), use_safetensors=True).eval().requires_grad_(False)
        model, size, rows = "tiny SDXL UNet (random)", 64, 2
    dt = torch.float16 if ctx.gpu else torch.float32
    one = compute._unet_inputs(unet, (size // 8, size // 8), 77, compute._cross_dim(unet, None), ctx.device)
    inputs = {**one, "sample": one["sample"].to(dt).repeat(rows, 1, 1, 1),
              "encoder_hidden_states": one["encoder_hidden_states"].to(dt).repeat(rows, 1, 1),
              "added_cond_kwargs": {k: v.to(dt).repeat(rows, 1) for k, v in one["added_cond_kwargs"].items()}}
    from bench.bench_render import _step_time

    step = _step_time(unet, inputs, ctx.iters, lambda i: None, ctx.gpu)
    flops = compute.measure_unet_flops(unet, size, size).total
    tflops = rows * flops / step / 1e12
    name = torch.cuda.get_device_name(ctx.device) if ctx.gpu else "cpu"
    peak = peak_tflops(name)
    mfu: float | str = NOT_CPU if not ctx.gpu else (UNKNOWN_PEAK if peak is None else tflops / peak)
    row_steps = recipe.rows_per_candidate * recipe.steps
    return {"model": model, "dtype": str(dt).removeprefix("torch."), "size": size, "rows": rows,
            "flops_per_row_step": flops, "row_steps_per_candidate": row_steps, "step_s": step,
            "candidates_per_s": rows / row_steps / step, "unet_tflops": tflops, "mfu": mfu}


def llm_python(given: str | None) -> str | None:
    """The interpreter that has vLLM: --llm-python, this one, or the project's LLM venv."""
    import importlib.util

    if given:
        return given
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = ROOT / ".venv-llm" / "bin" / "python"
    return str(venv) if venv.exists() else None


def vllm_section(ctx: Ctx, python: str | None, work: Path) -> dict[str, Any]:
    """Generated tokens per second (bench/gpu_proof_vllm.py in a child, killed when the budget is spent)."""
    base = {"model": "Qwen2.5-0.5B architecture (random)", "prompts": 256, "prompt_tokens": 64, "max_tokens": 128}
    if not ctx.gpu:
        return {**base, **{f: NOT_CPU for f in SCHEMA["vllm"][4:]}}
    if python is None:
        return {**base, **{f: "skipped: vLLM not installed (--llm-python)" for f in SCHEMA["vllm"][4:]}}
    out = work / "vllm.json"
    cmd = [python, str(ROOT / "bench" / "gpu_proof_vllm.py"), str(out), str(work / "qwen2.5-0.5b-random"),
           "--prompts", "256", "--prompt-tokens", "64", "--max-tokens", "128"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(1.0, ctx.left() - 20))
    except subprocess.TimeoutExpired:
        return {**base, **{f: "skipped: time budget spent (vLLM child killed)" for f in SCHEMA["vllm"][4:]}}
    res = json.loads(out.read_text()) if out.is_file() else {
        "skipped": f"error: vLLM child exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    if "skipped" in res:
        return {**base, **{f: res["skipped"] for f in SCHEMA["vllm"][4:]}}
    return {**base, **{f: res[f] for f in SCHEMA["vllm"][4:]}}


# ------------------------------------------------------------------------------------------- run
def guarded(ctx: Ctx, name: str, need: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section if ``need`` seconds are left; a failure is reported in its fields, and the run goes
    on (a GPU window is too short to lose the other sections to one error)."""
    reason = ctx.short(need)
    if reason:
        return complete({}, name, reason)
    try:
        return complete(fn(), name, "missing")
    except Exception as exc:
        import traceback

        traceback.print_exc()
        return complete({}, name, f"error: {type(exc).__name__}: {exc}"[:300])


def run_all(ctx: Ctx, args: argparse.Namespace) -> dict[str, Any]:
    """The sections in order of importance; torch.compile cells last, with what the budget leaves."""
    import tempfile

    gpu = ctx.gpu
    holder: dict[str, Any] = {}

    def unet() -> dict[str, Any]:
        holder["unet"], grid = unet_setup(ctx)
        holder["grid"] = grid
        return {**{k: grid[k] for k in SCHEMA["unet"][:-1]}, "runs": eager_grid(ctx, holder["unet"], grid)}

    res: dict[str, Any] = {"unet": guarded(ctx, "unet", 40.0 if gpu else 5.0, unet)}
    runs = res["unet"]["runs"] if isinstance(res["unet"]["runs"], list) else []
    eager_best = best_of(runs)
    res["p2p"] = guarded(ctx, "p2p", 20.0 if gpu else 3.0,
                         lambda: p2p_section(ctx, holder["unet"], holder["grid"], eager_best))
    res["regeneration"] = guarded(ctx, "regeneration", 60.0 if gpu else 5.0, lambda: regeneration_section(ctx))
    res["clip"] = guarded(ctx, "clip", 30.0 if gpu else 3.0, lambda: clip_section(ctx))
    res["turbo"] = guarded(ctx, "turbo", 40.0 if gpu else 3.0, lambda: turbo_section(ctx))
    if gpu:
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as work:
        res["vllm"] = guarded(ctx, "vllm", 150.0 if gpu else 0.0,
                              lambda: vllm_section(ctx, llm_python(args.llm_python), Path(work)))
    if "unet" in holder:
        runs.extend(compile_grid(ctx, holder["unet"], holder["grid"]))
    res["best"] = complete(best_of(runs), "best", "skipped: no UNet cell measured")
    return res


def header(ctx: Ctx) -> dict[str, Any]:
    if ctx.gpu:
        name = torch.cuda.get_device_name(ctx.device)
        peak = peak_tflops(name)
        return {"header": f"gpu-proof on {name} (CUDA {torch.version.cuda}, torch {torch.__version__}): GPU figures",
                "gpu_figure": True, "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                "peak_tflops": UNKNOWN_PEAK if peak is None else peak}
    threads = torch.get_num_threads()
    return {"header": f"gpu-proof on CPU ({threads} thread(s), torch {torch.__version__}): reduced run (tiny UNet "
                      "and CLIP at 64 px, 1-2 rows per CFG half, no compile, no vLLM) -- NOT A GPU FIGURE",
            "gpu_figure": False, "device": f"cpu x{threads} threads", "torch": torch.__version__, "cuda": NOT_CPU,
            "peak_tflops": NOT_CPU}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:.4g}"


def table(res: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) rows: one per UNet cell, then every other section's fields."""
    rows = [("device", str(res["device"])), ("dense fp16/bf16 peak TFLOP/s", _fmt(res["peak_tflops"]))]
    u = res["unet"]
    rows += [(f"unet {k}", _fmt(u[k])) for k in SCHEMA["unet"][:-1]]
    for r in u["runs"] if isinstance(u["runs"], list) else []:
        cell = f"unet {r['dtype']} {r['rows_per_half']:>2} rows/half {'compile' if r['compile'] else 'eager  '}"
        if isinstance(r["step_s"], float):
            mfu = f"{r['mfu'] * 100:.1f} %" if isinstance(r["mfu"], float) else r["mfu"]
            value = (f"{r['candidates_per_s']:.3g} cand/s, {r['unet_tflops']:.3g} TFLOP/s, MFU {mfu}, "
                     f"{r['step_s'] * 1e3:.1f} ms/step")
        else:
            value = str(r["step_s"])
        rows.append((cell, value))
    for section in ("best", "p2p", "regeneration", "clip", "turbo", "vllm"):
        rows += [(f"{section} {k}", _fmt(res[section][k])) for k in SCHEMA[section]]
    rows.append(("elapsed s (budget)", f"{res['elapsed_s']:.1f} ({res['budget_s']:.0f})"))
    return rows


def show(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(n) for n, _ in rows) + 2
    print("\n" + title)
    print("-" * min(160, width + 60))
    for name, value in rows:
        print(f"{name:<{width}}{value}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--budget-s", type=float, help="global time budget (default 420 on a GPU, 100 on CPU)")
    ap.add_argument("--iters", type=int, help="timed calls per measurement (default 10 on a GPU, 2 on CPU)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU run)")
    ap.add_argument("--llm-python", help="interpreter with vLLM (default: this one, else .venv-llm)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(args.threads)
    from bench.bench_render import _quiet

    _quiet()
    ctx = Ctx(gpu, torch.device("cuda" if gpu else "cpu"), args.budget_s or (420.0 if gpu else 100.0),
              args.iters or (10 if gpu else 2), start)
    res = {**header(ctx), **run_all(ctx, args), "budget_s": ctx.budget}
    res["elapsed_s"] = time.perf_counter() - start
    res = {k: res[k] for k in TOP}
    show(res["header"], table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
