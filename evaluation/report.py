"""The evaluation's files: REPORT/curve.json, REPORT/curve.png, REPORT/metrics.json, and the printed table.

Both JSON files carry the same `provenance` block (model and its UNet checksum, CLIP and DINOv2 with their
library versions, torch/diffusers, preprocessing, seeds, the grid, the data and its sha256 per file), so
either file alone says what produced its numbers. Nothing in them records a time, a host or a duration:
a rerun on the same machine and versions writes the same bytes.
"""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from editgen.evaluation.metrics import TARGET_METRICS

CURVE_JSON, CURVE_PNG, METRICS_JSON = "curve.json", "curve.png", "metrics.json"
#: Distributions whose versions decide the numbers.
VERSIONED = ("editgen", "torch", "diffusers", "transformers", "open_clip_torch", "numpy", "pillow", "matplotlib")


def versions() -> dict[str, str | None]:
    """Installed versions of VERSIONED (None: not installed) and Python's."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_json(report: Path, curve: dict[str, Any], metrics: dict[str, Any]) -> None:
    (report / CURVE_JSON).write_text(_dump(curve), encoding="utf-8")
    (report / METRICS_JSON).write_text(_dump(metrics), encoding="utf-8")


def plot_curve(points: list[dict[str, Any]], title: str, path: Path) -> bool:
    """IP2P's plot: x = CLIP image similarity, y = CLIP direction similarity, each point labelled with its
    image guidance. False (no PNG) when no point has a direction similarity (no captions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in points if p["clip_direction_similarity"] is not None]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    xs = [p["clip_image_similarity"] for p in shown]
    ys = [p["clip_direction_similarity"] for p in shown]
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(shown, xs, ys, strict=True):
        ax.annotate(f"{p['image_guidance']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("CLIP image similarity (input vs output)")
    ax.set_ylabel("CLIP direction similarity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(useOffset=False)  # an offset ("1e-5+9.9e-1") would sit on the axis label
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return True


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(curve: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The short table printed at the end: one line per grid point, curve and MagicBrush metrics."""
    by_guidance = {row["image_guidance"]: row for row in metrics["per_image_guidance"]}
    head = f"{'img guid':>8}  {'CLIP dir':>8}  {'CLIP img':>8}  " + "  ".join(f"{m:>8}" for m in TARGET_METRICS)
    lines = [head]
    for p in curve["points"]:
        row = by_guidance.get(p["image_guidance"], {})
        mark = "*" if p["image_guidance"] == metrics["default_image_guidance"] else " "
        lines.append(f"{p['image_guidance']:>7.2f}{mark}  {_cell(p['clip_direction_similarity']):>8}  "
                     f"{_cell(p['clip_image_similarity']):>8}  "
                     + "  ".join(f"{_cell(row.get(m)):>8}" for m in TARGET_METRICS))
    prov = curve["provenance"]
    lines.append(f"{prov['data']['samples']} samples, text guidance {prov['sampling']['text_guidance']:g}, "
                 f"{prov['sampling']['steps']} steps, seed {prov['sampling']['seed']}; * = default image guidance")
    lines += [f"note: {n}" for n in curve["notes"] + metrics["notes"]]
    return "\n".join(lines)
