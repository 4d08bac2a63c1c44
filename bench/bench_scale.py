"""Ingest at scale on one driver: planning, map throughput per core, no-op resume, peak memory.

Usage: python bench/bench_scale.py [--rows 200000,1000000] [--rows-per-partition 10000] [--keep DIR]
Generates N captions from ../shared/data/laion_captions_1000.parquet (each made unique by a row number,
plus ~5% re-posts of an earlier caption or URL so dedup has work), runs `editgen run --only ingest` in a
child process per size (the driver measured alone), then a no-op resume, and checks the published
drops against a single-process replay of the old dedup. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "laion_captions_1000.parquet"
#: The driver: plan alone (timed), then a full run, in one process whose peak RSS is its own.
DRIVER = r"""
import json, sys, time
def peak_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (large) bench parent
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
from editgen.pipeline.config import build_config
from editgen.pipeline.runner import run_pipeline
from editgen.pipeline.stage import PlanContext
from editgen.pipeline.storage import Storage
from editgen.stages.ingest import IngestStage
cfg = build_config(extra=json.loads(sys.argv[2]))
t0 = time.perf_counter()
st = IngestStage(cfg)
st.bind(Storage(sys.argv[1]), False)
st.preflight()
specs = st.plan(PlanContext(cfg, Storage(sys.argv[1])))
plan_s = time.perf_counter() - t0
t0 = time.perf_counter()
res = run_pipeline(cfg, sys.argv[1], only="ingest").stages[0]
print(json.dumps({"plan_s": plan_s, "run_s": time.perf_counter() - t0, "partitions": len(specs),
                  "computed": res.computed, "rows_in": res.rows_in, "rows_out": res.rows_out,
                  "dropped": res.dropped, "driver_peak_mb": peak_mb()}))
"""


def generate(n: int, path: Path, seed: int = 0) -> None:
    """n rows: sample captions made unique by their row number; 5% repeat an earlier caption or URL."""
    src = pq.read_table(SAMPLE, columns=["TEXT", "URL"]).to_pylist()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(src), n)
    repost = rng.random(n)
    back = rng.integers(1, 50_000, n)
    texts, urls = [], []
    for i in range(n):
        r = src[pick[i]]
        text, url = f"{r['TEXT'] or ''} {i}", f"{r['URL'] or 'http://x'}?i={i}"
        j = i - int(back[i])
        if j >= 0 and repost[i] < 0.025:
            text = texts[j]
        elif j >= 0 and repost[i] < 0.05:
            url = urls[j]
        texts.append(text)
        urls.append(url)
    pq.write_table(pa.table({"TEXT": texts, "URL": urls}), path, row_group_size=10_000)


class WorkerPeak(threading.Thread):
    """Largest RSS of the driver's own Ray worker processes (ray::..., descendants of `pid`: the local
    Ray it starts), sampled; other Ray clusters on the machine are not counted."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = False

    def run(self) -> None:
        import psutil

        while not self.stop:
            try:
                procs = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    if " ".join(p.cmdline()).startswith("ray::"):
                        self.peak = max(self.peak, p.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            time.sleep(0.2)


def drive(out: Path, extra: dict[str, Any]) -> tuple[dict[str, Any], float]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), json.dumps(extra)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = WorkerPeak(proc.pid)
    watch.start()
    stdout, stderr = proc.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    watch.stop = True
    watch.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: driver failed: {stderr.strip().splitlines()[-3:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["worker_peak_mb"] = watch.peak
    return result, wall


def map_rate(out: Path, clock: str = "seconds") -> float:
    """Captions/s per worker core over the map phase: rows over summed per-partition worker seconds
    (`seconds`: wall time, which on a busy machine also counts waiting for a core; `cpu_seconds`: the
    worker's CPU time, what a dedicated core would take)."""
    recs = [json.loads(p.read_text()) for p in (out / "ingest" / "_pre" / "_done").glob("part-*.json")]
    return sum(r["rows_in"] for r in recs) / sum(r[clock] for r in recs)


def old_dedup_matches(out: Path) -> bool:
    """Replay the old single-process dedup (two sets, global order) over the pre-dedup partitions."""
    seen_c: set[str] = set()
    seen_u: set[str] = set()
    for pre in sorted((out / "ingest" / "_pre").glob("part-*.parquet")):
        t = pq.read_table(pre, columns=["status", "drop_reason", "caption_key", "url_key"])
        want = t["drop_reason"].to_pylist()
        for i, (st, ck, uk) in enumerate(zip(t["status"].to_pylist(), t["caption_key"].to_pylist(),
                                             t["url_key"].to_pylist(), strict=True)):
            if st != "kept":
                continue
            if ck in seen_c:
                want[i] = "duplicate_caption"
            elif uk and uk in seen_u:
                want[i] = "duplicate_url"
            else:
                seen_c.add(ck)
                if uk:
                    seen_u.add(uk)
        got = pq.read_table(out / "ingest" / pre.name, columns=["drop_reason"])["drop_reason"].to_pylist()
        if got != want:
            return False
    return True


def measure(n: int, tmp: Path, rpp: int, cpus: int) -> dict[str, Any]:
    path = tmp / f"captions-{n}.parquet"
    if not path.exists():
        generate(n, path)
    out = tmp / f"out-{n}"
    extra = {"ingest": {"input": [str(path)], "rows_per_partition": rpp,
                        "resources": {"concurrency": cpus, "batch_size": 2048}},
             "ray": {"num_cpus": cpus}, "run": {"progress": False}}
    first, _ = drive(out, extra)
    again, resume_wall = drive(out, extra)
    assert again["computed"] == 0, again
    return {"rows": n, "partitions": first["partitions"], "plan_s": first["plan_s"], "run_s": first["run_s"],
            "map_captions_per_s_per_core": map_rate(out),
            "map_captions_per_cpu_s": map_rate(out, "cpu_seconds"), "resume_s": again["run_s"],
            "resume_plan_s": again["plan_s"], "driver_peak_mb": max(first["driver_peak_mb"], again["driver_peak_mb"]),
            "worker_peak_mb": first["worker_peak_mb"], "kept": first["rows_out"], "dropped": first["dropped"],
            "dedup_equals_old": old_dedup_matches(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="200000,1000000", help="comma-separated sizes")
    ap.add_argument("--rows-per-partition", type=int, default=10_000)
    ap.add_argument("--cpus", type=int, default=2, help="local Ray CPUs = ingest workers")
    ap.add_argument("--keep", help="generate inputs and outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="editgen-bench-scale-") as tmpdir:
        tmp = Path(args.keep or tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        results = [measure(n, tmp, args.rows_per_partition, args.cpus) for n in sizes]
    head = f"{'rows':>9} {'parts':>6} {'plan s':>7} {'run s':>7} {'map cap/s/core':>15} {'(per cpu s)':>12} " \
           f"{'resume s':>9} " \
           f"{'plan+resume s':>14} {'driver MB':>10} {'worker MB':>10} {'dedup=old':>9}"
    print(head)
    for r in results:
        print(f"{r['rows']:>9} {r['partitions']:>6} {r['plan_s']:>7.2f} {r['run_s']:>7.1f} "
              f"{r['map_captions_per_s_per_core']:>15.0f} {r['map_captions_per_cpu_s']:>12.0f} "
              f"{r['resume_s']:>9.2f} {r['plan_s'] + r['resume_s']:>14.2f} "
              f"{r['driver_peak_mb']:>10.0f} {r['worker_peak_mb']:>10.0f} {str(r['dedup_equals_old']):>9}")
    growth = results[-1]["driver_peak_mb"] / results[0]["driver_peak_mb"]
    print(f"driver peak RSS growth {results[0]['rows']} -> {results[-1]['rows']} rows: {growth:.2f}x")
    print(json.dumps({"bench": "scale", "results": results, "driver_rss_growth": round(growth, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
