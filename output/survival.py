"""The survival funnel: for every stage of a run's graph, rows in, rows out, drop reasons and the compute it
spent, and at the end the kept samples per GPU-hour (per CPU-hour when no GPU ran).

Built from completion records only (pipeline/records.py), of each stage's current run, so
`editgen status`, the manifest's `survival` section (written by the shard stage, which passes its own
record-to-be) and `editgen preview` show the same figures. Which stages: whatever the graph holds, in its
order (fetch only with real images, a judge stage when there is one); never a fixed list.

Compute of a stage:
- GPU-seconds where any of its partitions reports a `gpu_seconds` metric (render on a GPU; any stage
  that measures its device time the same way); `None` otherwise: it ran on CPU.
- CPU-seconds: the records' `cpu_seconds` (the worker's process time for the partition, or the driver's
  for a global step), with wall `seconds` beside it; always reported, the figure of a CPU stage.
- Work: `unet_flops` where a stage has them (render), `generated_tokens` / `prompt_tokens` where a stage
  has them (instruct's LLM; a judge's VLM), whatever the stage.
A stage of several steps (ingest: `_pre`, `_dedup`, then publish) spends compute in each: the records
in its step folders add their compute; rows and drops are the stage's own (its last step's) records.
Only completed partitions count: a killed attempt's work is not in any record.
Rows out can exceed rows in (instruct with sessions: later turns; shard with inverse pairs): shown as is.

The manifest holds the funnel without its timings (`untimed`): rows, drops, where each stage ran, FLOPs
and tokens are what the data is, the same after any resume, but seconds are how one run went (a killed
and recomputed partition spends them again), and manifest.json is byte-identical across resumes
(docs/faults.md). Seconds and samples per GPU-/CPU-hour stay in the records: `status` and `preview`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from editgen.pipeline.records import (
    DONE_DIR,
    GLOBAL_RECORD,
    read_record,
    read_records,
    read_stage_meta,
    sum_records,
)
from editgen.pipeline.storage import Storage

#: The manifest's and `status --json`'s key.
SURVIVAL = "survival"
#: Token metrics any LLM/VLM stage reports (instruct, judge).
TOKEN_METRICS = ("generated_tokens", "prompt_tokens")
#: What one run's clock measured: in status and preview, never in the manifest.
TIMED_STAGE_KEYS = ("cpu_seconds", "wall_seconds", "gpu_seconds")
TIMED_KEYS = ("cpu_seconds", "gpu_seconds", "kept_per_gpu_hour", "kept_per_cpu_hour")


@dataclass(frozen=True)
class StageSurvival:
    """One stage's line: rows, drops, compute (gpu_seconds None: no GPU ran for it) and work."""

    stage: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    cpu_seconds: float
    wall_seconds: float
    gpu_seconds: float | None
    unet_flops: float | None
    generated_tokens: int | None
    prompt_tokens: int | None

    @property
    def device(self) -> str:
        return "cpu" if self.gpu_seconds is None else "gpu"

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "rows_dropped": sum(self.dropped.values()), "device": self.device}


def _seconds(value: float) -> float:
    return round(value, 3)


def stage_survival(name: str, records: Sequence[Mapping[str, Any]],
                   step_records: Iterable[Mapping[str, Any]] = ()) -> StageSurvival:
    """A stage's line from its completion records (its current run's) and its earlier steps' records."""
    dropped, metrics = sum_records([dict(r) for r in records])
    every = [*records, *step_records]
    _, all_metrics = sum_records([dict(r) for r in every])
    gpu = all_metrics.get("gpu_seconds")
    tokens = {k: int(all_metrics[k]) if k in all_metrics else None for k in TOKEN_METRICS}
    return StageSurvival(
        stage=name, rows_in=sum(int(r.get("rows_in", 0)) for r in records),
        rows_out=sum(int(r.get("rows_out", 0)) for r in records), dropped=dict(dropped),
        cpu_seconds=_seconds(sum(float(r.get("cpu_seconds", 0.0)) for r in every)),
        wall_seconds=_seconds(sum(float(r.get("seconds", 0.0)) for r in every)),
        gpu_seconds=None if gpu is None else _seconds(gpu),
        unet_flops=all_metrics.get("unet_flops"), **tokens,
    )


def _current(storage: Storage, folder: str, stage_hash: object) -> list[dict[str, Any]]:
    """A step folder's records of the stage's current hash (a global step: its one record)."""
    glob = read_record(storage, folder, GLOBAL_RECORD)
    records = [glob] if glob else read_records(storage, folder)
    return [r for r in records if r.get("stage_hash") == stage_hash]


def read_stage(storage: Storage, name: str) -> StageSurvival | None:
    """A stage's line read from OUT (None: not run): its own records and those of its step folders
    (`OUT/<stage>/_<step>/_done`)."""
    meta = read_stage_meta(storage, name)
    if meta is None:
        return None
    h = meta.get("stage_hash")
    steps = [sub for sub in storage.listdir(name) if sub.startswith("_") and sub != DONE_DIR
             and storage.listdir(name, sub, DONE_DIR)]
    return stage_survival(name, _current(storage, name, h),
                          [r for sub in steps for r in _current(storage, f"{name}/{sub}", h)])


def _per_hour(kept: int | None, seconds: float | None) -> float | None:
    return None if kept is None or not seconds else round(kept / (seconds / 3600.0), 3)


def survival(graph: Sequence[str], lines: Mapping[str, StageSurvival | None]) -> dict[str, object] | None:
    """The funnel as JSON over the graph's stages (`lines`: each stage's line, None or absent: not run).
    Kept samples are the graph's last stage's rows out (None until it has run); per GPU-hour over every
    stage's GPU-seconds, per CPU-hour (only when no GPU ran) over every stage's CPU-seconds."""
    present = [line for name in graph if (line := lines.get(name)) is not None]
    if not present:
        return None
    end = lines.get(graph[-1])
    kept = None if end is None else end.rows_out
    gpus = [s.gpu_seconds for s in present if s.gpu_seconds is not None]
    gpu = _seconds(sum(gpus)) if gpus else None
    cpu = _seconds(sum(s.cpu_seconds for s in present))
    return {
        "stages": [s.to_json() for s in present],
        "not_run": [name for name in graph if lines.get(name) is None],
        "end_stage": graph[-1], "kept_samples": kept, "gpu_seconds": gpu, "cpu_seconds": cpu,
        "unet_flops": sum(s.unet_flops or 0.0 for s in present),
        "generated_tokens": sum(s.generated_tokens or 0 for s in present),
        "kept_per_gpu_hour": _per_hour(kept, gpu),
        "kept_per_cpu_hour": _per_hour(kept, cpu) if gpu is None else None,
    }


def untimed(section: Mapping[str, Any] | None) -> dict[str, object] | None:
    """The funnel without what one run's clock measured: the manifest's `survival` section."""
    if section is None:
        return None
    stages = [{k: v for k, v in line.items() if k not in TIMED_STAGE_KEYS} for line in section["stages"]]
    return {**{k: v for k, v in section.items() if k not in TIMED_KEYS}, "stages": stages}


def read_survival(storage: Storage, graph: Sequence[str]) -> dict[str, object] | None:
    """The funnel of OUT's graph, read from its records (status, preview)."""
    return survival(graph, {name: read_stage(storage, name) for name in graph})


# ---- text: the same cells for the status table and the preview page ---------------------------
def compute_cell(line: Mapping[str, Any]) -> str:
    """`12.3 GPU-s` where a GPU ran, else `4.56 CPU-s`."""
    if line.get("gpu_seconds") is not None:
        return f"{line['gpu_seconds']:.4g} GPU-s"
    return f"{line['cpu_seconds']:.4g} CPU-s"


def work_cell(line: Mapping[str, Any]) -> str:
    """UNet FLOPs and LLM/VLM tokens, where the stage has them."""
    parts = []
    if line.get("unet_flops") is not None:
        parts.append(f"{line['unet_flops']:.3g} UNet FLOPs")
    if line.get("generated_tokens") is not None:
        parts.append(f"{line['generated_tokens']} tokens out, {line.get('prompt_tokens') or 0} in")
    return "; ".join(parts)


def drops_cell(line: Mapping[str, Any], top: int | None = None) -> str:
    """Drop reasons, most first."""
    ranked = sorted(line["dropped"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {n}" for k, n in ranked[:top])


def end_line(section: Mapping[str, Any]) -> str:
    """The funnel's last line: kept samples and what each GPU-hour (CPU-hour when no GPU ran) yielded."""
    kept = section.get("kept_samples")
    if kept is None:
        return f"kept samples: n/a ({section['end_stage']} has not run)"
    if section.get("gpu_seconds") is not None:
        rate = section.get("kept_per_gpu_hour")
        return (f"kept samples: {kept}; {section['gpu_seconds']:.4g} GPU-s in all: "
                f"{'n/a' if rate is None else format(rate, '.4g')} kept samples per GPU-hour")
    rate = section.get("kept_per_cpu_hour")
    return (f"kept samples: {kept}; no GPU ran, {section['cpu_seconds']:.4g} CPU-s in all: "
            f"{'n/a' if rate is None else format(rate, '.4g')} kept samples per CPU-hour")
