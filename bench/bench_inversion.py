"""Real-image inversion cost and fidelity per method on the tiny SD model (issue 13, deliverable 7).

For each method (ddim, negative_prompt, null_text) it inverts one synthetic image at the render size and
steps, then reconstructs it at the render guidance (and DDIM also at guidance 1, its exact regime). It
reports the UNet rows the inversion spent (counted with a forward hook and checked against
``p2p.inversion.inversion_cost``), CPU/wall seconds of the inversion alone (the P2P render that follows
costs the same for every method), and the reconstruction error: latent MSE, PSNR/SSIM of the decoded
reconstruction vs the decoded encoded image (VAE loss excluded).

The random tiny UNet is no denoiser (tests/tiny_prior.py): ``--bed prior`` (default) adds the
analytic Gaussian-prior term so errors mean something; ``--bed raw`` measures the bare model. Seconds
on the tiny model only show the *ratio* between methods; a GPU projection scales the row counts.

    python bench/bench_inversion.py                 # 64 px, 50 steps, 10 inner steps (~1-2 min on 2 CPUs)
    python bench/bench_inversion.py --quick         # 32 px, 10 steps
Prints a table and one JSON line (``BENCH_INVERSION {...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from editgen.p2p import inversion as inv  # noqa: E402
from editgen.p2p.generate import P2PPipeline, load_pipeline  # noqa: E402
from editgen.tiny.sd import build_tiny_sd, default_cache_dir  # noqa: E402
from tests.tiny_prior import with_gaussian_prior  # noqa: E402

SRC = "a photo of a cat sitting on a bench"
WIDTHS = (16, 10, 9, 8, 7, 9, 7, 7)


def _image(size: int) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx) * np.cos(5 * yy)], -1)[None]
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float().contiguous()


def _load(dtype: str, bed: str, size: int) -> tuple[P2PPipeline, torch.nn.Module]:
    """The tiny model with its VAE scale calibrated to unit-variance latents (as SD's 0.18215 is)."""
    p2p = load_pipeline(build_tiny_sd(default_cache_dir() / "tiny-sd", "sd"), "cpu", "float32", "ddim")
    if dtype == "float64":
        p2p.pipe.to(torch.float64)
        p2p.dtype = torch.float64
    raw = inv.encode_image(p2p, _image(size).to(p2p.dtype)) / p2p.pipe.vae.config.scaling_factor
    p2p.pipe.vae.register_to_config(scaling_factor=float(1 / raw.std()))
    unet = p2p.pipe.unet
    return (with_gaussian_prior(p2p) if bed == "prior" else p2p), unet


def _measure(p2p: P2PPipeline, unet: torch.nn.Module, method: str, args: argparse.Namespace) -> dict:
    z0 = inv.encode_image(p2p, _image(args.size).to(p2p.dtype))
    cfg = inv.InversionConfig(method=method, inner_steps=args.inner)
    rows = {"f": 0, "b": 0}

    def hook(_m, a, _o) -> None:
        rows["f"] += a[0].shape[0]
        rows["b"] += a[0].shape[0] if _o[0].requires_grad else 0

    handle = unet.register_forward_hook(hook)
    c0, w0 = time.process_time(), time.perf_counter()
    res = inv.invert(p2p, z0, SRC, args.steps, args.guidance, cfg)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    handle.remove()
    cost = inv.inversion_cost(method, args.steps, args.inner, inner_used=res.inner_used or None)
    assert (rows["f"], rows["b"]) == (cost.forward_rows, cost.backward_rows), (rows, cost)
    cond = inv.text_embeddings(p2p, [SRC])
    err = inv.reconstruction_error(p2p, inv.reconstruct(p2p, res.x_T, cond, res.uncond, args.guidance), z0)
    out = {"method": method, "unet_rows": cost.forward_rows, "backward_rows": cost.backward_rows,
           "inner_used": sum(res.inner_used), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
           "latent_mse": err.latent_mse, "psnr": err.psnr, "ssim": err.ssim}
    if method == "ddim":
        g1 = inv.reconstruction_error(p2p, inv.reconstruct(p2p, res.x_T, cond, res.uncond, 1.0), z0)
        out.update(g1_latent_mse=g1.latent_mse, g1_psnr=g1.psnr, g1_ssim=g1.ssim)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--bed", choices=("prior", "raw"), default="prior")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="32 px, 10 steps")
    args = ap.parse_args()
    if args.quick:
        args.size, args.steps = 32, 10
    torch.set_num_threads(args.threads)
    p2p, unet = _load(args.dtype, args.bed, args.size)
    results = [_measure(p2p, unet, m, args) for m in ("ddim", "negative_prompt", "null_text")]
    base = results[0]["cpu_s"]
    print(f"tiny SD ({args.bed} bed), {args.size} px, {args.steps} DDIM steps, guidance {args.guidance}, "
          f"inner {args.inner}, {args.dtype}, {args.threads} thread(s)")
    head = ("method", "UNet rows", "bwd rows", "cpu s", "x ddim", "lat MSE", "PSNR", "SSIM")
    print("".join(f"{h:<16}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(head, WIDTHS, strict=True))))
    for r in results:
        print(f"{r['method']:<16}{r['unet_rows']:>10}{r['backward_rows']:>9}{r['cpu_s']:>8.2f}"
              f"{r['cpu_s'] / base:>7.1f}{r['latent_mse']:>9.4f}{r['psnr']:>7.2f}{r['ssim']:>7.3f}")
    d = results[0]
    print(f"{'ddim @ g=1':<16}{'':>10}{'':>9}{'':>8}{'':>7}{d['g1_latent_mse']:>9.4f}{d['g1_psnr']:>7.2f}"
          f"{d['g1_ssim']:>7.3f}")
    print("BENCH_INVERSION " + json.dumps({"config": vars(args), "results": results}))


if __name__ == "__main__":
    main()
