"""Edit types end to end (issue 22 items 1, 2 and 4): `editgen run --profile tiny` with the template backend and
a requested mix keeps typed samples (the type in every instruct, render, filter and shard record);
`editgen status OUT` reports requested vs achieved shares and the funnel by type, equal to counts taken from
the partitions themselves; `shard.type_quota` keeps exactly the capped counts, the best of each type, and
the same samples on a rerun. One pipeline run is shared (the quota runs recompute only the shard stage)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.output.survival import untimed
from editgen.prompts.taxonomy import NAMES
from tests.support import ROOT, cli_env, manifest, tar_files

pytestmark = pytest.mark.slow

DEMO = ROOT / "examples" / "demo_captions.jsonl"
WEIGHTS = "instruct.type_weights={style_medium: 2, add_object: 1, remove_object: 1}"
SETTINGS = ["ingest.limit=8", "render.steps=2", "render.candidates=2", "shard.export_rejected=true", WEIGHTS]


def editgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT,
                          env=cli_env() | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=600)


def _table(out: Path, stage: str) -> list[dict]:
    return [r for p in sorted((out / stage).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def typed_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("types") / "out"
    proc = editgen("run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out),
                   *[a for kv in SETTINGS for a in ("--set", kv)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_tiny_run_keeps_typed_samples_and_status_shows_the_mix(typed_out: Path) -> None:
    out = typed_out
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
    # the survival funnel (issue 23 item 5): every stage's compute, the manifest's copy untimed, on CPU per CPU-hour
    funnel = json.loads(status.stdout)["survival"]
    lines = {s["stage"]: s for s in funnel["stages"]}
    assert list(lines) == ["ingest", "instruct", "render", "filter", "shard"]
    assert untimed(funnel) == manifest(out)["survival"]
    assert min(lines[s]["cpu_seconds"] for s in ("ingest", "render", "shard")) > 0  # global steps timed too
    assert lines["render"]["unet_flops"] > 0 and lines["instruct"]["generated_tokens"] is not None
    assert funnel["kept_samples"] == len(samples) and funnel["gpu_seconds"] is None and funnel["kept_per_cpu_hour"] > 0
    assert "survival funnel" in table.stdout and "kept samples per CPU-hour" in table.stdout


def _samples(out: Path, folder: str = "shards") -> list[dict]:
    found = []
    for tar in tar_files(out, folder):
        with tarfile.open(tar) as t:
            found += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")]
    return found


def _flops(row: dict) -> float:
    return (json.loads(row["params"]).get("compute") or {}).get("unet_flops", 0.0) if row["params"] else 0.0


def test_the_funnel_by_type_equals_the_partitions_counts(typed_out: Path) -> None:
    out = typed_out
    status = editgen("status", str(out), "--json")
    assert status.returncode == 0, status.stderr
    funnel = json.loads(status.stdout)["funnel"]
    instruct, render, filt = _table(out, "instruct"), _table(out, "render"), _table(out, "filter")
    kinds = lambda rows: Counter(r["edit_type"] for r in rows if r["status"] == "kept")  # noqa: E731
    shards = Counter(s["edit_type"] for s in _samples(out))
    asked = {r["type_requested"] for r in instruct}
    assert set(funnel["types"]) == {r["edit_type"] for r in render} | asked | set(kinds(instruct))
    assert funnel["kept_samples"] == sum(shards.values()) > 0
    for name, row in funnel["types"].items():
        assert row["asked"] == sum(r["type_requested"] == name for r in instruct)
        assert row["answers_kept"] == kinds(instruct)[name]
        assert row["candidates"] == sum(r["edit_type"] == name for r in render)
        assert row["passed_filter"] == kinds(filt)[name] and row["kept_samples"] == shards[name]
        drops = Counter(f"filter:{r['drop_reason']}" for r in filt if r["edit_type"] == name and r["status"] != "kept")
        assert {k: v for k, v in row["drops"].items() if k.startswith("filter:")} == dict(drops)
        assert row["unet_flops"] == pytest.approx(sum(_flops(r) for r in render if r["edit_type"] == name))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["edit_types"]["types"] == funnel["types"]
    table = editgen("status", str(out))
    assert "passed filter" in table.stdout and "UNet FLOPs/kept" in table.stdout
    assert editgen("preview", str(out)).returncode == 0
    assert '<table class="funnel">' in (out / "preview.html").read_text()
    hf = out.parent / "hf"
    assert editgen("export-hf", str(out), str(hf)).returncode == 0
    files = sorted((hf / "data").glob("train-*.parquet"))
    exported = sorted((r["id"], r["edit_type"]) for r in pq.read_table(files, columns=["id", "edit_type"]).to_pylist())
    assert exported == sorted((s["id"], s["edit_type"]) for s in _samples(out))


def test_a_type_quota_keeps_the_capped_best_samples_and_the_same_on_a_rerun(typed_out: Path) -> None:
    out = typed_out
    passed = [r for r in _table(out, "filter") if r["status"] == "kept"]
    by_type = Counter(r["edit_type"] for r in passed)
    assert max(by_type.values()) > 1, by_type  # the cap bites somewhere
    proc = editgen("run", "--out", str(out), "--set", "shard.type_quota=1", "-q", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = _samples(out)
    assert Counter(s["edit_type"] for s in kept) == {t: 1 for t in by_type}
    for s in kept:  # the best of its type by directional similarity
        best = max(r["sim_direction"] for r in passed if r["edit_type"] == s["edit_type"])
        assert s["sim_direction"] == best
    over = [s for s in _samples(out, "rejected") if s.get("drop_reason") == "over_type_quota"]
    assert len(over) == len(passed) - len(kept)
    assert editgen("validate", str(out)).returncode == 0
    again = editgen("run", "--out", str(out), "--from", "shard", "-q", "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted((s["id"], s["candidate"]) for s in _samples(out)) == sorted((s["id"], s["candidate"]) for s in kept)
    status = json.loads(editgen("status", str(out), "--json").stdout)
    assert status["funnel"]["kept_samples"] == len(kept)
    shard = next(s for s in status["stages"] if s["stage"] == "shard")
    assert shard["dropped"].get("over_type_quota") == len(over) and shard["rows_in"] == len(passed)


def test_an_unknown_type_in_a_quota_is_one_line(typed_out: Path) -> None:
    proc = editgen("run", "--out", str(typed_out), "--set", "shard.type_quota={colr: 2}")
    assert proc.returncode == 2 and "unknown edit type 'colr'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
