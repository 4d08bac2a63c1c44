"""Prompt-to-Prompt cost vs a plain SDPA generation of the same batch (tiny SD model).

Targets: a fused P2P pair costs <= 1.15x the time and <= 1.10x the peak memory of a plain diffusers
generation of the same two prompts (source + edit, CFG on, same noise, DDIM). The explicit-probability
reference path is measured too, for scale.

Memory (CPU): the model is loaded once; each variant runs in a child forked right after loading
(before any generation, so no allocator state is inherited). glibc's malloc thresholds are pinned so
RSS tracks live memory; the child runs the variant once at 64 px (lazy one-time initialisation),
resets the kernel's RSS high-water mark, runs the real generation and reports the rise of the peak
RSS (VmHWM) over its RSS before it. On CUDA: ``torch.cuda.max_memory_allocated`` above the pre-run
allocation.

Time: measured afterwards in the parent, variants interleaved round by round (order rotated each
round), best of the rounds. On a shared CPU box wall time swings by tens of percent with other
people's load, so CPU ratios use process CPU time (user + sys, one intra-op thread by default);
wall-clock ratios are printed next to them. On CUDA: wall time with synchronisation.

Prints a table and one JSON line (``BENCH_P2P {...}``).

    python bench/bench_p2p.py            # 512 px, 6 steps, 3 rounds (~3-4 min on 2 busy CPU cores)
    python bench/bench_p2p.py --quick    # 256 px, 4 steps, 3 rounds (~1 min)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from editgen.p2p.controls import BlendConfig, EditControl  # noqa: E402
from editgen.p2p.generate import RenderRequest, initial_noise, load_pipeline, make_scheduler, render_one  # noqa: E402
from editgen.tiny.sd import build_tiny_sd, default_cache_dir  # noqa: E402

SRC = "a photo of a cat sitting on a wooden bench in a park"
EDIT = "a photo of a dog sitting on a wooden bench in a park"
REFINED = "a photo of a fluffy cat sitting on a wooden bench in a sunny park"
TARGET_TIME, TARGET_MEM = 1.15, 1.10


def make_variants(p2p, size: int, steps: int) -> dict[str, Callable[[], object]]:
    """Each variant renders the same 2-prompt batch (4 UNet rows with CFG) from the same noise."""
    z, _ = initial_noise(0, (1, 4, size // 8, size // 8))

    def plain():
        with torch.inference_mode():
            return p2p.pipe(
                [SRC, EDIT],
                latents=z.expand(2, -1, -1, -1),
                num_inference_steps=steps,
                guidance_scale=7.5,
                height=size,
                width=size,
                output_type="np",
            ).images

    def req(control: EditControl) -> RenderRequest:
        return RenderRequest(SRC, [control], seed=0, steps=steps, guidance=7.5, height=size, width=size)

    replace = EditControl(EDIT, cross_replace=0.8, self_replace=0.4, blend=BlendConfig(["cat", "dog"]))
    refine = EditControl(REFINED, cross_replace=0.8, self_replace=0.4, reweight={"fluffy": 2.0})
    return {
        "plain": plain,
        "p2p_replace_blend": lambda: render_one(p2p, req(replace)),
        "p2p_refine_reweight": lambda: render_one(p2p, req(refine)),
        "explicit_replace_blend": lambda: render_one(p2p, req(replace), explicit=True),
    }


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fixed_malloc_thresholds() -> None:
    """Make RSS track live memory: glibc otherwise raises its mmap threshold after large frees and
    then serves big tensors from a heap it does not give back, so the same generation's peak RSS
    swung by 25% between runs depending on allocation history. With fixed thresholds every large
    tensor is its own mapping, returned to the OS when freed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: measure as is
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 64 * 1024)
    libc.malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_peak_in_child(fn: Callable[[], object], warm: Callable[[], object] | None = None) -> float:
    """Peak RSS rise (bytes) of one call, in a child forked from the freshly loaded process.

    ``warm`` (the same variant at a tiny size) runs first so one-time lazy initialisation (kernel
    caches, first-call allocations) is not billed to the generation; the high-water mark is then
    reset to the current RSS and the rise during ``fn`` is reported.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            _fixed_malloc_thresholds()
            if warm is not None:
                warm()
            start = _rss_now()
            if not _reset_peak_rss():
                start = max(start, _peak_rss())
            fn()
            msg = json.dumps({"peak": _peak_rss() - start})
        except BaseException as exc:  # report, never fall through into the parent's code
            msg = json.dumps({"error": repr(exc)})
        os.write(write_fd, msg.encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks))
    if "error" in out:
        raise RuntimeError(f"memory child failed: {out['error']}")
    return float(out["peak"])


def cuda_peak(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


def timed(fn: Callable[[], object], cuda: bool) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if cuda:
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 px, 4 steps")
    ap.add_argument("--size", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on a shared 2-core box)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", help="diffusers folder (default: tiny SD under $EDITGEN_CACHE)")
    args = ap.parse_args(argv)
    size = args.size or (256 if args.quick else 512)
    steps = args.steps or (4 if args.quick else 6)
    rounds = args.rounds or 3
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads)

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for lib in (dlog, tlog):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    model = args.model or str(build_tiny_sd(default_cache_dir() / "tiny-sd", "sd"))
    p2p = load_pipeline(model, device, args.dtype, "ddim")
    p2p.pipe.scheduler = make_scheduler("ddim", p2p.base_scheduler_config)  # same sampler for the baseline
    variants = make_variants(p2p, size, steps)
    warmups = make_variants(p2p, 64, 1)

    wall, cpu, peak = measure(variants, warmups, rounds, cuda)
    report(p2p, variants, wall, cpu, peak, size, steps, rounds, cuda)
    return 0


def measure(variants: dict, warmups: dict, rounds: int, cuda: bool) -> tuple[dict, dict, dict]:
    """(wall times, CPU times, peak memory) per variant; memory first, then rotated timing rounds."""
    # memory first: children forked from a process that has not generated anything yet
    peak = {name: (cuda_peak(fn) if cuda else cpu_peak_in_child(fn, warmups[name])) for name, fn in variants.items()}
    for name, fn in variants.items():  # warm-up (oneDNN primitives, allocator); explicit shares them
        if not name.startswith("explicit"):
            fn()
    wall, cpu = rotated_rounds(variants, rounds, cuda)
    return wall, cpu, peak


def rotated_rounds(variants: dict, rounds: int, cuda: bool) -> tuple[dict, dict]:
    """(wall times, CPU times) per variant over `rounds`, the order rotated so nobody always goes first."""
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = timed(variants[name], cuda)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def report(p2p: Any, variants: dict, wall: dict, cpu: dict, peak: dict, size: int, steps: int, rounds: int,
           cuda: bool) -> None:
    best_wall = {name: min(ts) for name, ts in wall.items()}
    best_cpu = {name: min(ts) for name, ts in cpu.items()}
    cost = best_wall if cuda else best_cpu  # the time the targets are checked on
    dev_name = torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()} threads"
    print(f"P2P bench: tiny SD, {size}px, {steps} DDIM steps, batch 2 prompts x CFG, {dev_name}, {p2p.dtype}")
    print(f"time ratios on {'wall' if cuda else 'process CPU'} time, best of {rounds}; memory = peak rise")
    head = f"{'variant':24s} {'wall s':>7s} {'cpu s':>7s} {'time x':>7s} {'wall x':>7s} {'peak MiB':>9s} {'mem x':>6s}"
    print(head)
    for name in variants:
        print(
            f"{name:24s} {best_wall[name]:7.2f} {best_cpu[name]:7.2f} {cost[name] / cost['plain']:7.3f} "
            f"{best_wall[name] / best_wall['plain']:7.3f} {peak[name] / 2**20:9.1f} {peak[name] / peak['plain']:6.3f}"
        )
    ratios = {
        name: {
            "time": cost[name] / cost["plain"],
            "wall": best_wall[name] / best_wall["plain"],
            "mem": peak[name] / peak["plain"],
        }
        for name in variants
    }
    fused = [n for n in variants if n.startswith("p2p")]
    ok = all(ratios[n]["time"] <= TARGET_TIME and ratios[n]["mem"] <= TARGET_MEM for n in fused)
    print(f"targets: fused time <= {TARGET_TIME}x, memory <= {TARGET_MEM}x -> {'PASS' if ok else 'FAIL'}")
    record = {
        "bench": "p2p",
        "device": dev_name,
        "dtype": str(p2p.dtype),
        "size": size,
        "steps": steps,
        "rounds": rounds,
        "time_basis": "wall" if cuda else "process_cpu",
        "wall_s": {k: round(v, 4) for k, v in best_wall.items()},
        "cpu_s": {k: round(v, 4) for k, v in best_cpu.items()},
        "wall_median_s": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "peak_mib": {k: round(v / 2**20, 2) for k, v in peak.items()},
        "ratios": {k: {m: round(x, 4) for m, x in v.items()} for k, v in ratios.items()},
        "targets": {"time": TARGET_TIME, "mem": TARGET_MEM},
        "pass": ok,
    }
    print("BENCH_P2P " + json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
