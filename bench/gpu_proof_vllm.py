"""gpu-proof's vLLM section, in its own process: vLLM takes a share of the GPU's memory at start and may live
in another venv (its own torch), so bench/gpu_proof.py runs this with a timeout and reads the JSON it writes.

Random Qwen2.5-0.5B-architecture weights (bench/gpu_proof_models.py), no tokenizer (prompts are token ids),
greedy decoding with EOS ignored so every prompt generates exactly ``max_tokens``.
    python bench/gpu_proof_vllm.py OUT.json MODEL_DIR [--prompts 256] [--prompt-tokens 64] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _on_cuda() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cuda())
    except ImportError:
        import torch

        return torch.cuda.is_available()


def measure(folder: Path, prompts: int, prompt_tokens: int, max_tokens: int) -> dict[str, object]:
    """Engine start, then one generate call over every prompt: generated tokens per second of that call."""
    from vllm import LLM, SamplingParams

    from bench.gpu_proof_models import write_qwen

    if not _on_cuda():
        return {"skipped": f"vLLM in {sys.executable} has no CUDA platform"}
    write_qwen(folder)
    t0 = time.perf_counter()
    llm = LLM(model=str(folder), skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.4,
              max_model_len=1024, seed=0)
    start_s = time.perf_counter() - t0
    rng = random.Random(0)
    batch = [{"prompt_token_ids": [rng.randrange(1000, 150000) for _ in range(prompt_tokens)]} for _ in range(prompts)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0, detokenize=False)
    llm.generate(batch[:8], params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine_start_s": start_s, "generated_tokens": generated, "tokens_per_s": generated / seconds,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("model_dir")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    try:
        res = measure(Path(args.model_dir), args.prompts, args.prompt_tokens, args.max_tokens)
    except ImportError as exc:
        res = {"skipped": f"vLLM not importable in {sys.executable}: {exc}"}
    Path(args.out).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
