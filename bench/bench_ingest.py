"""Ingest throughput (captions/s): the batch function alone, and the whole stage through the runner.

Usage: python bench/bench_ingest.py [--input PARQUET] [--repeat N]
Prints a table and one JSON line. Uses ../shared/data/laion_captions_1000.parquet by default, tiled
N times (rows get distinct source rows, so dedup sees copies exactly as it would in real data).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from editgen.pipeline.config import build_config  # noqa: E402
from editgen.pipeline.runner import run_pipeline  # noqa: E402
from editgen.stages.ingest import IngestStage  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "laion_captions_1000.parquet"))
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    src = pq.read_table(args.input, columns=["TEXT", "URL"])
    tiled = pa.concat_tables([src] * args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiled.parquet"
        pq.write_table(tiled, path)
        cfg = build_config(extra={"ingest": {"input": [str(path)], "rows_per_partition": 5000},
                                  "run": {"progress": False}})
        stage = IngestStage(cfg)
        stage.preflight()
        stage.setup()
        stage.process_batch(stage._raw.slice(0, 10))  # load the language model outside the timing
        t0 = time.perf_counter()
        stage.process_batch(stage._raw)
        batch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_pipeline(cfg, str(Path(tmp) / "out"), only="ingest")
        stage_s = time.perf_counter() - t0
        st = result.stages[0]
    n = tiled.num_rows
    rows = [
        ("ingest batch function, 1 process", n / batch_s),
        ("ingest stage via runner (incl. Ray start, dedup, writes)", n / stage_s),
    ]
    print(f"{'measure':<60} {'captions/s':>12}")
    for name, v in rows:
        print(f"{name:<60} {v:>12.0f}")
    print(f"rows {n}: kept {st.rows_out}, dropped {sum(st.dropped.values())} {st.dropped}")
    print(json.dumps({"bench": "ingest", "rows": n, "batch_captions_per_s": round(n / batch_s, 1),
                      "stage_captions_per_s": round(n / stage_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
