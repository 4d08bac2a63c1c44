"""What a model edit changed and what it preserved: the same seeded prompts from the original and the edited
model, side by side (docs/model_edits.md).

Prompts: each edit's own prompt (TIME's source, erase / debias / forget's concept), the preserved prompts
(``render.model_edit_preserve``) and, by default, the bundled neutral set (prompts/model_edit_neutral.txt).
Each is rendered from both models with the same seed (so the same noise), then compared with the filter's
scores: CLIP image similarity (filters.pairs.clip_score, the run's filter CLIP), SSIM
(filters.pairs.consistency) and the mean absolute pixel change in [0, 1]. For an edit's own prompt the CLIP
score of each image toward the destination (TIME's destination, erase's anchor, debias's attributes) and
toward the erased concept (erase, forget) is given before and after. Preserved and neutral prompts that
move past a threshold (``EditReportConfig``) are flagged; edit prompts are expected to move.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from editgen.filters.pairs.clip_score import ClipScorer, clip_similarities
from editgen.filters.pairs.consistency import whole_ssim
from editgen.p2p.generate import RenderRequest, render
from editgen.pipeline.settings.model_edits import (
    REPORT_HTML,
    REPORT_JSON,
    DebiasEdit,
    EditReportConfig,
    EditSet,
    EraseEdit,
    ForgetEdit,
    ModelEdit,
    TimeEdit,
)
from editgen.prompts.builder import model_edit_neutral_prompts


@dataclass
class ReportPrompt:
    """One prompt of the report: what it is for and, for an edit's own prompt, the texts to score against."""

    prompt: str
    role: str  # "edit", "preserve" or "neutral"
    toward: list[str] = field(default_factory=list)
    away: list[str] = field(default_factory=list)


def _edit_prompt(edit: ModelEdit) -> ReportPrompt:
    if isinstance(edit, TimeEdit):
        return ReportPrompt(edit.source, "edit", toward=[edit.destination])
    if isinstance(edit, EraseEdit):
        return ReportPrompt(edit.concept, "edit", toward=[edit.anchor] if edit.anchor.strip() else [],
                            away=[edit.concept])
    if isinstance(edit, DebiasEdit):
        return ReportPrompt(edit.concept, "edit", toward=list(edit.attributes))
    assert isinstance(edit, ForgetEdit)
    return ReportPrompt(edit.concept, "edit", away=[edit.concept])


def report_prompts(edits: EditSet, cfg: EditReportConfig) -> list[ReportPrompt]:
    """Edit prompts, then preserved, then neutral ones (a prompt listed twice is rendered once)."""
    out: list[ReportPrompt] = []
    seen: set[str] = set()
    candidates = [_edit_prompt(e) for e in edits.edits] + [ReportPrompt(p, "preserve") for p in edits.preserve]
    candidates += [ReportPrompt(p, "neutral") for p in (model_edit_neutral_prompts() if cfg.neutral else [])]
    for item in candidates:
        if item.prompt not in seen:
            seen.add(item.prompt)
            out.append(item)
    return out


def render_images(p2p: Any, prompts: list[str], seeds: list[int], cfg: EditReportConfig) -> list[np.ndarray]:
    """uint8 (H, W, 3) images, prompt-major then seed, one render per image (the regenerate layout)."""
    side = cfg.size or int(p2p.pipe.unet.config.sample_size) * p2p.vae_scale
    images = []
    for prompt in prompts:
        for seed in seeds:
            req = RenderRequest(source=prompt, seed=seed, steps=cfg.steps, guidance=cfg.guidance, height=side,
                                width=side, scheduler="ddim")
            images.append(to_uint8(render(p2p, [req])[0].images[0]))
    return images


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _text_scores(scorer: ClipScorer, i0: Any, i1: Any, texts: list[str]) -> dict[str, dict[str, float]]:
    """CLIP score of the before and after image toward each text."""
    if not texts:
        return {}
    t = scorer.encode_texts(texts)
    n = len(texts)
    sims = clip_similarities(i0.expand(n, -1), i1.expand(n, -1), t, t)
    return {text: {"before": float(sims["sim_0"][k]), "after": float(sims["sim_1"][k])}
            for k, text in enumerate(texts)}


def compare(scorer: ClipScorer, item: ReportPrompt, seed: int, before: np.ndarray, after: np.ndarray,
            cfg: EditReportConfig) -> dict[str, Any]:
    """One prompt and seed: how far the edited model's image moved, and its scores toward / away."""
    pb, pa = png(before), png(after)
    i0, i1 = scorer.encode_images([Image.fromarray(before)]), scorer.encode_images([Image.fromarray(after)])
    row: dict[str, Any] = {
        "prompt": item.prompt, "role": item.role, "seed": seed,
        "clip_image": float(clip_similarities(i0, i1, i0, i1)["sim_image"][0]),
        "ssim": whole_ssim(pb, pa),
        "pixel_change": float(np.abs(before.astype(np.float64) - after.astype(np.float64)).mean() / 255.0),
    }
    if item.role == "edit":
        row["toward"] = _text_scores(scorer, i0, i1, item.toward)
        row["away"] = _text_scores(scorer, i0, i1, item.away)
    row["flags"] = [] if item.role == "edit" else flags(row, cfg)
    return row


def flags(row: dict[str, Any], cfg: EditReportConfig) -> list[str]:
    """Which thresholds a preserved or neutral prompt crossed (empty: preserved)."""
    out = []
    if row["clip_image"] < cfg.min_clip_image:
        out.append(f"clip_image {row['clip_image']:.3f} < {cfg.min_clip_image}")
    if row["ssim"] < cfg.min_ssim:
        out.append(f"ssim {row['ssim']:.3f} < {cfg.min_ssim}")
    if row["pixel_change"] > cfg.max_pixel_change:
        out.append(f"pixel_change {row['pixel_change']:.3f} > {cfg.max_pixel_change}")
    return out


@dataclass
class EditModelReport:
    """The report's JSON body and the images it compared (kept for the HTML grid)."""

    body: dict[str, Any]
    before: list[np.ndarray]
    after: list[np.ndarray]


def build_report(original: Any, edited: Any, edits: EditSet, cfg: EditReportConfig, scorer: ClipScorer,
                 ) -> EditModelReport:
    """Render every report prompt from both models with the same seeds and compare them."""
    items = report_prompts(edits, cfg)
    prompts = [i.prompt for i in items]
    before = render_images(original, prompts, cfg.seeds, cfg)
    after = render_images(edited, prompts, cfg.seeds, cfg)
    rows = []
    for k, (item, seed) in enumerate((i, s) for i in items for s in cfg.seeds):
        rows.append(compare(scorer, item, seed, before[k], after[k], cfg))
    flagged = sorted({r["prompt"] for r in rows if r["flags"]})
    body = {"edits": edits.describe(), "settings": cfg.model_dump(), "clip": scorer.spec.model_id(),
            "rows": rows, "flagged": flagged, "preserved": not flagged}
    return EditModelReport(body, before, after)


def _img(image: np.ndarray) -> str:
    data = base64.b64encode(png(image)).decode()
    return f'<img src="data:image/png;base64,{data}" width="128" height="128">'


def _html(report: EditModelReport) -> str:
    head = ("<tr><th>prompt</th><th>role</th><th>seed</th><th>before</th><th>after</th><th>CLIP image</th>"
            "<th>SSIM</th><th>pixel change</th><th>scores (before → after)</th><th>flags</th></tr>")
    lines = []
    for row, b, a in zip(report.body["rows"], report.before, report.after, strict=True):
        scores = "<br>".join(f"{kind} {html.escape(text)!s}: {s['before']:.3f} → {s['after']:.3f}"
                             for kind in ("toward", "away") for text, s in row.get(kind, {}).items())
        style = ' style="background:#fdd"' if row["flags"] else ""
        lines.append(f"<tr{style}><td>{html.escape(row['prompt'])}</td><td>{row['role']}</td><td>{row['seed']}</td>"
                     f"<td>{_img(b)}</td><td>{_img(a)}</td><td>{row['clip_image']:.4f}</td><td>{row['ssim']:.4f}</td>"
                     f"<td>{row['pixel_change']:.4f}</td><td>{scores}</td>"
                     f"<td>{html.escape('; '.join(row['flags']))}</td></tr>")
    verdict = "preserved" if report.body["preserved"] else "flagged: " + ", ".join(report.body["flagged"])
    return ("<!doctype html><meta charset='utf-8'><title>model edit report</title>"
            f"<h1>Model edit report</h1><p>{html.escape(verdict)}</p>"
            f"<pre>{html.escape(json.dumps(report.body['edits'], indent=1))}</pre>"
            f"<table border=1 cellpadding=4>{head}{''.join(lines)}</table>\n")


def report_files(report: EditModelReport) -> dict[str, str]:
    """{file name: text}: REPORT.json and report.html (thumbnails as data URIs, so the page stands alone)."""
    return {REPORT_JSON: json.dumps(report.body, indent=2, sort_keys=True) + "\n", REPORT_HTML: _html(report)}


def write_report(report: EditModelReport, folder: Path) -> None:
    """The report's files into a local ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in report_files(report).items():
        (folder / name).write_text(text, encoding="utf-8")
