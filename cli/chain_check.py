"""The accounting chain behind a dataset: every stage complete, every row kept or dropped, every
partition of a stage computed from the same partition of its upstream, every finished partition (each
step's: ingest/_pre too) still holding the bytes its record's sha256 names, and the shards holding
exactly the filter stage's kept candidates, each once (the train and eval tars together: a kept candidate
held out for evaluation is published, not lost).

Intact shards are not enough: a run that planned from a stale listing can publish a smaller dataset
whose tars and manifest agree with each other, and a flipped byte in a partition passes size checks.
These checks read completion records and hash every partition fresh from storage (the filter
partitions' id columns are parsed from the very bytes hashed), so such a dataset fails with a line that
says what is missing or damaged. `validate` only reads: the resume check trusts unchanged size and
mtime, so the line says how to make a run re-hash and recompute.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.compute as pc

from editgen.output.inverse import inverse_key, is_inverse_key
from editgen.output.shard_writer import sample_key
from editgen.pipeline.records import (
    DONE_DIR,
    GLOBAL_RECORD,
    STAGE_FILE,
    combined_key,
    part_name,
    read_checked,
    read_record,
    read_records,
    read_stage_meta,
)
from editgen.pipeline.storage import Storage, parquet_file
from editgen.stages.instruct import LATER_TURNS

#: Stages whose output rows are not their input rows one for one (render: N candidates per pair).
EXPANDING = frozenset({"render"})
MAX_EXAMPLES = 5


def _map_records(storage: Storage, name: str) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """(problems, {partition: record}) of one map stage, judged against its _stage.json."""
    meta = read_stage_meta(storage, name)
    if meta is None and storage.exists(name, STAGE_FILE):
        return [f"{name}/{STAGE_FILE}: damaged (not the JSON object editgen writes; rerun `editgen run`)"], {}
    if meta is None:
        return [f"{name}: stage has not run (no {name}/{STAGE_FILE})"], {}
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
        added = int((rec.get("metrics") or {}).get(LATER_TURNS, 0))  # instruct: sessions' turns 2..
        if name not in EXPANDING and name != "ingest" and rec.get("rows_in", 0) + added != total:
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


#: What `validate` says of a damaged partition: a plain rerun trusts its unchanged size and mtime.
RECOMPUTE = "`editgen run --set run.verify_checksums=full` re-hashes every partition and recomputes it"


def check_files(storage: Storage, stage_dir: str, records: dict[int, dict[str, Any]], workers: int = 2,
                parse: Callable[[bytes], Any] | None = None) -> tuple[list[str], dict[int, Any]]:
    """(problems, {pid: parse(bytes)}) for the finished partitions of one step directory: each file read
    once, hashed against its record's sha256 and, when intact, parsed from the same bytes."""
    def one(pid: int) -> tuple[str | None, Any]:
        fname = records[pid].get("file") or part_name(pid)
        try:
            data, why = read_checked(storage, stage_dir, fname, records[pid].get("sha256"))
        except ValueError:  # pipeline.errors.UnsafePathError: a record naming a path outside OUT
            return f"{stage_dir}/_done/part-{pid:05d}.json: unsafe file name {fname!r} (not read)", None
        if data is None:
            return f"{stage_dir}/{fname}: {why.removeprefix('is ')} ({RECOMPUTE})", None
        return None, parse(data) if parse is not None else None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = dict(zip(sorted(records), pool.map(one, sorted(records)), strict=True))
    return [p for p, _ in found.values() if p], {pid: v for pid, (p, v) in found.items() if p is None}


def kept_keys(data: bytes) -> list[str]:
    """Sample keys of the kept candidates in one filter partition's bytes (id columns only)."""
    table = parquet_file(data).read(columns=["id", "candidate", "status"])
    table = table.filter(pc.equal(table["status"], "kept"))
    return [sample_key(str(i), int(c)) for i, c in zip(table["id"].to_pylist(), table["candidate"].to_pylist(),
                                                        strict=True)]


def _step_files(storage: Storage, name: str, meta_hash: str | None, workers: int) -> list[str]:
    """The partitions of a stage's earlier steps (ingest/_pre), hashed against their records."""
    problems: list[str] = []
    for sub in storage.listdir(name):
        if sub.startswith("_") and sub != DONE_DIR and storage.exists(name, sub, DONE_DIR):
            recs = {r["partition"]: r for r in read_records(storage, f"{name}/{sub}")
                    if r.get("stage_hash") == meta_hash}
            problems += check_files(storage, f"{name}/{sub}", recs, workers)[0]
    return problems


def _inverse_vs_forward(manifest: dict[str, Any], keys: list[str]) -> tuple[list[str], list[str]]:
    """(forward keys, problems): inverse pairs (output.inverse) each name a published forward sample, and
    the manifest counts them (its train and eval splits together)."""
    inverse = [k for k in keys if is_inverse_key(k)]
    forward = [k for k in keys if not is_inverse_key(k)]
    problems = []
    orphans = sorted(set(inverse) - {inverse_key(k) for k in forward})
    if orphans:
        problems.append(f"shards: {len(orphans)} inverse samples have no forward sample "
                        f"(e.g. {', '.join(orphans[:MAX_EXAMPLES])})")
    listed = manifest.get("inverse_samples", 0) + (manifest.get("eval") or {}).get("inverse_samples", 0)
    if len(inverse) != listed:
        problems.append(f"shards: {len(inverse)} inverse samples, manifest says {listed}")
    return forward, problems


def _shard_vs_filter(storage: Storage, manifest: dict[str, Any], kept: dict[int, list[str]],
                     shard_keys: list[str], upstream: str = "filter") -> list[str]:
    rec = read_record(storage, "shard", GLOBAL_RECORD) or {}
    # A kept row's sample and, when its inverse could not be published, that drop (counted apart).
    dropped = sum(v for k, v in rec.get("dropped", {}).items() if not k.startswith("inverse_"))
    want = [k for pid in sorted(kept) for k in kept[pid]]
    shard_keys, problems = _inverse_vs_forward(manifest, shard_keys)
    if len(want) != len(shard_keys) + dropped:
        problems.append(f"shards: {len(shard_keys)} samples (+{dropped} dropped by shard) but the {upstream} stage "
                        f"kept {len(want)}")
    missing = sorted(set(want) - set(shard_keys))
    extra = sorted(set(shard_keys) - set(want))
    if missing and len(missing) > dropped:
        problems.append(f"shards: {len(missing)} kept candidates of the {upstream} stage are missing "
                        f"(e.g. {', '.join(missing[:MAX_EXAMPLES])})")
    if extra:
        problems.append(f"shards: {len(extra)} samples are not kept by the {upstream} stage "
                        f"(e.g. {', '.join(extra[:MAX_EXAMPLES])})")
    if len(shard_keys) != len(set(shard_keys)):
        problems.append(f"shards: {len(shard_keys) - len(set(shard_keys))} samples appear more than once")
    published = manifest.get("samples", 0) + (manifest.get("eval") or {}).get("samples", 0)
    if rec and rec.get("rows_out") != published:
        problems.append(f"shard record says {rec.get('rows_out')} samples, manifest {published} (train and eval)")
    return problems


def check_chain(storage: Storage, stage_order: list[str], manifest: dict[str, Any],
                shard_keys: list[str], workers: int = 2) -> tuple[list[str], list[str]]:
    """(problems, notes) for the chain ingest -> ... -> filter -> shards. `stage_order` is the graph
    under the run's config (`pipeline.registry.stage_names(cfg)`): a conditional stage such as fetch is
    in it only when that run had it, so each stage is linked to the upstream it really read."""
    problems: list[str] = []
    notes: list[str] = []
    prev_name, prev = None, {}
    kept: dict[int, list[str]] = {}
    chain = [n for n in stage_order if n != "shard"]
    last = chain[-1] if chain and chain[-1] in ("filter", "judge") else None  # what the shard stage read
    for name in chain:
        found, recs = _map_records(storage, name)
        problems += found
        if prev_name is not None:
            problems += _link(name, prev_name, recs, prev)
        problems += _step_files(storage, name, (read_stage_meta(storage, name) or {}).get("stage_hash"), workers)
        damaged, kept = check_files(storage, name, recs, workers, kept_keys if name == last else None)
        problems += damaged
        prev_name, prev = name, recs
    if prev_name not in ("filter", "judge"):
        return problems, notes
    if len(kept) < len(prev):
        return problems, notes  # a damaged partition: its keys are unknown, its line says so
    current = combined_key([prev[p]["sha256"] for p in sorted(prev)])
    if manifest.get("upstream_key") != current:
        meta = read_stage_meta(storage, "shard") or {}
        line = (f"shards: the published dataset was built from an earlier {prev_name} output; the shard stage "
                "has not finished since (rerun `editgen run` to publish the current one)")
        (notes if not meta.get("complete") else problems).append(line)
        return problems, notes
    return problems + _shard_vs_filter(storage, manifest, kept, shard_keys, prev_name), notes
