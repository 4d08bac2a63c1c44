"""How well each stored score agrees with human labels: accuracy at the threshold the run used, the best
threshold, and Spearman's rank correlation, per score, for CLIP alone and for the filter's decision.

`editgen judge-agreement OUT LABELS` reads LABELS (a sample key -> pass/fail or 1-5 score per line: JSONL
or CSV, cli/labels.py) and the scores of those samples in OUT (output/stored_scores.py), so a lab checks
its judge or a threshold on 100-200 labelled samples before trusting it with a GPU-week
(docs/calibration.md). Labels naming keys OUT does not hold are counted and shown; none matching is exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from typing import Any

from rich.console import Console
from rich.table import Table

from editgen.cli.labels import PASS_FAIL, Labels, read_labels
from editgen.filters.pairs.agreement import Agreement, agreement, clears
from editgen.filters.pairs.score_registry import CLIP_RANK, CLIP_RULE, SCORES, ScoreColumn, by_name, thresholds
from editgen.output.stored_scores import FILTER_PARTITIONS, StoredScores, stored_scores
from editgen.pipeline.config import EditgenConfig, out_config
from editgen.pipeline.errors import InputError, UserError
from editgen.pipeline.freshness import refuse_stale
from editgen.pipeline.redact import redact_url
from editgen.pipeline.storage import Storage, parse_storage_options

COMMAND = "judge-agreement"
CLIP_ALONE = "CLIP alone"
FILTER_DECISION = "filter decision"
PIPED_WIDTH = 1000
SHOWN_UNKNOWN = 5


def _nan(row: dict[str, float], name: str) -> float:
    return row.get(name, float("nan"))


def score_row(score: ScoreColumn, cfg: EditgenConfig, rows: list[dict[str, float]], values: list[float],
              passed: list[bool]) -> dict[str, Any]:
    """One registered score: accuracy at its configured threshold(s), else the best threshold only."""
    lo, hi = thresholds(cfg, score)
    s = [_nan(r, score.name) for r in rows]
    predicted = [clears(v, lo, hi) for v in s] if (lo, hi) != (None, None) else None
    result = agreement(s, values, passed, predicted, score.higher_is_better)
    note = "" if predicted is not None else "no threshold configured: best-threshold accuracy only"
    return _row(score.name, "score", result, score.higher_is_better, {"min": lo, "max": hi}, note)


def clip_alone_row(cfg: EditgenConfig, rows: list[dict[str, float]], values: list[float],
                   passed: list[bool]) -> dict[str, Any]:
    """InstructPix2Pix's rule: pass = every CLIP threshold cleared; ranked by direction similarity."""
    names = by_name()
    predicted = [all(clears(_nan(r, c), *thresholds(cfg, names[c])) for c in CLIP_RULE) for r in rows]
    result = agreement([_nan(r, CLIP_RANK) for r in rows], values, passed, predicted)
    return _row(CLIP_ALONE, "rule", result, True, None,
                f"pass = {', '.join(CLIP_RULE)} all clear their thresholds; Spearman and best threshold on {CLIP_RANK}")


def decision_row(kept: list[bool | None], values: list[float], passed: list[bool]) -> dict[str, Any]:
    """The filter's own decision (kept vs dropped, every rule and top-k together)."""
    s = [float("nan") if k is None else float(k) for k in kept]
    result = agreement(s, values, passed, [bool(k) for k in kept])
    return _row(FILTER_DECISION, "rule", replace(result, best_threshold=None, best_accuracy=None), True, None,
                "pass = kept by the filter (thresholds and top-k)")


def _row(name: str, kind: str, result: Agreement, higher: bool, threshold: dict[str, float | None] | None,
         note: str) -> dict[str, Any]:
    return {"score": name, "kind": kind, "higher_is_better": higher, "threshold": threshold, **asdict(result),
            "note": note}


def report(out: str, labels: Labels, found: StoredScores, cfg: EditgenConfig, pass_at: int) -> dict[str, Any]:
    """The JSON report (the table shows the same)."""
    matched = [k for k in labels.values if k in found.scores]
    unknown = [k for k in labels.values if k not in found.scores]
    if not matched:
        example = f" (e.g. {unknown[0]!r})" if unknown else ""
        raise InputError(f"{labels.path}: none of its {len(unknown)} keys is a sample in {redact_url(out)}{example}; "
                         "expected sample keys as in the shards (`<id>-cNNNN`, the __key__ of each sample)")
    rows = [found.scores[k] for k in matched]
    values = [labels.values[k] for k in matched]
    passed = [labels.passed(k, pass_at) for k in matched]
    present = set(found.columns())
    table = [score_row(s, cfg, rows, values, passed) for s in SCORES if s.name in present]
    if all(c in present for c in CLIP_RULE):
        table.append(clip_alone_row(cfg, rows, values, passed))
    if found.kept:
        table.append(decision_row([found.kept.get(k) for k in matched], values, passed))
    return {
        "out": redact_url(out), "labels": labels.path, "label_kind": labels.kind,
        "pass_at": None if labels.kind == PASS_FAIL else pass_at, "source": found.source,
        "labelled": len(labels.values), "matched": len(matched), "label_passes": sum(passed),
        "unknown_keys": len(unknown), "unknown_examples": unknown[:SHOWN_UNKNOWN],
        "skipped_files": found.skipped, "rows": table,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _threshold(row: dict[str, Any]) -> str:
    th = row["threshold"]
    if th is None:
        return "(rule)"
    parts = [f">= {th['min']:g}" if th["min"] is not None else "", f"<= {th['max']:g}" if th["max"] is not None else ""]
    return " and ".join(p for p in parts if p) or "none"


def render_table(rep: dict[str, Any]) -> Table:
    """The report as a rich table, like `editgen status`."""
    kind = rep["label_kind"] if rep["pass_at"] is None else f"{rep['label_kind']}, pass at >= {rep['pass_at']}"
    caption = [f"scores from {rep['source']}; labels: {rep['labelled']} ({kind}), {rep['matched']} matched, "
               f"{rep['label_passes']} pass"]
    if rep["unknown_keys"]:
        caption.append(f"{rep['unknown_keys']} labelled keys not in OUT (e.g. {', '.join(rep['unknown_examples'])})")
    if rep["skipped_files"]:
        caption.append(f"left out (did not match their records): {', '.join(rep['skipped_files'])}")
    caption += [f"{r['score']}: {r['note']}" for r in rep["rows"] if r["note"]]
    table = Table(title=f"editgen judge-agreement: {rep['out']}", caption="\n".join(caption))
    for col in ("score", "better", "n", "threshold", "accuracy", "best threshold", "best accuracy", "spearman"):
        table.add_column(col, justify="left" if col in ("score", "better", "threshold") else "right")
    for r in rep["rows"]:
        none_pass = r["best_threshold"] is None and r["best_accuracy"] is not None
        best = "none pass" if none_pass else _fmt(r["best_threshold"], 4)
        better = "" if r["kind"] == "rule" else "higher" if r["higher_is_better"] else "lower"
        table.add_row(r["score"], better, str(r["n"]), _threshold(r),
                      _fmt(r["accuracy"]), best, _fmt(r["best_accuracy"]), _fmt(r["spearman"]))
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory or URL")
    parser.add_argument("labels", metavar="LABELS",
                        help="labelled samples: JSON lines {\"key\": ..., \"label\": pass|fail|true|false|1-5} "
                        "or CSV key,label")
    parser.add_argument("--pass-at", type=int, default=4, choices=range(1, 6), metavar="N",
                        help="with 1-5 score labels, a label of N or more counts as pass (default 4)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    storage = Storage(args.out, parse_storage_options(getattr(args, "storage_option", None)))
    if not storage.exists():
        raise UserError(f"{redact_url(args.out)}: no such output directory")
    labels = read_labels(args.labels)
    found = stored_scores(storage)
    if found is None:
        raise UserError(f"{redact_url(args.out)}: no scored samples (no filter partitions, no published shards); "
                        f"run the pipeline through filter, then rerun `editgen {COMMAND}`")
    refuse_stale(storage, args.out, COMMAND, through="filter" if found.source == FILTER_PARTITIONS else None)
    rep = report(args.out, labels, found, out_config(storage), args.pass_at)
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
    else:
        Console(width=None if sys.stdout.isatty() else PIPED_WIDTH).print(render_table(rep))
    return 0
