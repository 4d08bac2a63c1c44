"""Whether each stage's output in OUT still follows from OUT's config and from its upstream's output.

A stage's `_stage.json` says `complete` under the hash it was computed with; that stays true after a later
`editgen run --only ingest --set ingest.min_words=5` recomputes ingest, and instruct's output then rests on
rows that no longer exist. So the state of a stage is recomputed from what OUT records: the hash chain
under OUT/config.yaml (the latest run's config) from each stage's recorded upstream hash, and the upstream
hash each stage recorded when it was built (`upstream_hash`, written by the runner). `editgen status`
shows the states; `export-hf` and `preview` refuse stale output with one line (`refuse_stale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from editgen.pipeline.config import EditgenConfig, out_config, section_hash
from editgen.pipeline.errors import UserError
from editgen.pipeline.records import read_stage_meta
from editgen.pipeline.redact import REDACTED, redact_url
from editgen.pipeline.registry import load_stage_class, stage_names
from editgen.pipeline.safe_yaml import load as load_yaml
from editgen.pipeline.storage import Storage

#: Why a stage is stale, by what `stage_states` found.
UPSTREAM_CHANGED = "upstream changed"  # its upstream was recomputed after it was built
UPSTREAM_STALE = "upstream stale"  # its upstream is stale itself: it will be recomputed, and this with it
CONFIG_CHANGED = "config or code changed"  # its own settings in OUT/config.yaml, or its code version
CONFIG_OR_UPSTREAM = "config, code or upstream changed"  # built before upstream hashes were recorded


@dataclass(frozen=True)
class StageState:
    """One stage of OUT: `not run`, `incomplete`, `complete` or `stale` (with the reason)."""

    name: str
    state: str
    reason: str = ""
    upstream: str | None = None

    @property
    def label(self) -> str:
        return f"stale ({self.reason})" if self.state == "stale" else self.state


def stage_states(storage: Storage, cfg: EditgenConfig | None = None,
                 metas: dict[str, dict[str, Any] | None] | None = None) -> list[StageState]:
    """Every stage of the graph under OUT's config (`cfg`: OUT/config.yaml), in data-flow order; `metas`:
    the stages' _stage.json already read (each is read, and a damaged one reported, once)."""
    cfg = cfg or out_config(storage)
    names = stage_names(cfg)
    metas = metas if metas is not None else {name: read_stage_meta(storage, name) for name in names}
    unverifiable = unverifiable_sections(storage)
    if unverifiable is None:  # no recorded config: only the upstream links can be checked
        unverifiable = {n for name in names for n in (name, *load_stage_class(name).config_reads(cfg))}
    states: list[StageState] = []
    for i, name in enumerate(names):
        up = names[i - 1] if i else None
        meta = metas.get(name)
        if meta is None:
            states.append(StageState(name, "not run", upstream=up))
            continue
        up_meta = metas.get(up) if up else None
        stale_above = any(s.state == "stale" for s in states)
        reason = UPSTREAM_STALE if stale_above else _stale_reason(cfg, name, meta, up, up_meta, unverifiable)
        state = "stale" if reason else "complete" if meta.get("complete") else "incomplete"
        states.append(StageState(name, state, reason, up))
    return states


def _stale_reason(cfg: EditgenConfig, name: str, meta: dict[str, Any], up: str | None,
                  up_meta: dict[str, Any] | None, unverifiable: set[str]) -> str:
    """'' when the stage's output follows from OUT's config and its upstream's current output (or when
    that cannot be told: an upstream without a readable _stage.json, a setting OUT does not hold)."""
    recorded_up = "upstream_hash" in meta  # the upstream hash it was built on (OUTs since issue 20)
    if up is not None and up_meta is not None and recorded_up and meta["upstream_hash"] != up_meta.get("stage_hash"):
        return UPSTREAM_CHANGED
    built_on = meta["upstream_hash"] if recorded_up else up_meta.get("stage_hash") if up_meta else None
    if up is not None and built_on is None:
        return ""  # its upstream's stage file is gone or damaged and it recorded none: the next run rewrites it
    cls = load_stage_class(name)
    reads = cls.config_reads(cfg)
    if {name, *(r.split(".")[0] for r in reads)} & unverifiable:
        return ""  # a setting OUT/config.yaml does not hold enters this hash: it cannot be recomputed here
    if meta.get("stage_hash") == section_hash(cfg, name, built_on or "", cls.version, reads):
        return ""
    return CONFIG_CHANGED if up is None or recorded_up else CONFIG_OR_UPSTREAM


def unverifiable_sections(storage: Storage) -> set[str] | None:
    """Sections of OUT/config.yaml whose hashes cannot be recomputed from it: a redacted value (editgen
    never writes a secret to OUT) or one that no longer validates (pipeline.config.out_config then uses
    the defaults). None: no readable config at all."""
    try:
        data = load_yaml(storage.read_text("config.yaml"))
    except Exception:  # noqa: BLE001 - missing, unreadable, not YAML: nothing to recompute hashes from
        return None
    if not isinstance(data, dict):
        return None
    bad = set()
    for key, value in data.items():
        try:
            EditgenConfig.model_validate({key: value})
        except ValidationError:
            bad.add(str(key))
            continue
        if redacted_paths(value):
            bad.add(str(key))
    return bad


def redacted_paths(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the values a secret was blanked out of (`***`, whole or inside a URL)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in redacted_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):  # a list is set whole (ingest.input, --set key=[a, b])
        return [path] if any(redacted_paths(v, path) for v in node) else []
    return [path] if isinstance(node, str) and REDACTED in node else []


def refuse_stale(storage: Storage, out: str, command: str, through: str | None = None) -> None:
    """One line (exit 2) when a stage `command` reads is stale (every stage, or those up to `through`):
    naming the stage that changed and the command that brings OUT up to date."""
    states = stage_states(storage)
    if through is not None:
        names = [s.name for s in states]
        states = states[: names.index(through) + 1] if through in names else states
    stale = [s for s in states if s.state == "stale"]
    shown = redact_url(out)
    fix = f"`editgen run --out {shown}` recomputes them with the config recorded in OUT"
    if stale:
        first = stale[0]
        why = (f"{first.upstream} was recomputed after {first.name} was computed" if first.reason == UPSTREAM_CHANGED
               else f"{first.name}'s {first.reason.replace(' changed', '')} changed since it was computed")
        raise UserError(f"{shown}: {', '.join(s.name for s in stale)} {'is' if len(stale) == 1 else 'are'} stale "
                        f"({why}); {fix}, then rerun `editgen {command}`")
    if through is not None and states and states[-1].name == through and states[-1].state == "incomplete":
        raise UserError(f"{shown}: the {through} stage is incomplete (a run is under way or was interrupted); "
                        f"`editgen run --out {shown}` completes it, then rerun `editgen {command}`")
