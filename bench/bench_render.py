"""Render throughput and UNet compute per kept sample (issue 15), side by side in one run.

On the tiny random SD at 512 px (a 64x64 latent, like SD 1.5's), all through ``p2p.generate.render``:

* rows/s for one pair per UNet batch (4 rows: source + edit, CFG) vs 4 pairs packed into one batch of 16
  rows (4 RenderRequests in one ``render`` call), plus whether packing changes the latents bitwise;
* shared source (one request with 4 edit rows = 10 rows for 4 candidates) vs independent candidates:
  UNet row-steps and time per candidate;
* P2P processors vs a plain diffusers call (default SDPA processors) at the packed batch: time and peak
  memory (targets <= 1.10x / <= 1.05x). CPU: process CPU time, peak RSS rise in a forked child
  (bench_p2p's method); CUDA: wall time, ``torch.cuda.max_memory_allocated``;
* UNet FLOPs per kept sample of the ``sd15`` production profile (FLOPs per row-step measured on the real
  SD 1.5 architecture, meta device) under the acceptance model vs InstructPix2Pix's recipe (target <= 1/10),
  and of the ``sdxl-turbo`` profile beside it (SDXL's UNet, guidance-free, 4 steps; target <= 1/100);
  ``--flops-only`` prints just these.

rows/s counts UNet row-steps per second of the whole ``render`` call (prompt encoding and VAE decode
included). On 2 CPU cores the tiny model at 512 px takes ~1 s per 4-row step, so the default is 2 steps.

``--gpu``: an SD-1.5-sized random-weight UNet, fp16, packed batch, torch.compile: UNet MFU, candidates
per GPU-hour (UNet only) and the P2P overhead. Needs CUDA (``--device cpu --unet tiny`` smoke-runs it).

Prints a table and one JSON line (``BENCH_RENDER {...}``).
    python bench/bench_render.py [--steps 2] [--rounds 2] [--quick]     python bench/bench_render.py --gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bench_p2p import cpu_peak_in_child, cuda_peak, rotated_rounds  # noqa: E402
from editgen.p2p import compute  # noqa: E402
from editgen.p2p.controls import EditControl  # noqa: E402
from editgen.p2p.generate import RenderRequest, initial_noise, load_pipeline, make_scheduler, render  # noqa: E402

SRC = "a photo of a cat sitting on a wooden bench in a park"
EDITS = [
    "a photo of a dog sitting on a wooden bench in a park",
    "a photo of a fox sitting on a wooden bench in a park",
    "a photo of a cat sitting on a stone bench in a park",
    "a photo of a cat sitting on a wooden bench in a garden",
]
TARGET_TIME, TARGET_MEM, TARGET_FLOPS, TARGET_TURBO = 1.10, 1.05, 0.10, 0.01
#: The issue's production settings (item 4), applied on top of the sd15 profile for the second estimate.
PROPOSED = ["render.scheduler=dpmpp_2m", "render.steps=20", "render.early_stop=true", "render.candidates=100"]
#: The bench's acceptance model: q ~ Beta(2, 8) per pair (mean 0.2), as in bench_filter / performance.md.
ACCEPTANCE = compute.AcceptanceModel(beta=(2.0, 8.0))
#: Dense fp16/bf16 tensor-core peaks (FLOP/s), matched by substring of the device name; --peak-tflops wins.
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
         "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def _control(prompt: str) -> EditControl:
    return EditControl(prompt, cross_replace=0.8, self_replace=0.4)


def make_requests(size: int, steps: int, scheduler: str) -> tuple[list[RenderRequest], RenderRequest]:
    """4 independent candidates (one edit each, own seed) and one shared-source group of 4 edits."""
    kw = {"steps": steps, "height": size, "width": size, "scheduler": scheduler, "guidance": 7.5}
    independent = [RenderRequest(SRC, [_control(e)], seed=i, **kw) for i, e in enumerate(EDITS)]
    shared = RenderRequest(SRC, [_control(e) for e in EDITS], seed=0, **kw)
    return independent, shared


def make_variants(p2p: Any, size: int, steps: int, scheduler: str) -> dict[str, Callable[[], Any]]:
    independent, shared = make_requests(size, steps, scheduler)
    noise = torch.cat([initial_noise(r.seed, (1, 4, size // 8, size // 8))[0].expand(2, -1, -1, -1)
                       for r in independent])

    def plain() -> Any:
        with torch.inference_mode():
            return p2p.pipe([p for e in EDITS for p in (SRC, e)], latents=noise, num_inference_steps=steps,
                            guidance_scale=7.5, height=size, width=size, output_type="np").images

    return {
        "batch4": lambda: [render(p2p, [r])[0] for r in independent],
        "packed16": lambda: render(p2p, independent),
        "shared_source": lambda: render(p2p, [shared]),
        "plain16": plain,
    }


#: UNet rows per call and candidates per call of each variant (4 candidates in every one).
ROWS = {"batch4": 16, "packed16": 16, "shared_source": 10, "plain16": 16}


def measure(variants: dict[str, Callable[[], Any]], warm: dict[str, Callable[[], Any]], rounds: int, cuda: bool
            ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(best time on the ratio basis, best wall, peak memory) per variant; memory first, in children."""
    peak = {n: (cuda_peak(fn) if cuda else cpu_peak_in_child(fn, warm[n]))
            for n, fn in variants.items() if n in ("packed16", "plain16")}
    for fn in warm.values():
        fn()
    wall, cpu = rotated_rounds(variants, rounds, cuda)
    best_wall = {n: min(v) for n, v in wall.items()}
    basis = best_wall if cuda else {n: min(v) for n, v in cpu.items()}
    return basis, best_wall, peak


def packing_check(variants: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Does packing 4 pairs into one batch change their latents? (bitwise, and by how much)."""
    alone = torch.cat([r.latents for r in variants["batch4"]()])
    packed = torch.cat([r.latents for r in variants["packed16"]()])
    return {"bitwise_equal": bool(torch.equal(alone, packed)), "max_abs_diff": float((alone - packed).abs().max())}


def flops_estimates() -> dict[str, Any]:
    """SD 1.5 FLOPs per row-step (real architecture, meta device) and the sd15 profile vs IP2P."""
    from editgen.pipeline.config import build_config

    f = compute.measure_unet_flops(compute.sd15_unet(), 512, 512)
    out: dict[str, Any] = {"sd15_flops": f.to_dict(), "acceptance": {"beta": list(ACCEPTANCE.beta or ())}}
    for name, overrides, share in (("sd15", [], None), ("sd15+proposed", PROPOSED, None),
                                   ("sd15+proposed+shared4", PROPOSED, 4)):
        cfg = build_config("sd15", overrides=overrides)
        est = compute.production_estimate(cfg.render, cfg.filter.top_k, f.total, ACCEPTANCE, share=share,
                                          target=TARGET_FLOPS)
        fixed = compute.production_estimate(cfg.render, cfg.filter.top_k, f.total, compute.AcceptanceModel(0.2),
                                            share=share)
        out[name] = {**est, "ratio_fixed_p0.2": fixed["ratio"]}
    out["sdxl-turbo"] = turbo_estimate(f.total)
    return out


def turbo_estimate(ip2p_flops: int) -> dict[str, Any]:
    """The sdxl-turbo profile (SDXL's UNet at the profile's size, guidance-free, few steps, shared sources)
    against InstructPix2Pix's recipe on SD 1.5 at 512 px (target <= 1/100)."""
    from editgen.pipeline.config import build_config

    cfg = build_config("sdxl-turbo")
    xl = compute.measure_unet_flops(compute.sdxl_unet(), cfg.render.height, cfg.render.width)
    est = compute.production_estimate(cfg.render, cfg.filter.top_k, xl.total, ACCEPTANCE, target=TARGET_TURBO,
                                      ip2p_flops_per_row=ip2p_flops)
    fixed = compute.production_estimate(cfg.render, cfg.filter.top_k, xl.total, compute.AcceptanceModel(0.2),
                                        ip2p_flops_per_row=ip2p_flops)
    return {**est, "ratio_fixed_p0.2": fixed["ratio"], "unet_flops": xl.to_dict()}


def print_table(res: dict[str, Any]) -> None:
    basis, wall, peak, steps = res["time_s"], res["wall_s"], res["peak_mib"], res["steps"]
    print(f"render bench: tiny SD, {res['size']}px, {steps} {res['scheduler']} steps, {res['device']}; "
          f"time = {res['time_basis']}, best of {res['rounds']}")
    print(f"{'variant':16s} {'rows':>5s} {'time s':>7s} {'wall s':>7s} {'rows/s':>7s} {'cand/s':>7s} "
          f"{'row-steps/cand':>15s} {'peak MiB':>9s}")
    for n in basis:
        mib = f"{peak[n]:9.1f}" if n in peak else f"{'':9s}"
        print(f"{n:16s} {ROWS[n]:5d} {basis[n]:7.2f} {wall[n]:7.2f} {ROWS[n] * steps / basis[n]:7.2f} "
              f"{4 / basis[n]:7.3f} {ROWS[n] * steps / 4:15.1f} {mib}")
    r = res["ratios"]
    print(f"packed16 / batch4 rows/s: {r['packed_speedup']:.3f}x; packed latents == separate: "
          f"{res['packing']['bitwise_equal']} (max |diff| {res['packing']['max_abs_diff']:.2e})")
    print(f"shared source / independent: row-steps per candidate {r['shared_row_steps']:.3f}x, time per "
          f"candidate {r['shared_time']:.3f}x")
    print(f"P2P / plain SDPA at 16 rows: time {r['p2p_time']:.3f}x (target <= {TARGET_TIME}), memory "
          f"{r['p2p_mem']:.3f}x (target <= {TARGET_MEM}) -> {'PASS' if res['p2p_pass'] else 'FAIL'}")
    fl = res["flops"]
    sd = fl["sd15_flops"]
    print(f"tiny UNet at {res['size']}px: {res['tiny_flops_per_row'] / 1e9:.2f} GFLOP/row-step; achieved "
          f"{res['tiny_gflops_per_s']:.1f} GFLOP/s (packed16)")
    print(f"SD 1.5 UNet at 512px: {sd['total'] / 1e9:.1f} GFLOP/row-step ({sd['dense'] / 1e9:.1f} conv+linear, "
          f"{sd['attention'] / 1e9:.1f} attention scores)")
    ip = fl["sd15"]["ip2p"]
    dense_pair = ip["flops_per_pair"] * sd["dense"] / sd["total"]
    print(f"IP2P recipe: {ip['flops_per_pair'] / 1e15:.2f} PFLOP/pair ({dense_pair / 1e15:.2f} conv+linear only, "
          f"the issue's figure), {ip['flops_per_kept'] / 1e15:.2f} PFLOP/kept, "
          f"{ip['candidates_per_kept']:.2f} candidates/kept (acceptance q ~ Beta(2, 8))")
    for name in ("sd15", "sd15+proposed", "sd15+proposed+shared4"):
        e, rec = fl[name], fl[name]["profile"]["recipe"]
        print(f"{name:22s} {rec['steps']:3d} evals x {rec['rows_per_candidate']:.2f} rows, cap "
              f"{rec['max_candidates']}, early stop {rec['early_stop']!s:5s}: "
              f"{e['profile']['flops_per_kept'] / 1e15:.3f} PFLOP/kept = {e['ratio']:.4f}x IP2P "
              f"(p=0.2 fixed: {e['ratio_fixed_p0.2']:.4f}x) -> {'PASS' if e['pass'] else 'FAIL'} (<= 1/10)")
    print_turbo(fl)


def print_turbo(fl: dict[str, Any]) -> None:
    """sdxl-turbo beside sd15: UNet FLOPs per kept sample and the ratio to InstructPix2Pix's recipe."""
    e, sd = fl["sdxl-turbo"], fl["sd15"]
    rec = e["profile"]["recipe"]
    print(f"{'sdxl-turbo':22s} {rec['steps']:3d} evals x {rec['rows_per_candidate']:.2f} rows (no CFG), SDXL UNet "
          f"{e['unet_flops']['total'] / 1e9:.0f} GFLOP/row-step: {e['profile']['flops_per_kept'] / 1e15:.4f} PFLOP/kept"
          f" = {e['ratio']:.4f}x IP2P (sd15: {sd['ratio']:.4f}x; p=0.2 fixed: {e['ratio_fixed_p0.2']:.4f}x) -> "
          f"{'PASS' if e['pass'] else 'FAIL'} (<= 1/100)")


def cpu_main(args: argparse.Namespace) -> dict[str, Any]:
    from editgen.tiny.sd import build_tiny_sd, default_cache_dir

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads)
    p2p = load_pipeline(str(build_tiny_sd(default_cache_dir() / "tiny-sd", "sd")), device, args.dtype, args.scheduler)
    p2p.pipe.scheduler = make_scheduler(args.scheduler, p2p.base_scheduler_config)  # same sampler for plain
    variants = make_variants(p2p, args.size, args.steps, args.scheduler)
    basis, wall, peak = measure(variants, make_variants(p2p, 64, 1, args.scheduler), args.rounds, cuda)
    tiny = compute.pipeline_flops(p2p, args.size, args.size, cache_file=False)
    ratios = {"packed_speedup": basis["batch4"] / basis["packed16"],
              "shared_row_steps": ROWS["shared_source"] / ROWS["packed16"],
              "shared_time": basis["shared_source"] / basis["packed16"],
              "p2p_time": basis["packed16"] / basis["plain16"], "p2p_mem": peak["packed16"] / peak["plain16"]}
    return {
        "bench": "render", "size": args.size, "steps": args.steps, "scheduler": args.scheduler,
        "rounds": args.rounds, "time_basis": "wall" if cuda else "process_cpu",
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads",
        "time_s": basis, "wall_s": wall, "peak_mib": {n: v / 2**20 for n, v in peak.items()}, "ratios": ratios,
        "p2p_pass": ratios["p2p_time"] <= TARGET_TIME and ratios["p2p_mem"] <= TARGET_MEM,
        "packing": packing_check(variants), "tiny_flops_per_row": tiny.total,
        "tiny_gflops_per_s": ROWS["packed16"] * args.steps * tiny.total / basis["packed16"] / 1e9,
        "flops": flops_estimates(),
    }


# ------------------------------------------------------------------------------------------- --gpu
def _p2p_controller(rows: int, steps: int, latent_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
                    ) -> Any:
    """P2P state for ``rows`` CFG rows = rows/4 (source, edit) pairs, as ``render`` builds it."""
    import tempfile

    from transformers import CLIPTokenizer

    from editgen.p2p.controls import compile_edit
    from editgen.p2p.processors import EditRow, P2PController
    from editgen.p2p.seq_align import tokenize
    from editgen.tiny.clip_tokenizer import write_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")))
    edit = _control(EDITS[0])
    compiled = compile_edit(edit, tokenize(tok, SRC), tokenize(tok, edit.prompt), steps)
    edits = [EditRow(2 * i + 1, 2 * i, compiled) for i in range(rows // 4)]
    return P2PController(n_rows=rows // 2, cfg=True, edits=edits, num_steps=steps, latent_hw=latent_hw,
                         device=device, dtype=dtype)


def _step_time(unet: Any, inputs: dict[str, Any], iters: int, before: Callable[[int], None], cuda: bool) -> float:
    """Median seconds per UNet call over ``iters`` calls, after 3 warm-up calls (compilation)."""
    times = []
    with torch.inference_mode():
        for i in range(iters + 3):
            before(i)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            unet(**inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def gpu_main(args: argparse.Namespace) -> dict[str, Any]:
    """SD-1.5-sized random UNet, packed CFG batch: plain vs P2P processors; MFU; candidates per GPU-hour."""
    from editgen.pipeline.config import build_config

    device = torch.device("cuda" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    if args.unet == "sd15":
        unet = compute.sd15_unet(device, dtype)
    else:
        from diffusers import UNet2DConditionModel

        from editgen.tiny.sd import build_tiny_sd, default_cache_dir

        path = build_tiny_sd(default_cache_dir() / "tiny-sd", "sd") / "unet"
        unet = UNet2DConditionModel.from_pretrained(str(path), use_safetensors=True).to(device, dtype).eval()
    flops = compute.measure_unet_flops(unet, args.size, args.size)
    rows, hw = args.batch, (args.size // 8, args.size // 8)
    cross = compute._cross_dim(unet, None)
    inputs = {"sample": torch.randn(rows, 4, *hw, device=device, dtype=dtype),
              "timestep": torch.tensor([500], device=device),
              "encoder_hidden_states": torch.randn(rows, 77, cross, device=device, dtype=dtype), "return_dict": False}
    run = unet
    if args.compile:
        import torch._dynamo as dynamo

        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 64))
        run = torch.compile(unet, dynamic=False)
    plain = _step_time(run, inputs, args.iters, lambda i: None, cuda)
    from editgen.p2p.generate import p2p_attention

    ctrl = _p2p_controller(rows, args.steps, hw, device, dtype)
    with p2p_attention(unet, ctrl):
        p2p = _step_time(run, inputs, args.iters, lambda i: ctrl.begin_step(i % args.steps), cuda)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    achieved = rows * flops.total / plain
    out: dict[str, Any] = {"bench": "render_gpu", "device": name, "dtype": str(dtype), "unet": args.unet,
                           "size": args.size, "batch_rows": rows, "compile": args.compile,
                           "flops_per_row": flops.to_dict(), "step_s_plain": plain, "step_s_p2p": p2p,
                           "p2p_overhead": p2p / plain, "achieved_tflops": achieved / 1e12,
                           "mfu": None if peak is None else achieved / peak, "peak_tflops": (peak or 0) / 1e12}
    for label, overrides in (("sd15", []), ("sd15+proposed", PROPOSED)):
        cfg = build_config("sd15", overrides=overrides)
        rec = compute.profile_recipe(cfg.render, cfg.filter.top_k)
        cand_s = p2p / rows * rec.rows_per_candidate * rec.steps  # UNet only: no VAE decode, no CLIP
        out[f"candidates_per_gpu_hour_{label}"] = 3600 / cand_s
    return out


def print_gpu(res: dict[str, Any]) -> None:
    print(f"render GPU bench: {res['unet']} UNet, {res['size']}px, {res['batch_rows']} rows, {res['dtype']}, "
          f"compile={res['compile']}, {res['device']}")
    mfu = "n/a (unknown peak; --peak-tflops)" if res["mfu"] is None else f"{res['mfu'] * 100:.1f} %"
    print(f"UNet step: plain {res['step_s_plain'] * 1e3:.1f} ms, P2P {res['step_s_p2p'] * 1e3:.1f} ms "
          f"(P2P overhead {res['p2p_overhead']:.3f}x); {res['achieved_tflops']:.1f} TFLOP/s, MFU {mfu}")
    for k in ("sd15", "sd15+proposed"):
        print(f"candidates per GPU-hour ({k}, UNet only): {res[f'candidates_per_gpu_hour_{k}']:.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 px, 1 step, 1 round")
    ap.add_argument("--size", type=int)
    ap.add_argument("--steps", type=int, help="denoising steps (default 2 on CPU, 20 with --gpu)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--scheduler", default="dpmpp_2m")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on a shared 2-core box)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--flops-only", action="store_true", help="only the UNet FLOPs per kept sample vs IP2P")
    ap.add_argument("--gpu", action="store_true", help="SD-1.5-sized UNet throughput/MFU (needs CUDA)")
    ap.add_argument("--unet", choices=("sd15", "tiny"), default="sd15", help="--gpu: which UNet")
    ap.add_argument("--batch", type=int, default=32, help="--gpu: UNet rows per batch (8 candidates with CFG)")
    ap.add_argument("--iters", type=int, default=20, help="--gpu: timed UNet calls per variant")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="--gpu: skip torch.compile")
    ap.add_argument("--peak-tflops", type=float, help="--gpu: the device's dense fp16 peak, for MFU")
    args = ap.parse_args(argv)
    args.size = args.size or (256 if args.quick else 512)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.gpu:
        if not torch.cuda.is_available() and args.device in ("auto", "cuda"):
            print("--gpu needs CUDA (none here); skipped")
            print("BENCH_RENDER_GPU " + json.dumps({"bench": "render_gpu", "skipped": "no CUDA"}))
            return 0
        args.steps = args.steps or 20
        res = gpu_main(args)
        print_gpu(res)
        print("BENCH_RENDER_GPU " + json.dumps(res, sort_keys=True))
        return 0
    if args.flops_only:
        fl = flops_estimates()
        for name in ("sd15", "sd15+proposed", "sdxl-turbo"):
            print(f"{name}: {fl[name]['profile']['flops_per_kept'] / 1e15:.4f} PFLOP/kept = "
                  f"{fl[name]['ratio']:.4f}x IP2P ({fl[name]['ip2p']['flops_per_kept'] / 1e15:.2f} PFLOP/kept)")
        print("BENCH_RENDER " + json.dumps({"bench": "render", "flops": fl}, sort_keys=True, default=str))
        return 0
    args.steps = args.steps or (1 if args.quick else 2)
    _quiet()
    res = cpu_main(args)
    print_table(res)
    print("BENCH_RENDER " + json.dumps(res, sort_keys=True, default=str))
    return 0


def _quiet() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
