"""`editgen preview OUT`: one HTML page to eyeball a run before training on it.

OUT/preview.html shows a grid of before/after pairs (thumbnails under OUT/preview/) with instruction,
captions, CLIP scores and drop reasons, plus PNG plots of score distributions (kept vs dropped, with
the thresholds) and of drop reasons per stage (from OUT/<stage>/_done/*.json). Where a pair has an edit
mask (a region, not the whole image), a translucent tint over its before and after thumbnails shows it,
with its area and the words it came from; a checkbox at the top shows or hides every tint. All text from
the data is HTML-escaped: captions come from the web and from an LLM.

Only committed filter partitions are shown (those with a completion record), each read checked against
its record's sha256; one that does not match (damaged, or rewritten by a live run right now) is left
out with one line on stderr. Records of the wrong shape count as absent (pipeline.records).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from editgen.filters.pairs.clip_score import SCORE_COLUMNS
from editgen.filters.pairs.consistency import CONSISTENCY_COLUMNS
from editgen.filters.pairs.masks import decode_mask
from editgen.filters.pairs.outside_mask import OUTSIDE_MASK_COLUMNS
from editgen.filters.pairs.select import Thresholds
from editgen.output.shard_writer import sample_key
from editgen.output.survival import compute_cell, drops_cell, end_line, read_survival, work_cell
from editgen.output.type_funnel import FUNNEL_STAGES, funnel_rows
from editgen.pipeline.config import out_config
from editgen.pipeline.freshness import refuse_stale
from editgen.pipeline.records import (
    GLOBAL_RECORD,
    current_metrics,
    read_record,
    read_record_table,
    read_records,
)
from editgen.pipeline.registry import stage_names
from editgen.pipeline.settings.judge import SCORES as JUDGE_SCORES
from editgen.pipeline.stage import KEPT
from editgen.pipeline.storage import Storage, parse_storage_options
from editgen.stages import REGISTRY

#: The judge stage's columns a card shows (stages/judge.py), when it ran.
JUDGE_COLUMNS = [*(c for n in JUDGE_SCORES for c in (f"judge_{n}", f"judge_{n}_reason")), "judge_score"]

log = logging.getLogger("editgen")

PREVIEW_DIR = "preview"
PAGE = "preview.html"
THUMB = 256
META_COLUMNS = [
    "id", "candidate", "caption", "edited_caption", "instruction", "edit_kind", "edit_type", "url", *SCORE_COLUMNS,
    *OUTSIDE_MASK_COLUMNS, *CONSISTENCY_COLUMNS, "status", "drop_reason",
]
#: The edit-mask tint (RGBA) laid over a thumbnail.
MASK_TINT = (255, 0, 200, 110)
MASK_TOGGLE = ('<label><input type="checkbox" id="mask-toggle" checked '
               "onchange=\"document.body.classList.toggle('hide-masks', !this.checked)\"> show edit masks</label>")
#: Tells a viewer (and the headless-browser test) whether every thumbnail loaded.
LOAD_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img');
  var ok = Array.prototype.filter.call(imgs, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-ok', ok.length);
  document.getElementById('load-status').textContent = ok.length + ' / ' + imgs.length + ' images loaded';
});
</script>"""
CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:14px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px}.card.dropped{background:#fff4f4}
.pair{display:flex;gap:6px}.pair img{width:256px;height:auto;background:#eee}
.thumb{position:relative;line-height:0}.thumb img.mask{position:absolute;left:0;top:0;height:100%;background:none;
pointer-events:none}body.hide-masks img.mask{display:none}
.instr{font-weight:bold;margin:6px 0}.cap{font-size:.85em;color:#444}
.scores{font-family:monospace;font-size:.8em}
.plots img{max-width:100%}
.funnel{border-collapse:collapse;font-size:.85em}.funnel td,.funnel th{border:1px solid #ccc;padding:2px 6px}"""


def _stage_order(storage: Storage) -> list[str]:
    known = list(REGISTRY)
    present = [d for d in storage.listdir() if storage.exists(d, "_done")]
    return [s for s in known if s in present] + sorted(d for d in present if d not in known)


def stage_drops(storage: Storage) -> dict[str, dict[str, Any]]:
    """{stage: {rows_in, rows_out, dropped}} summed over its completion records."""
    out: dict[str, dict[str, Any]] = {}
    for stage in _stage_order(storage):
        agg: dict[str, Any] = {"rows_in": 0, "rows_out": 0, "dropped": {}}
        glob = read_record(storage, stage, GLOBAL_RECORD)
        for rec in read_records(storage, stage, checksums=False) + ([glob] if glob else []):
            agg["rows_in"] += int(rec.get("rows_in", 0))
            agg["rows_out"] += int(rec.get("rows_out", 0))
            for reason, n in (rec.get("dropped") or {}).items():
                agg["dropped"][reason] = agg["dropped"].get(reason, 0) + int(n)
        out[stage] = agg
    return out


def load_thresholds(storage: Storage) -> Thresholds:
    """The run's thresholds from OUT/config.yaml (defaults when absent)."""
    import yaml

    from editgen.pipeline import safe_yaml

    try:
        cfg = (safe_yaml.load(storage.read_text("config.yaml")) or {}).get("filter", {})
    except (FileNotFoundError, ValueError, AttributeError, yaml.YAMLError):
        return Thresholds()
    d = Thresholds()
    return Thresholds(
        cfg.get("min_sim_image", d.sim_image), cfg.get("min_sim_direction", d.sim_direction),
        cfg.get("min_sim_0", d.sim_0), cfg.get("min_sim_1", d.sim_1),
    )


def read_filter(storage: Storage, rec: dict[str, Any], columns: list[str], stage: str = "filter") -> pa.Table | None:
    """Those columns of one committed partition of `stage`, checked against its record (None: not shown)."""
    return read_record_table(storage, stage, rec, columns, "not shown")


def filter_rows(storage: Storage) -> pa.Table | None:
    """Scores and text of every filtered candidate (no images), with its partition file; with a judge
    stage, its scores and reasons too (and its verdict as the status of the candidates it judged)."""
    tables = []
    for rec in read_records(storage, "filter"):
        t = read_filter(storage, rec, META_COLUMNS)
        if t is not None:
            t = t.append_column("_part", pa.array([str(rec["partition"])] * t.num_rows, pa.string()))
            tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    return with_judge(storage, table) if table is not None else None


def with_judge(storage: Storage, table: pa.Table) -> pa.Table:
    """The judge's columns (stages/judge.py) joined on (id, candidate); the table as is without a judge."""
    judged: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in read_records(storage, "judge"):
        t = read_filter(storage, rec, ["id", "candidate", *JUDGE_COLUMNS, "status", "drop_reason"], "judge")
        for r in t.to_pylist() if t is not None else []:
            judged[(str(r["id"]), int(r["candidate"]))] = r
    if not judged:
        return table
    keys = [(str(i), int(c)) for i, c in zip(table["id"].to_pylist(), table["candidate"].to_pylist(), strict=True)]
    for col in ("status", "drop_reason"):
        own = table[col].to_pylist()
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(
            [judged[k][col] if k in judged else v for k, v in zip(keys, own, strict=True)], pa.string()))
    for col in JUDGE_COLUMNS:
        table = table.append_column(col, pa.array([judged.get(k, {}).get(col) for k in keys]))
    return table


def _pick(table: pa.Table, status_kept: bool, n: int) -> list[dict[str, Any]]:
    mask = pc.equal(table["status"], KEPT)
    sub = table.filter(mask if status_kept else pc.invert(mask))
    if sub.num_rows <= n:
        return sub.to_pylist()
    step = sub.num_rows / n  # spread over all partitions, deterministically
    return [sub.slice(int(i * step), 1).to_pylist()[0] for i in range(n)]


def _thumbnail(data: bytes) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _mask_overlay(data: bytes) -> tuple[bytes, float] | None:
    """(the tint PNG at thumbnail size, area fraction) of a region mask; None for the whole image (nothing
    to tint) or a mask that does not decode."""
    from PIL import Image

    try:
        region = decode_mask(data)
    except ValueError:
        return None
    if region.all():
        return None
    tint = np.zeros((*region.shape, 4), np.uint8)
    tint[region] = MASK_TINT
    img = Image.fromarray(tint, "RGBA")
    img.thumbnail((THUMB, THUMB), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), float(region.mean())


def _mask_words(params: str | None) -> list[str]:
    """The words the record says its mask came from (engines.record.CandidateRecord.mask)."""
    try:
        words = (json.loads(params or "{}").get("mask") or {}).get("words")
    except (ValueError, AttributeError):
        return []
    return [str(w) for w in words] if isinstance(words, list) else []


def write_thumbnails(storage: Storage, rows: list[dict[str, Any]], assets: str = PREVIEW_DIR) -> None:
    """Adds `thumbs` (relative paths) to each row, and `mask_tint` / `mask_area` / `mask_words` to those
    with a region mask; reads only the picked rows' images."""
    by_part: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_part.setdefault(r["_part"], []).append(r)
    records = {str(rec["partition"]): rec for rec in read_records(storage, "filter")}
    columns = ["id", "candidate", "input_image", "edited_image", "mask", "params"]
    for pid, picked in by_part.items():
        t = read_filter(storage, records[pid], columns) if pid in records else None
        if t is None:  # changed since its scores were read (a live run): shown without images
            continue
        pairs = zip(t["id"].to_pylist(), t["candidate"].to_pylist(), strict=True)
        index = {pair: n for n, pair in enumerate(pairs)}
        for r in picked:
            n = index[(r["id"], r["candidate"])]
            x = {c: t[c][n].as_py() for c in columns if c in t.column_names}
            key = sample_key(str(r["id"]), int(r["candidate"]))
            r["thumbs"] = []
            for col, tag in (("input_image", "in"), ("edited_image", "out")):
                rel = f"{key}-{tag}.jpg"
                try:
                    storage.write_bytes(_thumbnail(x[col]), assets, rel)
                except Exception:  # noqa: BLE001 - an undecodable image shows as broken, not a crash
                    pass
                r["thumbs"].append(f"{assets}/{rel}")
            overlay = _mask_overlay(x["mask"]) if x.get("mask") else None
            if overlay is not None:
                storage.write_bytes(overlay[0], assets, f"{key}-mask.png")
                r.update(mask_tint=f"{assets}/{key}-mask.png", mask_area=overlay[1],
                         mask_words=_mask_words(x.get("params")))


def plot_scores(table: pa.Table, th: Thresholds) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = pc.equal(table["status"], KEPT)
    limits = dict(th.items())
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, col in zip(axes, SCORE_COLUMNS, strict=True):
        for mask, label, color in ((kept, "kept", "tab:green"), (pc.invert(kept), "dropped", "tab:red")):
            vals = [v for v in table.filter(mask)[col].to_pylist() if v is not None and v == v]
            if vals:
                ax.hist(vals, bins=30, alpha=0.6, label=f"{label} ({len(vals)})", color=color)
        ax.axvline(limits[col], color="k", linestyle="--", linewidth=1)
        ax.set_title(f"{col} (min {limits[col]:g})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_drops(drops: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(drops))
    height = 1.2 + 0.9 * n + 0.25 * sum(len(d["dropped"]) for d in drops.values())
    fig, axes = plt.subplots(n, 1, figsize=(9, height), squeeze=False)
    for ax, (stage, d) in zip(axes[:, 0], drops.items(), strict=False):
        labels = ["kept", *sorted(d["dropped"])]
        values = [d["rows_out"], *(d["dropped"][k] for k in sorted(d["dropped"]))]
        ax.barh(labels, values, color=["tab:green"] + ["tab:red"] * (len(labels) - 1))
        ax.invert_yaxis()
        ax.set_title(f"{stage}: {d['rows_in']} in, {d['rows_out']} kept", fontsize=9)
        ax.tick_params(labelsize=8)
    if not drops:
        axes[0, 0].text(0.5, 0.5, "no completion records", ha="center")
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _card(r: dict[str, Any]) -> str:
    e = lambda v: html.escape("" if v is None else str(v), quote=True)  # noqa: E731
    scores = " ".join(f"{c}={r[c]:.3f}" if r.get(c) is not None else f"{c}=n/a" for c in SCORE_COLUMNS)
    scores += "".join(f" {c}={r[c]:.3f}" for c in (*OUTSIDE_MASK_COLUMNS, *CONSISTENCY_COLUMNS) if r.get(c) is not None)
    status = "kept" if r.get("status") == KEPT else f"dropped: {r.get('drop_reason')}"
    thumbs = zip(r.get("thumbs", []), ("before", "after"), strict=False)
    tint = f'<img class="mask" src="{e(r["mask_tint"])}" alt="edit mask">' if r.get("mask_tint") else ""
    imgs = "".join(f'<span class="thumb"><img src="{e(src)}" alt="{e(alt)}">{tint}</span>' for src, alt in thumbs)
    judge = ""
    if r.get("judge_score") is not None:
        parts = [f"{n} {r.get(f'judge_{n}')}: {r.get(f'judge_{n}_reason')}" for n in JUDGE_SCORES]
        judge = f'<div class="cap">judge ({r["judge_score"]:.2f}): {e(" · ".join(parts))}</div>'
    mask = ""
    if r.get("mask_tint"):
        words = ", ".join(r.get("mask_words") or []) or "n/a"
        mask = f'<div class="cap">edit mask: {r["mask_area"]:.1%} of the image · words: {e(words)}</div>'
    # Only web links: a scraped `javascript:` or `data:` URL would run when clicked, escaped or not.
    url = str(r.get("url") or "")
    link = f'<a href="{e(url)}" rel="noreferrer">source</a>' if url.lower().startswith(("http://", "https://")) else ""
    return (
        f'<div class="card {"kept" if r.get("status") == KEPT else "dropped"}">'
        f'<div class="pair">{imgs}</div>'
        f'<div class="instr">{e(r.get("instruction"))}</div>'
        f'<div class="cap">before: {e(r.get("caption"))}</div>'
        f'<div class="cap">after: {e(r.get("edited_caption"))}</div>{judge}{mask}'
        f'<div class="scores">{e(scores)}<br>{e(status)} · {e(r.get("edit_type") or r.get("edit_kind"))} · '
        f'{e(r.get("id"))}#{e(r.get("candidate"))} {link}</div></div>'
    )


def funnel_html(storage: Storage) -> str:
    """The funnel by edit type as an HTML table (empty when no stage counted a type): the same figures
    as `editgen status` (output/type_funnel.py)."""
    funnel = funnel_rows({s: current_metrics(storage, s) for s in FUNNEL_STAGES})
    if not funnel:
        return ""
    head = ("edit type", "asked", "answers kept", "candidates", "passed filter", "kept", "UNet FLOPs/kept", "drops")
    rows = []
    for name, r in funnel.items():
        per = "" if r.unet_flops_per_kept is None else f"{r.unet_flops_per_kept:.3g}"
        drops = ", ".join(f"{k} {n}" for k, n in r.drops.items())
        cells = (name, "" if r.asked is None else r.asked, r.answers_kept, r.candidates, r.passed_filter,
                 r.kept_samples, per, drops)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f'<h2>Edit types</h2><table class="funnel">{header}{"".join(rows)}</table>'


def survival_html(storage: Storage) -> str:
    """The survival funnel (rows, drops and compute per stage, kept per GPU-hour) as an HTML table: the
    figures of `editgen status` and the manifest's `survival` (output/survival.py); empty before any stage."""
    section = read_survival(storage, stage_names(out_config(storage)))
    if not section:
        return ""
    head = ("stage", "rows in", "rows out", "dropped", "drop reasons", "compute", "work")
    rows = []
    for line in section["stages"]:
        cells = (line["stage"], line["rows_in"], line["rows_out"], line["rows_dropped"], drops_cell(line),
                 compute_cell(line), work_cell(line))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return (f'<h2>Survival and compute per stage</h2><table class="funnel survival">{header}{"".join(rows)}</table>'
            f"<p>{html.escape(end_line(section))}</p>")


def build_preview(out: str, limit: int = 48, rejected: int = 12,
                  storage_options: dict[str, Any] | None = None) -> str:
    """Write OUT/preview.html (+ OUT/preview/<generation>/*); returns the page path.

    The images go to a folder of their own, the page that names them is written last (atomically), and
    only then are earlier previews' folders removed: an open page never loses its images mid-update."""
    storage = Storage(out, storage_options or {})
    assets = f"{PREVIEW_DIR}/gen-{uuid.uuid4().hex[:12]}"
    drops = stage_drops(storage)
    storage.write_bytes(plot_drops(drops), assets, "drop_reasons.png")
    table = filter_rows(storage)
    plots = [f'<img src="{assets}/drop_reasons.png" alt="drop reasons per stage">']
    kept_rows: list[dict[str, Any]] = []
    dropped_rows: list[dict[str, Any]] = []
    if table is not None and table.num_rows:
        storage.write_bytes(plot_scores(table, load_thresholds(storage)), assets, "scores.png")
        plots.insert(0, f'<img src="{assets}/scores.png" alt="CLIP score distributions">')
        kept_rows, dropped_rows = _pick(table, True, limit), _pick(table, False, rejected)
        write_thumbnails(storage, kept_rows + dropped_rows, assets)
    summary = "".join(
        f"<li>{html.escape(s)}: {d['rows_in']} in, {d['rows_out']} kept, "
        f"{html.escape(json.dumps(d['dropped']))}</li>"
        for s, d in drops.items()
    )
    body = [
        f"<h1>editgen preview: {html.escape(out)}</h1><p id=\"load-status\"></p><ul>{summary}</ul>{MASK_TOGGLE}",
        f'<div class="plots">{"".join(plots)}</div>',
        survival_html(storage),
        funnel_html(storage),
        f"<h2>Kept pairs ({len(kept_rows)} shown)</h2>"
        f"<div class=\"grid\">{''.join(map(_card, kept_rows))}</div>",
    ]
    if dropped_rows:
        body.append(f"<h2>Rejected candidates ({len(dropped_rows)} shown)</h2>"
                    f"<div class=\"grid\">{''.join(map(_card, dropped_rows))}</div>")
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>editgen preview</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}{LOAD_CHECK}</body></html>\n"
    )
    storage.write_text(page, PAGE)
    for name in storage.listdir(PREVIEW_DIR):
        if f"{PREVIEW_DIR}/{name}" != assets:
            storage.remove(PREVIEW_DIR, name)
    return storage.path(PAGE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory")
    parser.add_argument("--limit", type=int, default=48, help="kept pairs shown")
    parser.add_argument("--rejected", type=int, default=12, help="rejected candidates shown")


def main(args: argparse.Namespace) -> int:
    options = parse_storage_options(getattr(args, "storage_option", None))
    refuse_stale(Storage(args.out, options), args.out, "preview")  # never a page of outdated output
    path = build_preview(args.out, args.limit, args.rejected, options)
    print(f"wrote {path}")
    return 0
