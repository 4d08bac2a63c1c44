"""Multi-turn sessions end to end (issue 22 item 5): `editgen run --profile tiny --set instruct.turns=2 --set
instruct.inverse=true` publishes shards `editgen validate` accepts, whose turn samples link to their previous
turn and first input, with inverse pairs beside them; the loader yields whole sessions; `editgen status`
counts them; and a run SIGKILLed mid-render, then rerun, publishes exactly what an uninterrupted run does."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.pipeline.test_faults import DEMO
from tests.support import ROOT, cli_env, kill_mid_stage_then_rerun, manifest

pytestmark = pytest.mark.slow

#: 12 captions in 4 partitions of 3 (a kill can land between partitions), 2 turns, 2 candidates of 2 steps.
SETTINGS = ["ingest.limit=12", "ingest.rows_per_partition=3", "render.steps=2", "render.candidates=2",
            "render.resources.concurrency=1", "instruct.turns=2", "instruct.inverse=true"]


def cli(out: Path, ray_address: str) -> list[str]:
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO),
           "--out", str(out), "--no-progress", "-q", "--ray-address", ray_address]
    for item in SETTINGS:
        cmd += ["--set", item]
    return cmd


def editgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT,
                          env=cli_env() | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, ray_address) -> Path:
    out = tmp_path_factory.mktemp("sessions") / "baseline"
    proc = subprocess.run(cli(out, ray_address), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every published sample: key -> {member suffix: bytes}."""
    found: dict[str, dict[str, bytes]] = {}
    m = manifest(out)  # the train and eval tars (tiny's shard.eval_fraction)
    for entry in [*m["shards"], *m.get("eval", {}).get("shards", [])]:
        with tarfile.open(out / entry["name"]) as tar:
            for m in tar.getmembers():
                key, suffix = m.name.split(".", 1)
                found.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return found


def test_sessions_and_inverse_pairs_are_published_linked(baseline: Path) -> None:
    check = editgen("validate", str(baseline))
    assert check.returncode == 0, check.stdout + check.stderr
    got = samples(baseline)
    meta = {k: json.loads(v["json"]) for k, v in got.items()}
    turns = {k: m["session"] for k, m in meta.items() if m.get("session")}
    later = [k for k, s in turns.items() if s["turn"] == 2]
    assert later, "no session kept its second turn"
    for key in later:  # turn 2's input is what turn 1 published; both know the session's first input
        s = turns[key]
        prev, first = got[s["prev"]], got[s["first"]]
        assert got[key]["input.png"] == prev["edited.png"] and s["prev"] == s["first"]
        assert got[key]["first_input.png"] == first["input.png"]
        assert meta[key]["caption"] == meta[s["prev"]]["edited_caption"]
    inverse = [k for k, m in meta.items() if m.get("inverse")]
    assert len(inverse) == len(got) - len(inverse)  # every kept pair reversed beside it
    m = manifest(baseline)
    assert m["sessions"]["turn_samples"]["2"] == len(later)
    status = json.loads(editgen("status", str(baseline), "--json").stdout)
    assert status["sessions"] == m["sessions"] and status["funnel"]

    from editgen.output.loader import instruct_pix2pix_dataset

    splits = ["train"] + (["eval"] if m.get("eval", {}).get("shards") else [])  # tiny's shard.eval_fraction
    chains = [c for split in splits for c in instruct_pix2pix_dataset(
        str(baseline), resolution=16, shuffle_shards=False, shuffle_buffer=0, sessions=True, split=split)]
    assert sum(len(c) for c in chains) == len(got) - len(inverse)
    two = [c for c in chains if len(c) == 2]
    assert len(two) == len(later) and all(c[0]["edited_image"].equal(c[1]["input_image"]) for c in two)


def test_sigkill_mid_render_with_sessions_then_rerun_equals_a_clean_run(baseline, ray_address, tmp_path):
    out = tmp_path / "killed"
    survived = kill_mid_stage_then_rerun(cli(out, ray_address), out, baseline, "render", ("ingest", "instruct"), 1.5)
    assert len(survived) < 4
