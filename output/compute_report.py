"""Compute per kept sample: what a run's UNet work cost for each training sample it published.

The render stage records per partition its UNet row-steps, FLOPs (torch's FLOP counter on the model at
the render size, p2p.compute) and, on GPU, seconds; this sums them over the render partitions and divides
by the kept samples. The reference is InstructPix2Pix's recipe: 100 candidates x 100 steps x 4 UNet rows
per caption pair and at most 4 kept, so at least 10,000 row-steps per kept sample whatever the model.
Inverse pairs (instruct.inverse) are published from the kept pairs' own images, so they cost no UNet work:
the per-kept figures stay per forward sample, and `*_per_sample_with_inverse` spread the same work over
every published sample, forward and inverse.
"""

from __future__ import annotations

from collections.abc import Mapping

#: InstructPix2Pix's UNet row-steps per kept sample in its best case (4 of 100 candidates kept per pair).
IP2P_ROW_STEPS_PER_KEPT = 100 * 100 * 4 / 4


def compute_report(
    render_metrics: Mapping[str, float], kept: int, inverse: int = 0
) -> dict[str, float | int | None] | None:
    """Totals and per-kept figures (kept = forward samples), or None when the render partitions carry no
    compute (older runs); with `inverse` samples, the figures per published sample too."""
    if "unet_row_steps" not in render_metrics:
        return None
    row_steps = float(render_metrics["unet_row_steps"])
    flops = float(render_metrics.get("unet_flops", 0.0))
    candidates = int(render_metrics.get("candidates", 0))
    gpu = None if render_metrics.get("gpu_seconds") is None else float(render_metrics["gpu_seconds"])

    def per(value: float | None) -> float | None:
        return None if value is None or kept <= 0 else value / kept

    per_kept = per(row_steps)
    both = kept + inverse
    with_inverse = {} if not inverse else {
        "inverse_samples": int(inverse),
        "unet_row_steps_per_sample_with_inverse": row_steps / both if both else None,
        "unet_flops_per_sample_with_inverse": flops / both if both else None,
        "gpu_seconds_per_sample_with_inverse": None if gpu is None or not both else gpu / both,
    }
    return {
        **with_inverse,
        "kept_samples": int(kept), "candidates": candidates, "unet_row_steps": row_steps, "unet_flops": flops,
        "gpu_seconds": gpu,
        "unet_row_steps_per_kept": per_kept, "unet_flops_per_kept": per(flops),
        "candidates_per_kept": per(float(candidates)), "gpu_seconds_per_kept": per(gpu),
        "inversion_row_steps": float(render_metrics.get("inversion_forward_rows", 0.0))
        + 2 * float(render_metrics.get("inversion_backward_rows", 0.0)),
        "vs_instructpix2pix": None if per_kept is None else per_kept / IP2P_ROW_STEPS_PER_KEPT,
    }


def format_report(report: Mapping[str, float | int | None]) -> str:
    """One line for `editgen status`."""
    def num(key: str, fmt: str) -> str:
        v = report.get(key)
        return "n/a" if v is None else format(v, fmt)

    return (f"compute per kept sample: {num('unet_flops_per_kept', '.3g')} UNet FLOPs, "
            f"{num('unet_row_steps_per_kept', '.0f')} row-steps, {num('candidates_per_kept', '.2f')} candidates, "
            f"{num('gpu_seconds_per_kept', '.3g')} GPU s; {num('vs_instructpix2pix', '.3f')}x InstructPix2Pix's "
            f"row-steps per kept sample (kept {report.get('kept_samples')})" + _with_inverse(report))


def _with_inverse(report: Mapping[str, float | int | None]) -> str:
    """The figures per published sample once inverse pairs (zero UNet work) join the kept ones."""
    if not report.get("inverse_samples"):
        return ""
    flops = report.get("unet_flops_per_sample_with_inverse")
    steps = report.get("unet_row_steps_per_sample_with_inverse")
    return (f"; with {report['inverse_samples']} inverse samples (no UNet work): "
            f"{'n/a' if flops is None else format(flops, '.3g')} UNet FLOPs, "
            f"{'n/a' if steps is None else format(steps, '.0f')} row-steps per published sample")
