"""`make bench`: run every benchmark side by side and print one table.

Each bench script prints a machine-readable JSON line last; this collects them. The vLLM backends are
measured in the LLM venv (`--llm-python`, default .venv-llm/bin/python) since vLLM pins its own torch.
Usage: python bench/run_all.py [--quick] [--llm-python PATH] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], timeout: int = 1800) -> dict[str, Any] | None:
    print(f"$ {' '.join(cmd)}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        print(f"  failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return None
    for line in reversed(proc.stdout.strip().splitlines()):
        if "{" in line and line.rstrip().endswith("}"):
            return json.loads(line[line.index("{"):])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--llm-python", default=str(ROOT / ".venv-llm" / "bin" / "python"))
    ap.add_argument("--json", help="also write all results to this file")
    args = ap.parse_args()
    results = measure(args)
    show(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every benchmark script; each prints one JSON line of results."""
    py = sys.executable
    q = args.quick
    results: dict[str, Any] = {}
    results["ingest"] = run([py, "bench/bench_ingest.py", "--repeat", "5" if q else "20"])
    results["scale"] = run([py, "bench/bench_scale.py", "--rows", "20000,100000" if q else "200000,1000000"],
                           timeout=3600)
    results["instruct_template"] = run([py, "bench/bench_instruct.py", "--backends", "template"])
    if Path(args.llm_python).exists():
        results["instruct_llm"] = run([args.llm_python, "bench/bench_instruct.py", "--backends", "vllm",
                                       "--rows", "64" if q else "256"])
    results["p2p"] = run([py, "bench/bench_p2p.py"] + (["--quick"] if q else []))
    results["render"] = run([py, "bench/bench_render.py"] + (["--quick"] if q else []))
    results["inversion"] = run([py, "bench/bench_inversion.py"] + (["--quick"] if q else []))
    results["engines"] = run([py, "bench/bench_engines.py"] + (["--steps", "4", "--pairs", "2"] if q else []))
    results["filter"] = run([py, "bench/bench_filter.py"])
    results["pipeline"] = run([py, "bench/bench_pipeline.py"] + (["--limit", "24"] if q else []))
    return results


def table(results: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any, fmt: str = "{:.2f}") -> None:
        rows.append((name, "n/a" if value is None else fmt.format(value)))

    _ingest_rows(results, rows, add)
    _later_rows(results, add)
    return rows


def _ingest_rows(results: dict[str, Any], rows: list[tuple[str, str]], add: Any) -> None:
    r = results.get("ingest") or {}
    add("ingest captions/s (batch function, 1 process)", r.get("batch_captions_per_s"), "{:.0f}")
    add("ingest captions/s (stage via runner, incl. Ray start)", r.get("stage_captions_per_s"), "{:.0f}")
    r = results.get("scale") or {}
    sizes = r.get("results") or []
    for s in sizes:
        n = f"{s['rows'] // 1000}k rows"
        add(f"ingest at scale, {n}: planning s (target with resume < 10 at 1M)", s["plan_s"], "{:.2f}")
        add(f"ingest at scale, {n}: no-op resume s", s["resume_s"], "{:.2f}")
        add(f"ingest at scale, {n}: map captions/s per worker core (target >= 10000)",
            s["map_captions_per_s_per_core"], "{:.0f}")
        add(f"ingest at scale, {n}: driver peak RSS MB (target < 500 at 1M)", s["driver_peak_mb"], "{:.0f}")
        add(f"ingest at scale, {n}: largest worker peak RSS MB", s["worker_peak_mb"], "{:.0f}")
        rows.append((f"ingest at scale, {n}: dedup equals the old single-process result",
                     "yes" if s["dedup_equals_old"] else "NO"))
    if sizes:
        add("ingest at scale: driver peak RSS growth between the sizes (target <= 1.2x)", r.get("driver_rss_growth"),
            "{:.2f}x")


def _later_rows(results: dict[str, Any], add: Any) -> None:
    for key in ("instruct_template", "instruct_llm"):
        for backend, b in ((results.get(key) or {}).get("results") or {}).items():
            if "skipped" in b:
                continue
            add(f"instruct rows/s ({backend}{', tiny model' if backend != 'template' else ''})",
                b.get("rows_per_s"), "{:.1f}")
            if b.get("gen_tokens_per_s"):
                add(f"instruct generated tokens/s ({backend})", b.get("gen_tokens_per_s"), "{:.0f}")
    r = results.get("p2p") or {}
    for name, v in sorted((r.get("ratios") or {}).items()):
        add(f"render {name} vs plain SDPA: time", v.get("time"), "{:.3f}x")
        add(f"render {name} vs plain SDPA: peak memory", v.get("mem"), "{:.3f}x")
    fl = (results.get("render") or {}).get("flops") or {}
    for name, target in (("sd15", "1/10"), ("sd15+proposed", "1/10"), ("sdxl-turbo", "1/100")):
        if name in fl:
            add(f"UNet FLOPs per kept sample, {name} profile (PFLOP)", fl[name]["profile"]["flops_per_kept"] / 1e15,
                "{:.4f}")
            add(f"  {name} / InstructPix2Pix's recipe (target <= {target})", fl[name]["ratio"], "{:.4f}x")
    if "sd15" in fl:
        add("UNet FLOPs per kept sample, InstructPix2Pix's recipe (PFLOP)", fl["sd15"]["ip2p"]["flops_per_kept"] / 1e15,
            "{:.2f}")
    for r in (results.get("inversion") or {}).get("results") or []:
        add(f"inversion {r['method']}: UNet rows per pair (tiny)", r["unet_rows"], "{:.0f}")
        add(f"inversion {r['method']}: CPU s per pair (tiny)", r["cpu_s"], "{:.2f}")
        add(f"inversion {r['method']}: reconstruction PSNR dB (tiny, prior bed)", r["psnr"], "{:.1f}")
    for name, e in ((results.get("engines") or {}).get("engines") or {}).items():
        add(f"engine {name}: UNet row-steps per candidate (tiny; x p2p carries over)", e["row_steps_per_candidate"],
            "{:.1f}")
        add(f"engine {name}: CPU s per candidate (tiny)", e["seconds_per_candidate"], "{:.3f}")
    r = results.get("filter") or {}
    add("candidates drawn per kept sample, no early stop", r.get("drawn_per_kept_full"))
    add("candidates drawn per kept sample, early stop", r.get("drawn_per_kept_early_stop"))
    add("filter CLIP scoring images/s (tiny CLIP, CPU)", r.get("clip_images_per_s"), "{:.0f}")
    add("shard writing MB/s (editgen)", r.get("shard_mb_per_s"), "{:.0f}")
    add("shard writing MB/s (raw webdataset.ShardWriter)", r.get("wds_shardwriter_mb_per_s"), "{:.0f}")
    if r.get("shard_mb_per_s") and r.get("wds_shardwriter_mb_per_s"):
        add("shard writing editgen / raw ShardWriter", r["shard_mb_per_s"] / r["wds_shardwriter_mb_per_s"],
            "{:.2f}x")
    r = results.get("pipeline") or {}
    add("end-to-end input captions/s (tiny profile, CPU)", r.get("e2e_rows_per_s"), "{:.3f}")
    add("render scaling 1 -> 2 actors (speed-up)", r.get("render_scaling_1_to_2"), "{:.2f}x")


def show(rows: list[tuple[str, str]]) -> None:
    width = max(len(n) for n, _ in rows) + 2
    print("\n" + "=" * (width + 14))
    print(f"{'editgen benchmark':<{width}}{'value':>14}")
    print("-" * (width + 14))
    for name, value in rows:
        print(f"{name:<{width}}{value:>14}")
    print("=" * (width + 14))


if __name__ == "__main__":
    sys.exit(main())
