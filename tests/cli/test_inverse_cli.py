"""Inverse edits end to end (issue 22 item 6): `editgen run --profile tiny --set instruct.inverse=true` publishes
each kept pair twice (forward and reversed) in shards that `editgen validate` accepts, the loader reads
(and can leave the inverse ones out), `editgen status` counts apart and export-hf marks with a column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support import ROOT, cli_env, manifest

pytestmark = pytest.mark.slow

DEMO = ROOT / "examples" / "demo_captions.jsonl"
# No eval split: the counts below are of one split (eval's inverse pairs: tests/output/test_card.py).
SETTINGS = ["ingest.limit=6", "render.steps=2", "render.candidates=1", "instruct.inverse=true", "shard.eval_fraction=0"]


def editgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT,
                          env=cli_env() | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=600)


def test_tiny_run_publishes_inverse_pairs(tmp_path: Path) -> None:
    out, hf = tmp_path / "out", tmp_path / "hf"
    proc = editgen("run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out),
                   *[a for kv in SETTINGS for a in ("--set", kv)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = sum(r["status"] == "kept" for p in sorted((out / "filter").glob("part-*.parquet"))
               for r in pq.read_table(p, columns=["status"]).to_pylist())
    m = manifest(out)
    assert kept and m["inverse_samples"] == m["forward_samples"] == kept and m["samples"] == 2 * kept
    assert m["compute"]["unet_row_steps_per_sample_with_inverse"] == m["compute"]["unet_row_steps_per_kept"] / 2

    check = editgen("validate", str(out))
    assert check.returncode == 0 and f"({kept} of them inverse pairs)" in check.stdout, check.stdout + check.stderr
    status = editgen("status", str(out), "--json")
    assert json.loads(status.stdout)["inverse"] == {"forward_samples": kept, "inverse_samples": kept}
    assert f"inverse pairs: {kept} inverse samples" in editgen("status", str(out)).stdout

    from editgen.output.loader import instruct_pix2pix_dataset

    every = list(instruct_pix2pix_dataset(str(out), resolution=16, shuffle_shards=False, shuffle_buffer=0))
    forward = list(instruct_pix2pix_dataset(str(out), resolution=16, shuffle_shards=False, shuffle_buffer=0,
                                            inverse=False))
    assert len(every) == 2 * kept and len(forward) == kept
    assert {s["edit_prompt"] for s in forward} < {s["edit_prompt"] for s in every}

    assert editgen("export-hf", str(out), str(hf)).returncode == 0
    rows = pq.read_table(sorted((hf / "data").glob("train-*.parquet")), columns=["key", "inverse", "inverse_of"])
    flags = rows.to_pylist()
    assert sum(r["inverse"] for r in flags) == kept and len(flags) == 2 * kept
    assert all(r["key"] == f"{r['inverse_of']}-inv" for r in flags if r["inverse"])
