"""The funnel by edit type: for each type, how many rows were asked for it, answers kept, candidates
rendered, samples kept, why the others went, and what a kept sample cost in UNet FLOPs.

Built from the stages' summed partition metrics only (never the partitions): the runner counts every
stage output by type (`by_type/...`, pipeline.stage.count_types), render adds each type's FLOPs, instruct
its requested types. `editgen status`, the manifest and the preview show the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from editgen.pipeline.stage import BY_TYPE, UNTYPED
from editgen.prompts.taxonomy import NAMES

#: instruct's own count of the rows asked for each type (stages/instruct.py TYPE_REQUESTED).
REQUESTED = "type_requested:"
#: The stages whose drops the funnel lists, in pipeline order.
FUNNEL_STAGES = ("instruct", "render", "filter", "shard")

Metrics = Mapping[str, float]


@dataclass(frozen=True)
class TypeRow:
    """One edit type's line of the funnel (`asked` is None when no type was requested)."""

    asked: int | None
    answers_kept: int
    candidates: int
    passed_filter: int
    kept_samples: int
    drops: dict[str, int]  # "<stage>:<reason>" -> rows, most first
    unet_flops: float

    @property
    def unet_flops_per_kept(self) -> float | None:
        return self.unet_flops / self.kept_samples if self.kept_samples else None

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "unet_flops_per_kept": self.unet_flops_per_kept}


def _by_type(metrics: Metrics | None, what: str) -> dict[str, float]:
    """{type: value} of one `by_type/<what>:<type>` family."""
    prefix = f"{BY_TYPE}{what}:"
    return {k[len(prefix):]: v for k, v in (metrics or {}).items() if k.startswith(prefix)}


def _drops(metrics: Metrics | None) -> dict[str, dict[str, int]]:
    """{type: {reason: n}} of one stage's `by_type/drop:<type>:<reason>` metrics."""
    out: dict[str, dict[str, int]] = {}
    for key, n in _by_type(metrics, "drop").items():
        t, _, reason = key.partition(":")
        out.setdefault(t, {})[reason] = out.get(t, {}).get(reason, 0) + int(n)
    return out


def _order(types: set[str]) -> list[str]:
    return [t for t in (*NAMES, UNTYPED) if t in types] + sorted(types - {*NAMES, UNTYPED})


def funnel_rows(metrics: Mapping[str, Metrics | None]) -> dict[str, TypeRow]:
    """Each type's funnel line from each stage's summed metrics ({stage: metrics}, None for a stage not
    run); empty when no stage counted a type (a run before instruct, or an OUT from before edit types)."""
    asked = {k[len(REQUESTED):]: v for k, v in (metrics.get("instruct") or {}).items() if k.startswith(REQUESTED)}
    answers = _by_type(metrics.get("instruct"), "kept")
    rendered = _by_type(metrics.get("render"), "rows")
    flops = _by_type(metrics.get("render"), "unet_flops")
    passed = _by_type(metrics.get("filter"), "kept")
    final = _by_type(metrics.get("shard"), "kept") if metrics.get("shard") is not None else passed
    drops = {s: _drops(metrics.get(s)) for s in FUNNEL_STAGES}
    types = set(asked) | set(answers) | set(rendered) | set(passed) | {t for d in drops.values() for t in d}
    rows: dict[str, TypeRow] = {}
    for t in _order(types):
        reasons = {f"{s}:{r}": n for s in FUNNEL_STAGES for r, n in drops[s].get(t, {}).items()}
        rows[t] = TypeRow(asked=int(asked.get(t, 0)) if asked else None, answers_kept=int(answers.get(t, 0)),
                          candidates=int(rendered.get(t, 0)), passed_filter=int(passed.get(t, 0)),
                          kept_samples=int(final.get(t, 0)),
                          drops=dict(sorted(reasons.items(), key=lambda kv: -kv[1])), unet_flops=flops.get(t, 0.0))
    return rows


def type_funnel(metrics: Mapping[str, Metrics | None]) -> dict[str, object] | None:
    """The funnel as JSON (status --json, the manifest's `edit_types`); None when no type was counted.
    `unattributed_unet_flops`: render work on no candidate row (a pair dropped after its source pass)."""
    rows = funnel_rows(metrics)
    if not rows:
        return None
    total = float((metrics.get("render") or {}).get("unet_flops", 0.0))
    return {"types": {t: r.to_json() for t, r in rows.items()},
            "kept_samples": sum(r.kept_samples for r in rows.values()),
            "unattributed_unet_flops": max(0.0, total - sum(r.unet_flops for r in rows.values()))}

