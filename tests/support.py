"""What tests share besides pytest fixtures (those live in conftest.py, which no test imports): paths,
the CLI environment, watching CLI subprocesses, tiny P2P pipelines, published shards, and synthetic
stage outputs (filter partitions and the shards written from them)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_LAION = ROOT.parent / "shared" / "data" / "laion_captions_1000.parquet"


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---- CLI subprocesses ------------------------------------------------------------------------
def error_line(proc: subprocess.CompletedProcess) -> str:
    """A failed run says what and where in exactly one `editgen:` line, never with a traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("editgen:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    return lines[0]


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before the fault: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the awaited progress never came")


def kill_mid_stage_then_rerun(cmd: list[str], out: Path, clean: Path, stage: str, upstream: tuple[str, ...],
                              delay_s: float) -> dict[str, Any]:
    """A run into `out` (the stages `upstream` copied from the clean run's OUT `clean`, so the kill lands in
    `stage`) SIGKILLed once `stage` has committed a partition, then rerun to the end: the rerun reuses the
    partitions that survived and publishes exactly what the clean run did. Returns the survivors' records."""
    import shutil
    import signal

    from tests.pipeline.test_faults import assert_nothing_corrupt, assert_same_outputs, done_records, stage_complete

    out.mkdir()
    for name in upstream:
        shutil.copytree(clean / name, out / name)
    env = cli_env() | {"EDITGEN_FAULT_DELAY_S": f"{stage}={delay_s}"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(done_records(out, stage)) >= 1, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survived = done_records(out, stage)
    assert survived and not stage_complete(out, stage)
    again = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {k: done_records(out, stage)[k] for k in survived} == survived  # finished partitions reused, not redone
    assert_same_outputs(out, clean)
    assert_nothing_corrupt(out)
    return survived


# ---- tiny Prompt-to-Prompt pipelines ---------------------------------------------------------
def one_thread() -> Iterator[None]:
    """Body of a module-scoped fixture: 2 shared cores make OpenMP spinning far slower than 1 thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_pipeline(tmp_path_factory: Any, variant: str = "sd", scheduler: str = "ddim", text_width: int = 32) -> Any:
    from editgen.p2p.generate import load_pipeline
    from editgen.tiny.sd import build_tiny_sd

    suffix = "" if text_width == 32 else f"-w{text_width}"
    path = build_tiny_sd(tmp_path_factory.getbasetemp() / f"tiny-{variant}{suffix}", variant, text_width=text_width)
    return load_pipeline(path, "cpu", "float32", scheduler)


def plain_generation(p2p: Any, prompts: list[str], *, steps: int, size: int, seed: int,
                     output_type: str = "latent", guidance: float = 7.5) -> Any:
    """A plain diffusers pipeline call (default attention processors) from our seeded shared noise."""
    from editgen.p2p.generate import initial_noise

    z, _ = initial_noise(seed, (1, 4, size // 8, size // 8))
    return p2p.pipe(prompts, latents=z.expand(len(prompts), -1, -1, -1), num_inference_steps=steps,
                    guidance_scale=guidance, height=size, width=size, output_type=output_type).images


# ---- synthetic stage outputs and their shards ------------------------------------------------
def filter_partitions(root: Path, parts: int = 2, pairs: int = 4, candidates: int = 3, size: int = 32,
                      keep_fraction: float = 0.6, edit: Callable[[pa.Table], pa.Table] | None = None,
                      **render: Any) -> list[dict]:
    """Synthetic filter partitions under root/filter and their completion records (what the runner
    hands the shard stage); `edit` rewrites each table before it is written."""
    from editgen.pipeline.stage import count_reasons, part_name
    from editgen.pipeline.storage import Storage
    from editgen.tiny.synthetic import filter_table, render_table

    storage = Storage(str(root))
    records = []
    for pid in range(parts):
        t = render_table(pairs, candidates, size, seed=pid, start=pairs * pid, **render)
        t = filter_table(t, seed=pid, keep_fraction=keep_fraction)
        t = edit(t) if edit else t
        sha, nbytes = storage.write_table(t, "filter", part_name(pid))
        kept, dropped = count_reasons(t)
        records.append({"stage": "filter", "partition": pid, "file": part_name(pid), "sha256": sha, "bytes": nbytes,
                        "rows_in": t.num_rows, "rows_out": kept, "dropped": dropped})
    return records


def write_shards(root: Path, records: list[dict], **shard: Any) -> dict:
    """The shard stage's body over filter partitions, with the stage hash a run would give it."""
    from editgen.pipeline.config import build_config
    from editgen.pipeline.runner import stage_hashes
    from editgen.pipeline.stage import PlanContext
    from editgen.pipeline.storage import Storage
    from editgen.stages.shard import ShardStage

    cfg = build_config(extra={"shard": shard})
    ctx = PlanContext(cfg, Storage(str(root)), records, "filter", stage_hash=stage_hashes(cfg)["shard"])
    return ShardStage(cfg).run_global(ctx)


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def shard_path(out: Path, index: int, rejected: bool = False) -> Path:
    """Path of the index-th published (or rejected) shard (OUT/shards/gen-<G>/<prefix>-NNNNNN.tar,
    OUT/rejected/gen-<G>/rejected-NNNNNN.tar)."""
    m = manifest(out)
    entries = m["rejected"]["shards"] if rejected else m["shards"]
    return Path(out) / entries[index]["name"]


def tar_files(out: Path, folder: str = "shards") -> list[Path]:
    """Every tar under OUT/shards (or OUT/rejected), whatever generation: what a `**/*.tar` glob would see."""
    return sorted((Path(out) / folder).rglob("*.tar"))


# ---- Ray task bodies that freeze (tests/pipeline/test_hangs.py; workers import them from here) -----------
def freeze_once(marker: str, value: int) -> int:
    """Freezes (a real SIGSTOP, via the fault hook) the first time it runs for `marker`; else value**2."""
    from editgen.pipeline.faults import stop_here

    if not os.path.exists(marker):
        Path(marker).write_text("frozen once")
        time.sleep(0.5)  # its start report is on its way: frozen while working, not before it began
        stop_here()
    return value * value


def freeze_always(value: int) -> int:
    """Freezes every time for value 1."""
    from editgen.pipeline.faults import stop_here

    if value == 1:
        time.sleep(0.5)
        stop_here()
    return value


def total(*values: int) -> int:
    return sum(values)


def smooth_photo(size: int = 32) -> bytes:
    """A PNG with smooth gradients and a low-frequency pattern: a stand-in photograph for real-image
    engine tests (inversion, DiffEdit masks, inpainting) that is the same bytes on every machine."""
    import io

    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx) * np.cos(5 * yy)], -1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()
