"""The accounting chain behind a dataset: every stage complete, every row kept or dropped, every
partition of a stage computed from the same partition of its upstream, and the shards holding exactly
the filter stage's kept candidates, each once.

Intact shards are not enough: a run that planned from a stale listing can publish a smaller dataset
whose tars and manifest agree with each other. These checks read completion records (and the id
columns of the filter partitions) fresh from storage, so such a dataset fails with a line that says
what is missing.
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from output.shard_writer import sample_key
from pipeline.records import GLOBAL_RECORD, combined_key, read_record, read_records, read_stage_meta
from pipeline.storage import Storage

#: Stages whose output rows are not their input rows one for one (render: N candidates per pair).
EXPANDING = frozenset({"render"})
MAX_EXAMPLES = 5


def _map_records(storage: Storage, name: str) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """(problems, {partition: record}) of one map stage, judged against its _stage.json."""
    meta = read_stage_meta(storage, name)
    if meta is None:
        return [f"{name}: stage has not run (no {name}/_stage.json)"], {}
    problems = [] if meta.get("complete") else [f"{name}: stage incomplete (rerun `editgen run`)"]
    records = {r["partition"]: r for r in read_records(storage, name) if r.get("stage_hash") == meta.get("stage_hash")}
    missing = [p for p in range(int(meta.get("partitions", 0))) if p not in records]
    if missing:
        problems.append(f"{name}: {len(missing)} of {meta.get('partitions')} partitions have no completion "
                        f"record (e.g. {missing[:MAX_EXAMPLES]})")
    for pid, rec in sorted(records.items()):
        dropped = sum(rec.get("dropped", {}).values())
        total = rec.get("rows_total", rec.get("rows_out", 0) + dropped)
        if total != rec.get("rows_out", 0) + dropped:
            problems.append(f"{name} partition {pid}: {total} rows != {rec.get('rows_out')} kept + {dropped} dropped")
        if name not in EXPANDING and name != "ingest" and rec.get("rows_in") != total:
            problems.append(f"{name} partition {pid}: {rec.get('rows_in')} rows in but {total} rows out "
                            "(rows lost or added)")
    return problems, records


def _link(name: str, up: str, recs: dict[int, dict[str, Any]], up_recs: dict[int, dict[str, Any]]) -> list[str]:
    """Each partition of `name` read the same-numbered partition of `up`, all of its kept rows."""
    problems = []
    never = sorted(set(up_recs) - set(recs))
    if never:
        rows = sum(up_recs[p].get("rows_out", 0) for p in never)
        problems.append(f"{name}: {up} partitions {never[:MAX_EXAMPLES]} ({rows} kept rows) were never "
                        f"processed by {name}: those rows are missing downstream")
    for pid in sorted(set(recs) - set(up_recs)):
        problems.append(f"{name} partition {pid}: has no upstream {up} partition {pid} (stale output)")
    for pid in sorted(set(recs) & set(up_recs)):
        if recs[pid].get("rows_in") != up_recs[pid].get("rows_out"):
            problems.append(f"{name} partition {pid}: read {recs[pid].get('rows_in')} rows but {up} partition "
                            f"{pid} kept {up_recs[pid].get('rows_out')}")
    return problems


def filter_kept_keys(storage: Storage, records: dict[int, dict[str, Any]]) -> list[str]:
    """Sample keys of every kept candidate in the filter partitions (id columns only)."""
    keys: list[str] = []
    for pid in sorted(records):
        fname = records[pid].get("file") or f"part-{pid:05d}.parquet"
        table = storage.read_table("filter", fname, columns=["id", "candidate", "status"])
        table = table.filter(pc.equal(table["status"], "kept"))
        keys += [sample_key(str(i), int(c)) for i, c in zip(table["id"].to_pylist(),
                                                              table["candidate"].to_pylist(), strict=True)]
    return keys


def _shard_vs_filter(storage: Storage, manifest: dict[str, Any], filter_recs: dict[int, dict[str, Any]],
                     shard_keys: list[str]) -> list[str]:
    rec = read_record(storage, "shard", GLOBAL_RECORD) or {}
    dropped = sum(rec.get("dropped", {}).values())
    want = filter_kept_keys(storage, filter_recs)
    problems = []
    if len(want) != len(shard_keys) + dropped:
        problems.append(f"shards: {len(shard_keys)} samples (+{dropped} dropped by shard) but the filter stage "
                        f"kept {len(want)}")
    missing = sorted(set(want) - set(shard_keys))
    extra = sorted(set(shard_keys) - set(want))
    if missing and len(missing) > dropped:
        problems.append(f"shards: {len(missing)} kept candidates of the filter stage are missing "
                        f"(e.g. {', '.join(missing[:MAX_EXAMPLES])})")
    if extra:
        problems.append(f"shards: {len(extra)} samples are not kept by the filter stage "
                        f"(e.g. {', '.join(extra[:MAX_EXAMPLES])})")
    if len(shard_keys) != len(set(shard_keys)):
        problems.append(f"shards: {len(shard_keys) - len(set(shard_keys))} samples appear more than once")
    if rec and rec.get("rows_out") != manifest.get("samples"):
        problems.append(f"shard record says {rec.get('rows_out')} samples, manifest {manifest.get('samples')}")
    return problems


def check_chain(storage: Storage, stage_order: list[str], manifest: dict[str, Any],
                shard_keys: list[str]) -> tuple[list[str], list[str]]:
    """(problems, notes) for the chain ingest -> ... -> filter -> shards. `stage_order` is the graph
    under the run's config (`pipeline.registry.stage_names(cfg)`): a conditional stage such as fetch is
    in it only when that run had it, so each stage is linked to the upstream it really read."""
    problems: list[str] = []
    notes: list[str] = []
    prev_name, prev = None, {}
    for name in [n for n in stage_order if n != "shard"]:
        found, recs = _map_records(storage, name)
        problems += found
        if prev_name is not None:
            problems += _link(name, prev_name, recs, prev)
        prev_name, prev = name, recs
    if prev_name != "filter":
        return problems, notes
    current = combined_key([prev[p]["sha256"] for p in sorted(prev)])
    if manifest.get("upstream_key") != current:
        meta = read_stage_meta(storage, "shard") or {}
        line = ("shards: the published dataset was built from an earlier filter output; the shard stage "
                "has not finished since (rerun `editgen run` to publish the current one)")
        (notes if not meta.get("complete") else problems).append(line)
        return problems, notes
    return problems + _shard_vs_filter(storage, manifest, prev, shard_keys), notes
