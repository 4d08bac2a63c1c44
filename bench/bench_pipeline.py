"""End-to-end throughput on the tiny profile, and render scaling from 1 to 2 actors.

Usage: python bench/bench_pipeline.py [--limit N]
- end-to-end: all five stages on N LAION captions (../shared) or the bundled demo sample, rows/s of
  input captions over the whole run (Ray start included: that is what a user waits for);
- scaling: the same instruct output rendered with render.resources.concurrency=1 then 2 (each run
  recomputes render only), wall time ratio. On this 2-core machine each actor gets one thread.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from editgen.pipeline.config import build_config  # noqa: E402
from editgen.pipeline.runner import run_pipeline  # noqa: E402

LAION = ROOT.parent / "shared" / "data" / "laion_captions_1000.parquet"
DEMO = ROOT / "examples" / "demo_captions.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=48, help="input captions (sampled, seeded)")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    src = LAION if LAION.exists() else DEMO
    base = [f"ingest.input=[{src}]", f"ingest.limit={args.limit}", "ingest.rows_per_partition=8",
            f"render.steps={args.steps}", "render.candidates=2", "run.progress=false"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        result = run_pipeline(build_config(profile="tiny", overrides=base), str(out))
        e2e_s = time.perf_counter() - t0
        stages = {s.name: s for s in result.stages}
        times = {}
        for n in (1, 2):
            cfg = build_config(profile="tiny", overrides=base + [f"render.resources.concurrency={n}",
                                                                  "render.torch_threads=1"])
            t0 = time.perf_counter()
            r = run_pipeline(cfg, str(out), from_stage="render", to_stage="render")
            times[n] = time.perf_counter() - t0
            pairs = r.stages[0].rows_in
    res = {
        "bench": "pipeline",
        "input_rows": args.limit,
        "kept_samples": stages["shard"].rows_out if "shard" in stages else None,
        "e2e_seconds": round(e2e_s, 2),
        "e2e_rows_per_s": round(args.limit / e2e_s, 3),
        "render_pairs": pairs,
        "render_1_actor_s": round(times[1], 2),
        "render_2_actors_s": round(times[2], 2),
        "render_scaling_1_to_2": round(times[1] / times[2], 3),
    }
    print(f"{'measure':<44} {'value':>10}")
    print(f"{'end-to-end input captions/s (tiny, CPU)':<44} {res['e2e_rows_per_s']:>10.3f}")
    print(f"{'end-to-end seconds':<44} {res['e2e_seconds']:>10.1f}")
    print(f"{'render 1 actor, seconds':<44} {res['render_1_actor_s']:>10.1f}")
    print(f"{'render 2 actors, seconds':<44} {res['render_2_actors_s']:>10.1f}")
    print(f"{'render speed-up 1 -> 2 actors':<44} {res['render_scaling_1_to_2']:>10.2f}x")
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
