"""With a judge after the filter, the rejected export holds the filter's rejects AND the judge's (issue 23
item 3): every candidate is in the kept or the rejected shards exactly once, in the filter's order, the
judge's rejects with their scores and reasons, the filter's with null judge fields."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from editgen.output.manifest import entries, read_manifest
from editgen.output.shard_writer import sample_key
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import DamagedInput
from editgen.pipeline.records import write_record
from editgen.pipeline.runner import stage_hashes
from editgen.pipeline.stage import PlanContext, count_reasons, kept_rows, part_name, with_status
from editgen.pipeline.storage import Storage
from editgen.stages.judge import OUTPUT_FIELDS
from editgen.stages.shard import ShardStage
from tests.support import filter_partitions


def judge_partitions(root: Path, filter_records: list[dict], swap: bool = False) -> list[dict]:
    """The judge's partitions over the filter's kept rows: the first kept row of each is judged below the
    bar, the others kept; `swap` pairs each judge partition with the other filter partition's rows."""
    storage = Storage(str(root))
    records = []
    for rec in filter_records:
        write_record(storage, "filter", rec)
    n = len(filter_records)
    for pid in range(n):
        src = (n - 1 - pid) if swap else pid
        t = kept_rows(storage.read_table("filter", part_name(src)))
        for f in OUTPUT_FIELDS:
            value = 7 if f.type == pa.int32() else 0.7 if f.type == pa.float64() else "fine"
            t = t.append_column(f, pa.array([value] * t.num_rows, f.type))
        t = with_status(t, ["judge_below_instruction" if i == 0 else None for i in range(t.num_rows)])
        sha, nbytes = storage.write_table(t, "judge", part_name(pid))
        kept, dropped = count_reasons(t)
        records.append({"stage": "judge", "partition": pid, "file": part_name(pid), "sha256": sha,
                        "bytes": nbytes, "rows_in": t.num_rows, "rows_out": kept, "dropped": dropped})
    return records


def shard(root: Path, records: list[dict], export_rejected: bool = True) -> dict:
    cfg = build_config(extra={"judge": {"enabled": True}, "shard": {"export_rejected": export_rejected}})
    ctx = PlanContext(cfg, Storage(str(root)), records, "judge", stage_hash=stage_hashes(cfg)["shard"])
    return ShardStage(cfg).run_global(ctx)


def samples(root: Path, rejected: bool) -> dict[str, dict]:
    out = {}
    for e in entries(read_manifest(Storage(str(root))), rejected):
        with tarfile.open(root / e["name"]) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    out[m.name.split(".", 1)[0]] = json.loads(tar.extractfile(m).read())
    return out


def test_the_rejected_export_gains_the_judges_rejects_and_keeps_the_filters(tmp_path):
    filter_records = filter_partitions(tmp_path, parts=2, pairs=3, candidates=2, size=16)
    summary = shard(tmp_path, judge_partitions(tmp_path, filter_records))
    storage = Storage(str(tmp_path))
    flt = [r for p in range(2) for r in storage.read_table("filter", part_name(p)).to_pylist()]
    jdg = {sample_key(r["id"], r["candidate"]): r for p in range(2)
           for r in storage.read_table("judge", part_name(p)).to_pylist()}
    kept, rejected = samples(tmp_path, False), samples(tmp_path, True)
    assert set(kept) == {k for k, r in jdg.items() if r["status"] == "kept"} and summary["rows_out"] == len(kept)
    assert set(kept) | set(rejected) == {sample_key(r["id"], r["candidate"]) for r in flt}
    assert not set(kept) & set(rejected)
    judge_rejects = {k for k, r in jdg.items() if r["status"] != "kept"}
    assert len(judge_rejects) == 2
    for key, meta in rejected.items():
        if key in judge_rejects:
            assert meta["drop_reason"] == "judge_below_instruction" and meta["judge_instruction"] == 7
            assert meta["judge_instruction_reason"] == "fine"
        else:  # the filter's reject: never judged, the same fields as null
            assert meta["drop_reason"].startswith("below_") and meta["judge_instruction"] is None
            assert "judge_score" in meta and meta["judge_score"] is None
    # the filter's order: rejects of partition 0 come before those of partition 1
    order = [k for k in rejected]
    first_part = {sample_key(r["id"], r["candidate"]) for r in storage.read_table("filter", part_name(0)).to_pylist()}
    assert order == sorted(order, key=lambda k: k not in first_part)


def test_without_the_rejected_export_the_filter_is_not_read(tmp_path):
    records = judge_partitions(tmp_path, filter_partitions(tmp_path, parts=1, pairs=2, candidates=2, size=16))
    for f in (tmp_path / "filter").glob("part-*.parquet"):
        f.unlink()
    summary = shard(tmp_path, records, export_rejected=False)
    assert summary["rows_out"] == len(samples(tmp_path, False)) > 0


def test_a_judge_output_that_does_not_follow_the_filter_is_named(tmp_path):
    filter_records = filter_partitions(tmp_path, parts=2, pairs=2, candidates=2, size=16)
    with pytest.raises(DamagedInput, match="does not follow"):
        shard(tmp_path, judge_partitions(tmp_path, filter_records, swap=True))
