"""Filter/shard benchmark: early-stop savings, tiny-CLIP scoring speed, shard writing speed.

1. Candidates drawn per kept sample, with and without early stop, on a fixed acceptance model: each
   pair's candidates pass independently with probability q ~ Beta(a, b) (drawn per pair), at most N
   candidates per pair, k kept. Seeded, so the numbers are reproducible.
2. CLIP scoring throughput (images/s, decode included) of the tiny random CLIP on CPU.
3. Shard writing MB/s of output.shard_writer vs a raw `webdataset.ShardWriter` on the same samples.

Prints a table, then one JSON line. Usage: `python -m bench.bench_filter [--pairs 2000 ...]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from editgen.filters.pairs.early_stop import EarlyStop
from editgen.filters.pairs.select import Thresholds

PASS = {"sim_image": 0.9, "sim_direction": 0.3, "sim_0": 0.3, "sim_1": 0.3}
FAIL = {**PASS, "sim_direction": 0.0}


def simulate(pairs: int, n_max: int, k: int, a: float, b: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    q = rng.beta(a, b, size=pairs)
    outcomes = rng.random((pairs, n_max)) < q[:, None]  # the same candidates in both policies
    full_drawn = pairs * n_max
    kept = int(np.minimum(outcomes.sum(1), k).sum())
    es = EarlyStop(k=k, max_candidates=n_max, thresholds=Thresholds())
    for p in range(pairs):
        for c in range(n_max):
            if es.add(str(p), PASS if outcomes[p, c] else FAIL):
                break
    es_drawn = sum(es.drawn(str(p)) for p in range(pairs))
    es_kept = sum(min(es.passed(str(p)), k) for p in range(pairs))
    assert es_kept == kept  # early stop never loses a sample under this model
    return {
        "kept": kept,
        "pairs_with_k": int((outcomes.sum(1) >= k).sum()),
        "drawn_per_kept_full": full_drawn / max(kept, 1),
        "drawn_per_kept_early_stop": es_drawn / max(kept, 1),
        "draw_reduction": full_drawn / max(es_drawn, 1),
    }


def bench_clip(n_pairs: int, size: int, repeats: int = 3) -> dict[str, float]:
    from editgen.filters.pairs.clip_score import ClipScorer, ClipSpec
    from editgen.tiny.synthetic import render_table

    scorer = ClipScorer(ClipSpec("tiny-clip", "seed:0", device="cpu"), batch_size=64)
    table = render_table(n_pairs=n_pairs, candidates=4, size=size, with_mask=False)
    scorer.score_table(table.slice(0, 8))  # warm-up
    best = min(_timed(lambda: scorer.score_table(table)) for _ in range(repeats))
    return {"clip_images": 2 * table.num_rows, "clip_images_per_s": 2 * table.num_rows / best}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_shards(samples: int, size: int, repeats: int = 3) -> dict[str, float]:
    import webdataset as wds

    from editgen.output.shard_writer import ShardSetWriter, sample_members
    from editgen.pipeline.storage import Storage
    from editgen.tiny.synthetic import filter_table, render_table

    rows = filter_table(render_table(samples, 1, size, seed=1), keep_fraction=1.0).to_pylist()
    prepared = [sample_members(r) for r in rows]
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    per_shard = max(1, samples // 8)

    def ours() -> int:
        shutil.rmtree(tmp / "a", ignore_errors=True)
        w = ShardSetWriter(Storage(str(tmp / "a")), samples_per_shard=per_shard, workers=2)
        for key, members in prepared:
            w.add(key, members)
        return sum(s.bytes for s in w.close())

    def raw() -> int:
        shutil.rmtree(tmp / "b", ignore_errors=True)
        (tmp / "b").mkdir()
        with wds.ShardWriter(str(tmp / "b" / "edits-%06d.tar"), maxcount=per_shard, verbose=0) as w:
            for key, members in prepared:
                w.write({"__key__": key, **{n.split(".", 1)[1]: d for n, d in members}})
        return sum(p.stat().st_size for p in (tmp / "b").glob("*.tar"))

    try:
        nbytes = ours()
        t_ours = min(_timed(ours) for _ in range(repeats))
        raw_bytes = raw()
        t_raw = min(_timed(raw) for _ in range(repeats))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "shard_samples": samples,
        "shard_mb": nbytes / 1e6,
        "shard_mb_per_s": nbytes / 1e6 / t_ours,
        "wds_shardwriter_mb_per_s": raw_bytes / 1e6 / t_raw,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--max-candidates", type=int, default=100)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--beta", type=float, nargs=2, default=(2.0, 8.0), metavar=("A", "B"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clip-pairs", type=int, default=64)
    ap.add_argument("--clip-size", type=int, default=64)
    ap.add_argument("--shard-samples", type=int, default=400)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="intra-op threads; 1 = what a Ray actor with num_cpus=1 gets (OMP_NUM_THREADS)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    sim = simulate(args.pairs, args.max_candidates, args.k, *args.beta, args.seed)
    clip = bench_clip(args.clip_pairs, args.clip_size)
    shards = bench_shards(args.shard_samples, args.shard_size)
    a, b = args.beta
    rows = [
        (f"acceptance model: q~Beta({a:g},{b:g}), N={args.max_candidates}, k={args.k}, {args.pairs} pairs", ""),
        ("kept samples", f"{sim['kept']}"),
        ("drawn per kept sample, no early stop", f"{sim['drawn_per_kept_full']:.2f}"),
        ("drawn per kept sample, early stop", f"{sim['drawn_per_kept_early_stop']:.2f}"),
        ("render work saved (x fewer draws)", f"{sim['draw_reduction']:.2f}x"),
        (f"tiny CLIP scoring, CPU x{args.torch_threads} thread, {args.clip_size}px",
         f"{clip['clip_images_per_s']:.0f} images/s"),
        (f"shard writer ({shards['shard_mb']:.1f} MB, {args.shard_size}px)", f"{shards['shard_mb_per_s']:.0f} MB/s"),
        ("raw webdataset.ShardWriter, same samples", f"{shards['wds_shardwriter_mb_per_s']:.0f} MB/s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    result = {**sim, **clip, **shards, "pairs": args.pairs, "max_candidates": args.max_candidates, "k": args.k,
              "beta": [a, b], "seed": args.seed, "torch_threads": args.torch_threads}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
