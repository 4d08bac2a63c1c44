"""Edit types end to end (issue 22 items 1 and 2): `editgen run --profile tiny` with the template backend and a
requested mix keeps typed samples (the type in every instruct, render, filter and shard record), and
`editgen status OUT` reports requested vs achieved shares per type."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.prompts.taxonomy import NAMES
from tests.support import ROOT, cli_env, tar_files

pytestmark = pytest.mark.slow

DEMO = ROOT / "examples" / "demo_captions.jsonl"
WEIGHTS = "instruct.type_weights={style_medium: 2, add_object: 1, remove_object: 1}"
SETTINGS = ["ingest.limit=8", "render.steps=2", "render.candidates=1", WEIGHTS]


def editgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT,
                          env=cli_env() | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=600)


def _table(out: Path, stage: str) -> list[dict]:
    return [r for p in sorted((out / stage).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_tiny_run_keeps_typed_samples_and_status_shows_the_mix(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = editgen("run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out),
                   *[a for kv in SETTINGS for a in ("--set", kv)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    instruct = _table(out, "instruct")
    kept = [r for r in instruct if r["status"] == "kept"]
    assert kept and all(r["edit_type"] in NAMES for r in kept)
    assert {r["type_requested"] for r in instruct} <= {"style_medium", "add_object", "remove_object"}
    assert all(r["type_fallback"] == (r["edit_type"] != r["type_requested"]) for r in kept)
    by_id = {r["id"]: r for r in kept}
    for stage in ("render", "filter"):
        rows = _table(out, stage)
        assert rows and all(r["edit_type"] == by_id[r["id"]]["edit_type"] for r in rows), stage
    samples = []
    for tar in tar_files(out):
        with tarfile.open(tar) as t:
            samples += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")]
    assert samples
    for s in samples:
        assert s["edit_type"] == by_id[s["id"]]["edit_type"]
        assert s["type_requested"] == by_id[s["id"]]["type_requested"]
        assert s["type_fallback"] == by_id[s["id"]]["type_fallback"]

    status = editgen("status", str(out), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["edit_types"]
    asked = Counter(r["type_requested"] for r in instruct if r["type_requested"])
    achieved = Counter(r["edit_type"] for r in kept)
    assert report["requested"] == sum(asked.values()) and report["kept"] == len(kept)
    assert report["fallback"] == sum(r["type_fallback"] for r in kept)
    for name, t in report["types"].items():
        assert t["requested"] == asked[name] and t["kept"] == achieved[name]
        assert t["kept_share"] == round(achieved[name] / len(kept), 4)
    table = editgen("status", str(out))
    assert table.returncode == 0 and "edit types:" in table.stdout and "style_medium" in table.stdout
