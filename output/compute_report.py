"""Compute per kept sample: what a run's UNet work cost for each training sample it published.

The render stage records per partition its UNet row-steps, FLOPs (torch's FLOP counter on the model at
the render size, p2p.compute) and, on GPU, seconds; this sums them over the render partitions and divides
by the kept samples. The reference is InstructPix2Pix's recipe: 100 candidates x 100 steps x 4 UNet rows
per caption pair and at most 4 kept, so at least 10,000 row-steps per kept sample whatever the model.
"""

from __future__ import annotations

from collections.abc import Mapping

#: InstructPix2Pix's UNet row-steps per kept sample in its best case (4 of 100 candidates kept per pair).
IP2P_ROW_STEPS_PER_KEPT = 100 * 100 * 4 / 4


def compute_report(render_metrics: Mapping[str, float], kept: int) -> dict[str, float | int | None] | None:
    """Totals and per-kept figures, or None when the render partitions carry no compute (older runs)."""
    if "unet_row_steps" not in render_metrics:
        return None
    row_steps = float(render_metrics["unet_row_steps"])
    flops = float(render_metrics.get("unet_flops", 0.0))
    candidates = int(render_metrics.get("candidates", 0))
    gpu = None if render_metrics.get("gpu_seconds") is None else float(render_metrics["gpu_seconds"])

    def per(value: float | None) -> float | None:
        return None if value is None or kept <= 0 else value / kept

    per_kept = per(row_steps)
    return {
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
            f"row-steps per kept sample (kept {report.get('kept_samples')})")
