"""UNet row-steps and seconds per candidate for every registered edit engine, side by side in one run.

Each engine renders the same pairs through the render stage's own body (tiny profile, CPU), so the
figures are what a run records: row-steps per candidate from each record's compute (the UNet rows the
engine reports, which tests/engines check against the rows the UNet really ran), seconds per candidate
from the wall clock. The ratio to P2P's row-steps is the figure that carries over to SD 1.5 scale; the
seconds are a tiny model's on a shared CPU.
Usage: python bench/bench_engines.py [--steps N] [--candidates N] [--pairs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDITGEN_CACHE", str(ROOT / ".cache" / "editgen"))

import pyarrow as pa  # noqa: E402

from editgen.engines import REGISTRY  # noqa: E402
from editgen.pipeline.config import build_config  # noqa: E402
from editgen.stages.render import RenderStage  # noqa: E402

CAPTIONS = [("a photo of a cat on a bench", "a photo of a dog on a bench", "turn the cat into a dog", "cat", "dog"),
            ("a red car parked on a street", "a blue car parked on a street", "make the car blue", "red", "blue"),
            ("a house in a snowy field", "a house in a green field", "make it summer", "snowy", "green"),
            ("a bowl of apples on a table", "a bowl of oranges on a table", "swap the apples for oranges",
             "apples", "oranges")]


def pairs(n: int) -> pa.Table:
    rows = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return pa.table({
        "id": [f"bench{i}" for i in range(n)], "caption": [r[0] for r in rows],
        "edited_caption": [r[1] for r in rows], "instruction": [r[2] for r in rows],
        "edit_kind": ["replace"] * n, "changed_words": [[r[3], r[4]] for r in rows],
        "source_words": [[r[3]] for r in rows], "target_words": [[r[4]] for r in rows],
    })


def measure(engine: str, steps: int, candidates: int, n_pairs: int) -> dict[str, float]:
    cfg = build_config(profile="tiny", overrides=[
        f"render.engine={engine}", f"render.steps={steps}", f"render.candidates={candidates}",
        "render.early_stop=false", "render.resources.num_cpus=1"])
    stage = RenderStage(cfg)
    stage.setup()
    stage.process_partition(pairs(1))  # warm-up: models loaded, kernels chosen
    t0 = time.perf_counter()
    rows = stage.process_partition(pairs(n_pairs)).to_pylist()
    seconds = time.perf_counter() - t0
    kept = [r for r in rows if r["status"] == "kept"]
    steps_per = [json.loads(r["params"])["compute"]["unet_row_steps"] for r in kept]
    stage.teardown()
    return {"candidates": float(len(kept)), "dropped": float(len(rows) - len(kept)),
            "row_steps_per_candidate": sum(steps_per) / max(1, len(steps_per)),
            "seconds_per_candidate": seconds / max(1, len(kept))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="sampler steps per engine")
    ap.add_argument("--candidates", type=int, default=2, help="candidates per pair")
    ap.add_argument("--pairs", type=int, default=4, help="pairs per engine")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    results = {name: measure(name, args.steps, args.candidates, args.pairs) for name in REGISTRY}
    base = results.get("p2p", {}).get("row_steps_per_candidate") or 1.0
    print(f"tiny SD, CPU 1 thread, {args.steps} steps, {args.pairs} pairs x {args.candidates} candidates")
    print(f"{'engine':16} {'cand':>5} {'dropped':>7} {'row-steps/cand':>15} {'x p2p':>6} {'s/cand':>7}")
    for name, r in results.items():
        print(f"{name:16} {r['candidates']:5.0f} {r['dropped']:7.0f} {r['row_steps_per_candidate']:15.1f} "
              f"{r['row_steps_per_candidate'] / base:6.2f} {r['seconds_per_candidate']:7.3f}")
    print(json.dumps({"engines": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
