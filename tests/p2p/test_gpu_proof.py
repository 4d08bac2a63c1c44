"""`make gpu-proof` (bench/gpu_proof.py) keeps working where there is no GPU (issue 26 item 1): the CPU run
ends in its budget, says it is not a GPU figure, and its JSON has every field -- a measured value, or the
explicit "not measured on CPU" for what only a GPU measures; no section errors or is skipped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.gpu_proof import (
    DTYPES,
    NOT_CPU,
    RUN_FIELDS,
    SCHEMA,
    TOP,
    Ctx,
    compile_grid,
    eager_grid,
    guarded,
    peak_tflops,
)
from tests.support import ROOT, cli_env

#: What the CPU run cannot measure (no peak table for CPUs, no compile, no vLLM, no CUDA allocator).
GPU_ONLY = {("p2p", "plain_peak_mib"), ("p2p", "p2p_peak_mib"), ("p2p", "mem_ratio"), ("best", "mfu"), ("turbo", "mfu"),
            ("vllm", "engine_start_s"), ("vllm", "generated_tokens"), ("vllm", "tokens_per_s")}


def test_device_peaks_by_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A10G") == 70.0 and peak_tflops("NVIDIA A10") == 125.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("Some Future GPU") is None


def test_spent_budget_skips_each_cell_and_section_with_its_reason():
    """On a GPU, what does not fit the budget is skipped with the reason, cell by cell (no compilation
    starts); a section that raises reports the error in its fields and the run goes on."""
    import time

    import torch

    ctx = Ctx(gpu=True, device=torch.device("cpu"), budget=0.0, iters=1, start=time.perf_counter())
    unet = torch.nn.Linear(2, 2)  # never called: every cell is skipped
    for runs in (eager_grid(ctx, unet, {}), compile_grid(ctx, unet, {})):
        assert len(runs) == len(DTYPES) * 4 and all(list(r) == list(RUN_FIELDS) for r in runs)
        assert all(str(r["step_s"]).startswith("skipped: time budget spent") for r in runs)
    assert all(v.startswith("skipped: time budget spent") for v in guarded(ctx, "clip", 30.0, dict).values())
    ctx.budget = 1e9

    def boom() -> dict:
        raise RuntimeError("no kernel")

    assert set(guarded(ctx, "clip", 1.0, boom).values()) == {"error: RuntimeError: no kernel"}


def _measured(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


@pytest.mark.slow
def test_cpu_run_has_every_field(tmp_path):
    out = tmp_path / "gpu-proof.json"
    proc = subprocess.run([sys.executable, "bench/gpu_proof.py", "--json", str(out), "--budget-s", "150"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NOT A GPU FIGURE" in proc.stdout.splitlines()[1]  # the table's header line
    res = json.loads(out.read_text())
    assert list(res) == list(TOP) and res["gpu_figure"] is False and "NOT A GPU FIGURE" in res["header"]
    assert res["cuda"] == NOT_CPU and res["peak_tflops"] == NOT_CPU and res["elapsed_s"] < res["budget_s"]
    for section, fields in SCHEMA.items():
        assert list(res[section]) == list(fields), section
        for f in fields:
            v = res[section][f]
            assert v is not None and not str(v).startswith(("error", "skipped")), (section, f, v)
            if (section, f) in GPU_ONLY:
                assert v == NOT_CPU, (section, f, v)
    runs = res["unet"]["runs"]
    assert {(r["dtype"], r["rows_per_half"], r["compile"]) for r in runs} == {
        (d, n, c) for d in ("float16", "bfloat16") for n in (1, 2) for c in (False, True)}
    for r in runs:
        assert list(r) == list(RUN_FIELDS)
        measured = ("step_s", "candidates_per_s", "unet_tflops")
        assert all((_measured(r[f]) if not r["compile"] else r[f] == NOT_CPU) for f in measured), r
        assert r["mfu"] == NOT_CPU and r["peak_mib"] == NOT_CPU
    assert _measured(res["best"]["candidates_per_s"]) and _measured(res["p2p"]["time_ratio"])
    assert res["regeneration"]["bit_exact"] is True and res["regeneration"]["regenerated"] == 2
    assert res["regeneration"]["deterministic"] == "strict" and res["regeneration"]["latents_finite"] is True
    assert _measured(res["turbo"]["candidates_per_s"]) and res["turbo"]["row_steps_per_candidate"] == 5.0
    assert _measured(res["clip"]["images_per_s"]) and _measured(res["unet"]["flops_per_row_step"])
