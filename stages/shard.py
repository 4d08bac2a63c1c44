"""Shard stage (global): all filter partitions -> numbered WebDataset shards + manifest + dataset card
(OUT/shards/gen-<G>/*.tar, OUT/rejected/gen-<G>/*.tar, OUT/manifest.json: output/manifest.py;
OUT/shards/README.md: output/card.py).

Global because shard numbering must see every partition in order to be deterministic. Runs on the
driver; shards are encoded and uploaded by a small thread pool (`shard.resources.concurrency`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Iterator
from typing import Any

from editgen.output.card import CARD, build_card
from editgen.output.manifest import MANIFEST, SHARDS_DIR, SPLITS, entries, read_manifest
from editgen.output.rejects import Part, with_earlier_rejects
from editgen.output.shard_writer import iter_rows, write_dataset
from editgen.output.survival import SURVIVAL, read_stage, stage_survival, survival, untimed
from editgen.output.type_funnel import type_funnel
from editgen.output.type_quota import OVER_QUOTA, QuotaGate, kept_samples, select
from editgen.pipeline.records import GlobalSummary, combined_key, current_metrics, read_records
from editgen.pipeline.registry import load_stage_class, stage_names
from editgen.pipeline.settings.shard import ShardConfig
from editgen.pipeline.stage import BY_TYPE, PlanContext, Stage, part_name
from editgen.pipeline.storage import FileInfo, Storage

#: The stage whose rejects the rejected export holds, whatever judges its kept rows after it.
FILTER = "filter"


class ShardStage(Stage[ShardConfig]):
    name = "shard"
    version = "5"  # 2: OUT/manifest.json, rejected tars, a mask in every sample; 3: the funnel by edit type;
    # 4: with a judge, the rejected export holds the filter's rejects too; 5: each split's schema in the manifest
    # (`features`, output/features.py), declared in the card
    is_global = True
    input_columns = ("candidate", "input_image", "edited_image")

    def run_global(self, ctx: PlanContext) -> GlobalSummary:
        if ctx.upstream_dir is None:
            raise ValueError("shard: no upstream (filter) to read from")
        records = sorted(ctx.upstream_records, key=lambda r: r["partition"])
        upstream_key = combined_key([r["sha256"] for r in records])
        cfg = self.settings
        parts = [(ctx.upstream_dir, r.get("file") or part_name(r["partition"]), r["sha256"]) for r in records]
        t0 = time.perf_counter()
        quota = cfg.type_quota
        gate = QuotaGate(select(kept_samples(ctx.storage, parts), quota) if quota is not None else None)
        rows, upstream_key = self._rows(ctx, records, parts, upstream_key)
        summary = write_dataset(
            ctx.storage,
            gate.rows(rows),
            prefix=cfg.prefix,
            samples_per_shard=cfg.samples_per_shard,
            max_shard_bytes=cfg.max_shard_bytes,
            export_rejected=cfg.export_rejected,
            eval_fraction=cfg.eval_fraction,
            workers=cfg.resources.concurrency,
            config_hash=ctx.stage_hash,
            upstream_key=upstream_key,
            render_metrics=current_metrics(ctx.storage, "render"),
            sections=lambda so_far: {"edit_types": funnel(ctx.storage, gate),
                                     SURVIVAL: self._survival(ctx.storage, so_far, gate)},
        )
        _account_quota(summary, gate)
        self._write_card(ctx.storage)
        summary["markers"] = self._markers(ctx.storage)
        seconds = time.perf_counter() - t0
        summary["metrics"]["shard_seconds"] = seconds
        summary["metrics"]["shard_mb_per_s"] = summary["bytes"] / 1e6 / seconds if seconds > 0 else 0.0
        return summary

    def _rows(self, ctx: PlanContext, records: list[Any], parts: list[Part],
              upstream_key: str) -> tuple[Iterator[dict[str, Any]], str]:
        """(the rows to publish, the key of what they are built from). With the rejected export and a stage
        between the filter and this one (the judge, which sees the filter's kept rows only), the filter's
        own rejects are merged back in (output/rejects.py), and its partitions join the key."""
        names = stage_names(self.config)
        judging = names[names.index(FILTER) + 1: names.index(self.name)] if FILTER in names else []
        if not (self.settings.export_rejected and judging):
            return iter_rows(ctx.storage, parts), upstream_key
        screened = sorted(read_records(ctx.storage, FILTER), key=lambda r: r["partition"])
        by_pid = {int(r["partition"]): (FILTER, r.get("file") or part_name(r["partition"]), r["sha256"])
                  for r in screened}
        added = [c for n in judging for c in load_stage_class(n).output_columns]
        judged = [(int(r["partition"]), p) for r, p in zip(records, parts, strict=True)]
        key = combined_key([upstream_key, *(r["sha256"] for r in screened)])
        return with_earlier_rejects(ctx.storage, judged, by_pid, added), key

    def _survival(self, storage: Storage, so_far: GlobalSummary, gate: QuotaGate) -> dict[str, object] | None:
        """The manifest's survival funnel (output/survival.py), untimed: the graph's stages up to this one,
        read from their records, then this stage's own rows and drops as its record will hold them."""
        names = stage_names(self.config)
        graph = names[: names.index(self.name) + 1]
        own: GlobalSummary = {**so_far, "dropped": dict(so_far["dropped"])}
        _account_quota(own, gate)
        lines = {name: read_stage(storage, name) for name in graph[:-1]}
        return untimed(survival(graph, {**lines, self.name: stage_survival(self.name, [dict(own)])}))

    def _write_card(self, storage: Storage) -> None:
        """OUT/shards/README.md (output/card.py) from the manifest just published; a killed stage leaves the
        previous card beside the new manifest, which `global_output_valid` then rewrites."""
        storage.write_text(build_card(read_manifest(storage), self.config), SHARDS_DIR, CARD)

    def _ensure_card(self, storage: Storage, manifest: dict[str, Any]) -> None:
        """The card is a pure function of the (verified) manifest and the config: one missing, edited or stale
        (an OUT published before cards, a new shard.card.license, which is outside the stage hash) is
        rewritten in place rather than re-encoding every tar."""
        card = build_card(manifest, self.config)
        try:
            current = storage.read_text(SHARDS_DIR, CARD) == card
        except (FileNotFoundError, ValueError):  # ValueError: not UTF-8
            current = False
        if not current:
            storage.write_text(card, SHARDS_DIR, CARD)

    @staticmethod
    def _markers(storage: Storage) -> dict[str, list[str | float | None]]:
        """ETag / mtime of every published tar, so a resume trusts them without reading them."""
        infos = _tar_infos(storage, read_manifest(storage))
        return {name: [info.etag, info.mtime] for name, info in infos.items()}

    def global_output_valid(self, ctx: PlanContext, record: Any) -> bool:
        """Skip only if the manifest and every shard it lists are exactly what was written; then the card is
        made current (`_ensure_card`)."""
        storage = ctx.storage
        try:
            text = storage.read_bytes(MANIFEST)
            if hashlib.sha256(text).hexdigest() != record.get("sha256"):
                return False
            manifest = json.loads(text)
            infos = _tar_infos(storage, manifest)
            full = self.config.run.verify_checksums == "full"
            markers = record.get("markers", {})
            for e in _entries(manifest):
                info = infos.get(e["name"])
                if info is None or info.size != e["bytes"]:
                    return False
                known = markers.get(e["name"])
                if (full or known is None or known != [info.etag, info.mtime]) and (
                    hashlib.sha256(storage.read_bytes(e["name"])).hexdigest() != e["sha256"]
                ):
                    return False
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):  # a manifest of the wrong shape
            return False
        self._ensure_card(storage, manifest)
        return True


def gate_metrics(gate: QuotaGate) -> dict[str, float]:
    """The shard stage's own per-type counts: samples kept and over the quota."""
    out = {f"{BY_TYPE}kept:{t}": float(n) for t, n in gate.kept.items()}
    out.update({f"{BY_TYPE}drop:{t}:{OVER_QUOTA}": float(n) for t, n in gate.over.items()})
    return out


def funnel(storage: Storage, gate: QuotaGate) -> dict[str, object] | None:
    """The manifest's `edit_types`: the per-type funnel up to the samples this publication keeps."""
    found = {s: current_metrics(storage, s) for s in ("instruct", "render", "filter")}
    return type_funnel({**found, "shard": gate_metrics(gate)})


def _account_quota(summary: GlobalSummary, gate: QuotaGate) -> None:
    """Over-quota samples are the stage's drops (rows in = kept + dropped); per-type counts in metrics."""
    over = sum(gate.over.values())
    if over:
        summary["rows_in"] += over
        summary["dropped"] = dict(sorted({**summary["dropped"], OVER_QUOTA: over}.items()))
    summary.setdefault("metrics", {}).update(gate_metrics(gate))


def _entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every tar a manifest lists: kept (train), eval and rejected."""
    return [e for split in SPLITS for e in entries(manifest, split=split)]


def _tar_infos(storage: Storage, manifest: dict[str, Any]) -> dict[str, FileInfo]:
    """{manifest name: FileInfo} from one listing per generation folder (not one request per tar)."""
    infos: dict[str, FileInfo] = {}
    for folder in sorted({posixpath.dirname(e["name"]) for e in _entries(manifest)}):
        for name, info in storage.list_info(folder).items():
            infos[f"{folder}/{name}" if folder else name] = info
    return infos
