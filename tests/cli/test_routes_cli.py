"""Routing end to end (issue 22 item 3): `editgen run --profile tiny --set render.routes=default` renders each
typed pair with its type's engine (more than one engine in one run), and publishes valid shards whose
samples carry the route in their record."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.engines.routes import DEFAULT_ROUTES
from tests.support import ROOT, cli_env, tar_files

pytestmark = pytest.mark.slow

DEMO = ROOT / "examples" / "demo_captions.jsonl"
SETTINGS = ["render.routes=default", "ingest.limit=12", "render.steps=2", "render.candidates=1"]


def editgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=600)


def test_tiny_run_with_default_routes_uses_several_engines_and_gives_valid_shards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = editgen("run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out), "--no-progress", "-q",
                   *[a for kv in SETTINGS for a in ("--set", kv)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rendered = [r for p in sorted((out / "render").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()
                if r["status"] == "kept"]
    records = [(r["edit_type"], json.loads(r["params"])) for r in rendered]
    assert records and all(rec["format"].split("/")[0] == f"editgen.{DEFAULT_ROUTES[t]}" and rec["route"] == t
                           for t, rec in records), records
    assert len({rec["format"] for _, rec in records}) > 1, "the demo captions' types span several engines"
    valid = editgen("validate", str(out))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    samples = []
    for tar in tar_files(out):
        with tarfile.open(tar) as t:
            samples += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")]
    assert samples and all(s["params"]["route"] == s["edit_type"] for s in samples)
