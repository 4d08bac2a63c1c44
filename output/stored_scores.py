"""Every stored score of OUT's samples, by sample key, with the filter's decision (kept or dropped).

Read from the partitions of the stages that score candidates (filters.pairs.score_registry.SOURCE_STAGES:
every candidate, kept or not, under `output.shard_writer.sample_key(id, candidate)`), each checked against
its completion record; where OUT has none of them (a copy holding the published data only), from the JSON
of the published samples (kept) and of the rejected export (dropped). Only OUT's storage layer reads.
"""

from __future__ import annotations

import json
import logging
import math
import tarfile
from dataclasses import dataclass, field

from editgen.filters.pairs.score_registry import SCORES, SOURCE_STAGES
from editgen.output.manifest import SPLITS, entries, read_manifest
from editgen.output.shard_writer import sample_key
from editgen.pipeline.records import part_name, read_record_table, read_records
from editgen.pipeline.stage import KEPT
from editgen.pipeline.storage import Storage

log = logging.getLogger("editgen")

FILTER_PARTITIONS = "filter partitions"
SHARDS = "published and rejected shards"


@dataclass
class StoredScores:
    """key -> {score column: value (NaN where the sample has none)}, key -> kept by the filter, and where
    they were read (`source`); `skipped`: files left out because they did not match their records."""

    source: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    kept: dict[str, bool] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        """The registered score columns that some sample holds a finite value of, in registry order."""
        held = {c for row in self.scores.values() for c, v in row.items() if math.isfinite(v)}
        return [s.name for s in SCORES if s.name in held]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _merge(found: StoredScores, key: str, row: dict[str, object]) -> None:
    scores = found.scores.setdefault(key, {})
    for s in SCORES:
        if s.name in row and row[s.name] is not None:
            scores[s.name] = _number(row[s.name])
    if "status" in row:
        found.kept[key] = row["status"] == KEPT


def from_partitions(storage: Storage) -> StoredScores | None:
    """Scores from the scoring stages' committed partitions; None when OUT has none."""
    columns = ["id", "candidate", "status", *(s.name for s in SCORES)]
    found = StoredScores(FILTER_PARTITIONS)
    any_record = False
    for stage in SOURCE_STAGES:
        for rec in read_records(storage, stage):
            any_record = True
            table = read_record_table(storage, stage, rec, columns, "its samples are left out")
            if table is None:
                found.skipped.append(f"{stage}/{rec.get('file') or part_name(rec['partition'])}")
                continue
            for row in table.to_pylist():
                _merge(found, sample_key(str(row["id"]), int(row["candidate"])), row)
    return found if any_record else None


def from_shards(storage: Storage) -> StoredScores | None:
    """Scores from the published samples' JSON (kept: the train and eval tars) and the rejected export's
    (dropped); None when nothing is published."""
    try:
        manifest = read_manifest(storage)
    except (FileNotFoundError, ValueError, TypeError, KeyError, AttributeError):
        return None
    found = StoredScores(SHARDS)
    for split in SPLITS:
        for entry in entries(manifest, split=split):
            _read_tar(storage, str(entry.get("name")), found, kept=split != "rejected")
    return found


def _read_tar(storage: Storage, name: str, found: StoredScores, kept: bool) -> None:
    """The JSON members of one tar (key = member name up to its first dot, as webdataset splits)."""
    try:
        with storage.open(name) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or not base.endswith(".json"):
                    continue
                raw = tar.extractfile(member)
                meta = json.loads(raw.read()) if raw is not None else None
                if isinstance(meta, dict):
                    _merge(found, base.split(".", 1)[0], {**meta, "status": KEPT if kept else "dropped"})
    except (OSError, ValueError, tarfile.TarError) as exc:  # UnsafePathError is a ValueError
        log.warning("%s: unreadable (%s); its samples are left out", name, type(exc).__name__)
        found.skipped.append(name)


def stored_scores(storage: Storage) -> StoredScores | None:
    """The filter partitions' scores, else the shards', else None (nothing scored in OUT)."""
    return from_partitions(storage) or from_shards(storage)
