"""`editgen status OUT`: what each stage has done, read from completion records only.

Every file it reads may be damaged: records and `_stage.json` of the wrong shape count as absent
(pipeline.records, with a warning), a damaged `_progress.json` as no live progress."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from editgen.output.compute_report import compute_report, format_report
from editgen.output.eval_split import EVAL_SAMPLES_METRIC
from editgen.output.inverse import INVERSE_METRIC
from editgen.output.sessions import session_counts
from editgen.output.survival import SURVIVAL, compute_cell, drops_cell, end_line, read_survival, work_cell
from editgen.output.type_funnel import FUNNEL_STAGES, type_funnel
from editgen.pipeline.config import EditgenConfig, out_config
from editgen.pipeline.freshness import stage_states
from editgen.pipeline.lease import read_lease, stale_reason
from editgen.pipeline.live_progress import PROGRESS_FILE
from editgen.pipeline.progress import clock, human_rate
from editgen.pipeline.records import (
    GLOBAL_RECORD,
    STAGE_FILE,
    read_record,
    read_records,
    read_stage_meta,
    shape_problem,
    sum_records,
)
from editgen.pipeline.redact import redact_url
from editgen.pipeline.registry import stage_names
from editgen.pipeline.settings.model_edits import REPORT_JSON, RUN_REPORT_DIR
from editgen.pipeline.settings.run import RunConfig
from editgen.pipeline.storage import Storage
from editgen.prompts.taxonomy import NAMES
from editgen.stages.instruct import TYPE_FALLBACK, TYPE_KEPT, TYPE_REQUESTED


def collect(out: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    storage = Storage(out, storage_options or {})
    stages = []
    cfg = out_config(storage)
    metas = {name: read_stage_meta(storage, name) for name in stage_names(cfg)}  # the graph OUT's last run used
    states = {s.name: s for s in stage_states(storage, cfg, metas)}  # a stage whose upstream changed: stale
    for name, meta in metas.items():
        if meta is None:
            stages.append({"stage": name, "present": False, "state": "not run",
                           "damaged": storage.exists(name, STAGE_FILE)})
            continue
        records = read_records(storage, name)
        glob = read_record(storage, name, GLOBAL_RECORD)
        if glob:
            records = [glob]
        records = [r for r in records if r.get("stage_hash") == meta.get("stage_hash")]
        dropped, metrics = sum_records(records)
        seconds = sum(r.get("seconds", 0.0) for r in records)
        rows_in = sum(r.get("rows_in", 0) for r in records)
        stages.append({
            "stage": name,
            "present": True,
            "complete": states[name].state == "complete",
            "state": states[name].state,
            "stale_reason": states[name].reason or None,
            "config_hash": meta.get("stage_hash"),
            "partitions_total": meta.get("partitions", 0),
            "partitions_done": len(records),
            "rows_in": rows_in,
            "rows_out": sum(r.get("rows_out", 0) for r in records),
            "rows_dropped": sum(dropped.values()),
            "dropped": dropped,
            "worker_seconds": round(seconds, 3),
            "metrics": metrics,
        })
    lease = _lease_state(storage)
    return {"out": redact_url(out), "stages": stages, "lease": lease, "live": _live(storage) if lease else None,
            "compute": _compute(stages), "edit_types": edit_types(stages), "inverse": inverse_counts(stages),
            "eval": eval_counts(stages), "sessions": _sessions(stages), "funnel": _funnel(stages),
            SURVIVAL: read_survival(storage, list(metas)), "model_edit_report": edit_report_state(storage, cfg)}


def edit_report_state(storage: Storage, cfg: EditgenConfig) -> dict[str, Any] | None:
    """Where the report of the run's model edits is and what it flags (None: no model edits). It is not a
    stage: `editgen run` writes it after the stages, so a stopped run has none until the next run, and a
    report of other edits than the config's is stale (the next run rewrites it)."""
    edits = cfg.render.edit_set()
    if edits is None:
        return None
    state: dict[str, Any] = {"report": redact_url(storage.url(RUN_REPORT_DIR, REPORT_JSON)), "written": False}
    if not storage.exists(RUN_REPORT_DIR, REPORT_JSON):
        return state
    try:
        body = json.loads(storage.read_text(RUN_REPORT_DIR, REPORT_JSON))
        state.update(written=True, stale=body["edits"] != edits.describe(), prompts=len(body["rows"]),
                     flagged=list(body["flagged"]))
    except (ValueError, KeyError, TypeError):
        state["damaged"] = True  # the next run writes it again
    return state


def _edit_report_line(state: dict[str, Any]) -> str:
    if not state["written"]:
        why = "damaged" if state.get("damaged") else "not written yet"
        return f"model edits report: {why} (`editgen run` writes {state['report']} after the stages)"
    line = f"model edits report: {state['report']}, {state['prompts']} prompts, "
    line += f"{len(state['flagged'])} moved too far" if state["flagged"] else "every preserved prompt within bounds"
    return line + (" (stale: written for other edits; the next `editgen run` rewrites it)" if state["stale"] else "")


def survival_table(status: dict[str, Any]) -> Table | None:
    """The survival funnel (output/survival.py): per stage rows in and out, drops, compute (GPU-seconds
    where a GPU ran, else CPU-seconds) and work (UNet FLOPs, LLM/VLM tokens); kept per GPU-hour below."""
    section = status.get(SURVIVAL)
    if not section:
        return None
    table = Table(title="survival funnel: rows and compute per stage", caption=end_line(section))
    for col in ("stage", "rows in", "rows out", "dropped", "top drops", "compute", "work"):
        table.add_column(col)
    for line in section["stages"]:
        table.add_row(line["stage"], str(line["rows_in"]), str(line["rows_out"]), str(line["rows_dropped"]),
                      drops_cell(line, 3), compute_cell(line), work_cell(line))
    for name in section["not_run"]:
        table.add_row(name, "", "", "", "", "not run", "")
    return table


def _sessions(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Sessions and samples per turn the shard stage published (None: no multi-turn sessions)."""
    shard = next((s for s in stages if s["stage"] == "shard" and s.get("present")), None)
    return None if shard is None else session_counts(shard["metrics"])


def inverse_counts(stages: list[dict[str, Any]]) -> dict[str, int] | None:
    """Forward and inverse samples the shard stage published (None: no inverse pairs, instruct.inverse off)."""
    shard = next((s for s in stages if s["stage"] == "shard" and s.get("present")), None)
    if shard is None or not shard["metrics"].get(INVERSE_METRIC):
        return None
    inverse = int(shard["metrics"][INVERSE_METRIC])
    return {"forward_samples": int(shard["rows_out"]) - inverse, "inverse_samples": inverse}


def eval_counts(stages: list[dict[str, Any]]) -> dict[str, int] | None:
    """Train and eval samples the shard stage published (None: no eval split, shard.eval_fraction 0); the
    same counts as the manifest's and the dataset card's splits (output/card.py)."""
    shard = next((s for s in stages if s["stage"] == "shard" and s.get("present")), None)
    if shard is None or EVAL_SAMPLES_METRIC not in shard["metrics"]:
        return None
    held_out = int(shard["metrics"][EVAL_SAMPLES_METRIC])
    return {"train_samples": int(shard["rows_out"]) - held_out, "eval_samples": held_out}


def edit_types(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Requested vs achieved mix, from the instruct stage's summed metrics: per type, rows asked for it
    and answers kept of it, each with its share (None before instruct has run). The start of the
    per-type funnel: later stages' counts go beside these."""
    instruct = next((s for s in stages if s["stage"] == "instruct" and s.get("present")), None)
    if instruct is None:
        return None
    m = instruct["metrics"]
    asked = {t: int(m.get(TYPE_REQUESTED + t, 0)) for t in NAMES}
    kept = {t: int(m.get(TYPE_KEPT + t, 0)) for t in NAMES}
    n_asked, n_kept = sum(asked.values()), sum(kept.values())
    types = {t: {"requested": asked[t], "requested_share": round(asked[t] / n_asked, 4) if n_asked else None,
                 "kept": kept[t], "kept_share": round(kept[t] / n_kept, 4) if n_kept else None}
             for t in NAMES if asked[t] or kept[t]}
    return {"requested": n_asked, "kept": n_kept, "fallback": int(m.get(TYPE_FALLBACK, 0)), "types": types}


def _funnel(stages: list[dict[str, Any]]) -> dict[str, object] | None:
    """The funnel by edit type (output/type_funnel.py) from the stages' summed metrics."""
    present = {s["stage"]: s["metrics"] for s in stages if s.get("present")}
    return type_funnel({name: present.get(name) for name in FUNNEL_STAGES})


def _share(n: int, share: float | None) -> str:
    return str(n) if share is None else f"{n} ({share:.0%})"


def types_table(status: dict[str, Any]) -> Table | None:
    """The funnel by edit type: rows asked for it and answers kept (with their shares: requested vs
    achieved), candidates rendered, passed filter, kept samples, UNet FLOPs per kept sample, top drops
    (None when no stage counted a type)."""
    report, funnel = status.get("edit_types") or {}, status.get("funnel")
    if not funnel:
        return None
    asked = report.get("requested", 0)
    caption = (f"{asked} rows asked for a type, {report.get('fallback', 0)} answered another" if asked
               else "no type_weights: the model's choice")
    table = Table(title=f"edit types: {funnel['kept_samples']} kept samples", caption=caption)
    for col in ("edit type", "asked", "answers kept", "candidates", "passed filter", "kept", "UNet FLOPs/kept",
                "top drops"):
        table.add_column(col)
    shares = report.get("types", {})
    for name, row in funnel["types"].items():
        mine = shares.get(name, {})
        per = row["unet_flops_per_kept"]
        top = ", ".join(f"{k} {n}" for k, n in list(row["drops"].items())[:3])
        table.add_row(name, _share(row["asked"], mine.get("requested_share")) if asked else "",
                      _share(row["answers_kept"], mine.get("kept_share")), str(row["candidates"]),
                      str(row["passed_filter"]), str(row["kept_samples"]), "" if per is None else f"{per:.3g}", top)
    return table


def _compute(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Render's UNet work over the samples kept so far (shard's, else filter's kept rows)."""
    by_name = {s["stage"]: s for s in stages if s.get("present")}
    if "render" not in by_name:
        return None
    kept_from = by_name.get("shard") or by_name.get("filter")
    inverse = int(by_name["shard"]["metrics"].get(INVERSE_METRIC, 0)) if "shard" in by_name else 0
    kept = int(kept_from["rows_out"]) - inverse if kept_from else 0  # forward samples: inverse ones cost no UNet
    return compute_report(by_name["render"]["metrics"], kept, inverse)


#: The fields of OUT/_progress.json the table shows (pipeline.live_progress.progress_record).
LIVE_FIELDS: dict[str, tuple[type, ...]] = {
    "stage": (str,), "partitions_done": (int,), "partitions_total": (int,), "partitions_in_flight": (list,),
    "rows_done": (int, float), "rows_total": (int, float), "rows_per_s": (int, float),
    "eta_s": (int, float, type(None)),
}


def _live(storage: Storage) -> dict[str, Any] | None:
    """What the running driver last published: stage, partitions in flight, rows/s, ETA (None when
    absent or not of that shape)."""
    try:
        live = json.loads(storage.read_text(PROGRESS_FILE))
    except (FileNotFoundError, ValueError):
        return None
    return live if shape_problem(live, LIVE_FIELDS, tuple(LIVE_FIELDS)) is None else None


def _lease_state(storage: Storage) -> dict[str, Any] | None:
    """Who is running on OUT right now (None: nobody holds the lease)."""
    info = read_lease(storage)
    if info is None:
        return None
    return {"holder": info.describe(), "host": info.host, "pid": info.pid, "started": info.started,
            "heartbeat": info.heartbeat, "stale": stale_reason(info, ttl_s=RunConfig().lease_ttl_s)}


def render_table(status: dict[str, Any]) -> Table:
    lease = status.get("lease")
    caption = None
    if lease:
        caption = f"running: {lease['holder']}" + (f" (stale: {lease['stale']})" if lease["stale"] else "")
        live = status.get("live")
        if live:
            rate = live.get("rows_per_s") or 0.0  # 0 until the stage has worked long enough to say
            eta = f", ETA {clock(live['eta_s'])}" if live.get("eta_s") is not None and rate > 0 else ""
            caption += (f"\n{live['stage']}: {live['partitions_done']}/{live['partitions_total']} partitions done, "
                        f"in flight {live['partitions_in_flight']}, {live['rows_done']:.0f}/{live['rows_total']} rows"
                        + (f", {human_rate(rate)}{eta}" if rate > 0 else ""))
    if status.get("compute"):
        caption = "\n".join(c for c in (caption, format_report(status["compute"])) if c)
    if status.get("inverse"):
        inv = status["inverse"]
        line = (f"inverse pairs: {inv['inverse_samples']} inverse samples published beside "
                f"{inv['forward_samples']} forward samples (shard's kept count holds both)")
        caption = "\n".join(c for c in (caption, line) if c)
    if status.get("eval"):
        held = status["eval"]
        line = (f"eval split: {held['eval_samples']} samples held out beside {held['train_samples']} train samples "
                "(shard's kept count holds both; the card's `test` and `train`)")
        caption = "\n".join(c for c in (caption, line) if c)
    if status.get("sessions"):
        ses = status["sessions"]
        turns = ", ".join(f"turn {t}: {n}" for t, n in ses["turn_samples"].items())
        caption = "\n".join(c for c in (caption, f"sessions: {ses['sessions']} published ({turns} samples)") if c)
    if status.get("model_edit_report"):
        caption = "\n".join(c for c in (caption, _edit_report_line(status["model_edit_report"])) if c)
    table = Table(title=f"editgen status: {status['out']}", caption=caption)
    for col in ("stage", "state", "partitions", "rows in", "kept", "dropped", "drop reasons", "config hash"):
        table.add_column(col)
    for s in status["stages"]:
        if not s["present"]:
            state = f"damaged {STAGE_FILE} (rerun)" if s.get("damaged") else "not run"
            table.add_row(s["stage"], state, "", "", "", "", "", "")
            continue
        state = f"stale ({s['stale_reason']})" if s.get("stale_reason") else s.get("state", "incomplete")
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items(), key=lambda kv: -kv[1]))
        table.add_row(
            s["stage"], state, f"{s['partitions_done']}/{s['partitions_total']}", str(s["rows_in"]),
            str(s["rows_out"]), str(s["rows_dropped"]), reasons, s["config_hash"] or "",
        )
    return table
