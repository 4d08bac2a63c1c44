"""Bit rot and damaged bookkeeping in OUT (docs/faults.md, "Bit rot, stray files, damaged JSON").

A byte flipped in a finished partition keeps its size and mtime, so the resume check (size + marker)
trusts it; every reader hashes what it parses instead. The consumer fails with one line naming the
damaged file (exit 1), removes its record, and the next `editgen run` recomputes exactly that partition
and ends byte-identical to an undamaged run. `validate` hashes every partition and shard. Stray files
and completion records / `_stage.json` of the wrong JSON shape never cause a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editgen.pipeline.config import build_config
from editgen.pipeline.errors import DamagedInput
from editgen.pipeline.runner import run_pipeline
from tests.support import ROOT, cli_env, error_line, shard_path

DEMO = ROOT / "examples" / "demo_captions.jsonl"
#: 6 captions in 2 partitions of 3; 2 candidates of 2 steps per pair; shards of 2 samples.
SETTINGS = [
    "ingest.limit=6", "ingest.rows_per_partition=3",
    "render.steps=2", "render.candidates=2", "render.resources.concurrency=2",
    "shard.samples_per_shard=2", "shard.resources.concurrency=1",
]
STAGES = ("ingest", "instruct", "render", "filter")


def config():
    return build_config(profile="tiny", overrides=[*SETTINGS, "run.progress=false"],
                        extra={"ingest": {"input": [str(DEMO)]}})


def run_cli(out: Path, ray_address: str, *args: str) -> subprocess.CompletedProcess:
    """`editgen run` with the settings of `config()` (same stage hashes), joined to the test cluster."""
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(DEMO),
           "--out", str(out), "--no-progress", "-q", "--ray-address", ray_address, *args]
    for item in SETTINGS:
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)


def tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def outputs(out: Path, stages: tuple[str, ...] = STAGES) -> dict[str, bytes]:
    """Every partition editgen names (each step's), the dedup side files, shards and manifest."""
    files = {}
    for stage in stages:
        for p in sorted((out / stage).rglob("part-[0-9][0-9][0-9][0-9][0-9].*")):
            if "_done" not in p.parts:
                files[str(p.relative_to(out))] = p.read_bytes()
    for p in sorted([*(out / "shards").rglob("*"), out / "manifest.json"]) if stages == STAGES else []:
        if p.is_file():
            files[str(p.relative_to(out))] = p.read_bytes()
    return files


def assert_same_outputs(out: Path, baseline: Path, stages: tuple[str, ...] = STAGES) -> None:
    got, want = outputs(out, stages), outputs(baseline, stages)
    assert sorted(got) == sorted(want)
    assert [n for n in want if got[n] != want[n]] == [], "differ from the undamaged run"


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    """One byte XORed in place: same size, mtime put back (as a disk or object store can leave it)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def silent_flip(path: Path, column: str, dictionary_page: bool = True) -> int:
    """Offset of a byte in `column` (its dictionary page, or its whole chunk) whose flip still parses and
    changes only that column's values, so it would pass as data without a checksum; flips it."""
    data = path.read_bytes()
    good = pq.read_table(path)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = chunk.data_page_offset if dictionary_page else start + chunk.total_compressed_size
    for offset in range(start, end):
        bad = bytearray(data)
        bad[offset] ^= 0x01
        try:
            t = pq.read_table(pa.BufferReader(bytes(bad)))
        except (OSError, pa.ArrowException):
            continue
        if t.drop_columns([column]).equals(good.drop_columns([column])) and not t[column].equals(good[column]):
            flip(path, offset)
            return offset
    raise AssertionError(f"no silent flip in {path}'s {column}")


def record(out: Path, stage_dir: str, pid: int) -> Path:
    return out / stage_dir / "_done" / f"part-{pid:05d}.json"


def stage_meta(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "_stage.json").read_text())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, ray_session) -> Path:
    """The undamaged run every damaged one is compared with."""
    out = tmp_path_factory.mktemp("bitrot") / "baseline"
    result = run_pipeline(config(), str(out))
    assert [s.partitions for s in result.stages] == [2, 2, 2, 2, 1]
    assert json.loads((out / "manifest.json").read_text())["samples"] >= 2
    return out


def copy(baseline: Path, out: Path, stages: tuple[str, ...] | None = None) -> Path:
    """The baseline (or some of its stages), with mtimes kept: the resume check trusts every file."""
    if stages is None:
        shutil.copytree(baseline, out)
    else:
        out.mkdir(parents=True)
        for stage in stages:
            shutil.copytree(baseline / stage, out / stage)
    return out


# ---- a damaged partition fails its reader with one line, and the next run recomputes it ---------------
@pytest.mark.slow
def test_flipped_instruction_fails_render_then_rerun_recomputes_it(baseline, ray_address, tmp_path):
    """A flip in the instruction column's dictionary page parses fine and changes one sample's
    instruction (the issue's silent case); render reads the file hashed, so it stops instead."""
    out = copy(baseline, tmp_path / "out", ("ingest", "instruct"))
    victim = out / "instruct" / "part-00001.parquet"
    silent_flip(victim, "instruction")
    assert pq.read_table(victim).num_rows == pq.read_table(baseline / "instruct" / "part-00001.parquet").num_rows

    proc = run_cli(out, ray_address)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc)
    assert f"render: {victim} is damaged" in line and "rerunning `editgen run` recomputes it" in line
    assert not record(out, "instruct", 1).exists() and record(out, "instruct", 0).exists()
    assert not stage_meta(out, "instruct")["complete"]
    assert not (out / "shards").exists()

    proc = run_cli(out, ray_address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(out, baseline)
    assert record(out, "instruct", 0).read_bytes() == record(baseline, "instruct", 0).read_bytes()  # not redone


@pytest.mark.slow
def test_flipped_render_partition_fails_only_filter_then_run_recomputes_just_it(baseline, ray_address, tmp_path):
    out = copy(baseline, tmp_path / "out", ("ingest", "instruct", "render"))
    victim = out / "render" / "part-00000.parquet"
    flip(victim, victim.stat().st_size // 2)

    proc = run_cli(out, ray_address, "--only", "filter")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"filter: {victim} is damaged" in error_line(proc)
    assert not record(out, "render", 0).exists() and not stage_meta(out, "render")["complete"]
    proc = run_cli(out, ray_address, "--only", "filter")  # render must be redone first: one line, exit 2
    assert proc.returncode == 2 and "upstream stage 'render' is missing or out of date" in error_line(proc)

    result = {s.name: s for s in run_pipeline(config(), str(out)).stages}
    assert [result[s].computed for s in ("ingest", "instruct", "render")] == [0, 0, 1]
    assert_same_outputs(out, baseline)


def test_shard_reads_filter_partitions_hashed_and_publishes_nothing_damaged(baseline, ray_session, tmp_path):
    """The shard stage (a global step on the driver) checks each filter partition before a row of it
    reaches a tar: no manifest and no short tar appear, and the rerun recomputes that one partition."""
    out = copy(baseline, tmp_path / "out", ("ingest", "instruct", "render", "filter"))
    victim = out / "filter" / "part-00001.parquet"
    flip(victim, victim.stat().st_size // 3)
    with pytest.raises(DamagedInput, match=rf"shard: {victim} is damaged"):
        run_pipeline(config(), str(out))
    assert not (out / "manifest.json").exists()
    for tar in (out / "shards").rglob("*.tar"):  # only whole tars of rows read before the damaged partition
        assert tar.read_bytes() == (baseline / tar.relative_to(out)).read_bytes(), tar
    assert not record(out, "filter", 1).exists() and not stage_meta(out, "filter")["complete"]
    result = {s.name: s for s in run_pipeline(config(), str(out)).stages}
    assert (result["render"].computed, result["filter"].computed, result["shard"].computed) == (0, 1, 1)
    assert_same_outputs(out, baseline)


def test_ingest_checks_its_own_steps_files(baseline, ray_address, tmp_path):
    """ingest/_keys (dedup's input): a damaged bucket is rebuilt from the verified _pre partition and
    rewritten; ingest/_pre (publish's input): damage fails publish (through the CLI: one line, exit 1, though
    it is raised in a plain Ray task), and the rerun recomputes it."""
    out = copy(baseline, tmp_path / "out", ("ingest",))
    keys = out / "ingest" / "_keys" / "part-00000.arrow"
    key = pq.read_table(out / "ingest" / "_pre" / "part-00000.parquet")["caption_key"][0].as_py()
    flip(keys, keys.read_bytes().index(key.encode()) + 1)  # a caption key: a duplicate could move
    (out / "ingest" / "_dedup" / "_done" / "global.json").unlink()  # dedup runs again, reading the keys
    pre = out / "ingest" / "_pre" / "part-00001.parquet"
    flip(pre, pre.stat().st_size // 2)
    record(out, "ingest", 1).unlink()  # publish recomputes partition 1, reading _pre
    proc = run_cli(out, ray_address, "--only", "ingest")
    assert proc.returncode == DamagedInput.exit_code, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("editgen:")]
    assert "Traceback" not in proc.stderr and "RayTaskError" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"editgen: ingest: {pre} is damaged"), proc.stderr[-3000:]
    assert keys.read_bytes() == (baseline / "ingest" / "_keys" / "part-00000.arrow").read_bytes()  # rebuilt
    assert not record(out, "ingest/_pre", 1).exists()
    result = run_pipeline(config(), str(out), only="ingest").stages[0]
    assert result.computed == 1
    assert_same_outputs(out, baseline, ("ingest",))


# ---- validate hashes every partition and shard -----------------------------------------------------
def test_validate_finds_a_flipped_byte_in_any_partition_and_shard(baseline, tmp_path, capsys):
    from editgen.cli import validate

    out = copy(baseline, tmp_path / "out")
    assert validate.validate(str(out)) == []
    victims = [out / "ingest" / "_pre" / "part-00000.parquet", out / "instruct" / "part-00001.parquet",
               out / "render" / "part-00000.parquet", out / "filter" / "part-00001.parquet"]
    silent_flip(victims[1], "instruction")
    for path in (victims[0], victims[2], victims[3], shard_path(out, 0)):
        flip(path, path.stat().st_size // 2)
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    assert validate.main(parser.parse_args([str(out)])) == 1
    lines = capsys.readouterr().out.splitlines()
    for path in victims:
        name = str(path.relative_to(out))
        assert any(ln.startswith(f"{name}: damaged: its sha256") and "verify_checksums=full" in ln
                   for ln in lines), (name, lines)
    assert any(ln.startswith(f"{shard_path(out, 0).relative_to(out)}: sha256") for ln in lines), lines
    # nothing was invalidated by the check: validate only reads
    assert all(record(out, d, 0).exists() and record(out, d, 1).exists()
               for d in ("ingest/_pre", "instruct", "render", "filter"))


def test_export_hf_checks_each_shard_and_the_manifest(baseline, tmp_path):
    from editgen.output.export_hf import export_hf
    from editgen.pipeline.errors import InputError

    out = copy(baseline, tmp_path / "out", ("shards",))
    shutil.copy2(baseline / "manifest.json", out / "manifest.json")
    assert export_hf(str(out), str(tmp_path / "ok"))["train"] > 0
    flip(shard_path(out, 1), shard_path(out, 1).stat().st_size // 2)
    with pytest.raises(InputError, match=r"edits-000001\.tar: sha256 does not match the manifest \(damaged\)"):
        export_hf(str(out), str(tmp_path / "hf"))
    assert not (tmp_path / "hf" / "export-train.json").exists()
    for bad in ('{"shards": [{"name": 3}]}', "[1]", '{"shards": [], "samples": "4"}', "\udcff"):
        (out / "manifest.json").write_bytes(bad.encode("utf-8", "surrogateescape"))
        with pytest.raises(InputError, match="not an editgen manifest"):
            export_hf(str(out), str(tmp_path / "hf"))


def test_filter_score_cache_is_checked(baseline, tmp_path):
    """The filter stage's own score cache: a flipped score is a miss (scored again), never a score."""
    from editgen.pipeline.storage import Storage
    from editgen.stages.filter import META_CLIP, META_INPUT, read_cached_scores

    out = copy(baseline, tmp_path / "out", ("filter",))
    path = out / "filter" / "_scores" / "part-00000.parquet"
    cached = pq.read_table(path)
    meta = cached.schema.metadata
    args = (Storage(str(out)), "filter", 0, meta[META_INPUT].decode(), meta[META_CLIP].decode(),
            cached.select(["id", "candidate"]))
    assert read_cached_scores(*args) is not None
    silent_flip(path, "sim_direction", dictionary_page=False)
    assert read_cached_scores(*args) is None


# ---- stray files and JSON of the wrong shape: ignored or one line, never a traceback ----------------------
STRAY = ("part-old.parquet", "part-7.parquet", "part-000001.parquet", "_done/part-old.json", "_done/part-1.json",
         "_done/notes.txt")


def test_stray_files_and_damaged_stage_files_through_the_cli(baseline, ray_address, tmp_path):
    from editgen.cli.preview import build_preview
    from editgen.cli.validate import validate

    out = copy(baseline, tmp_path / "out")
    for stage in ("ingest", "ingest/_pre", "instruct", "render", "filter"):
        for name in STRAY:
            (out / stage / name).write_text('{"partition": 0}' if name.endswith(".json") else "not editgen's")
    (out / "instruct" / "_stage.json").write_text('["not", "an", "object"]')
    (out / "filter" / "_stage.json").write_text('{"stage_hash": 7, "complete": "yes", "partitions": 2}')
    (out / "shard" / "_done" / "global.json").write_text('["not", "a", "record"]')
    (out / "ingest" / "_dedup" / "_done" / "global.json").write_text('{"digests": ["x"]}')
    (out / "ingest" / "_input.json").write_text('["not", "an", "input", "record"]')
    proc = tool("status", "--json", str(out))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    st = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    assert st["instruct"]["damaged"] and st["filter"]["damaged"] and st["render"]["complete"]
    assert "instruct/_stage.json: damaged (a JSON list, not an object)" in proc.stderr
    proc = tool("validate", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert "instruct/_stage.json: damaged" in proc.stdout and "filter/_stage.json: damaged" in proc.stdout
    build_preview(str(out))

    proc = run_cli(out, ray_address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(out, baseline)  # damaged stage files rewritten, global steps rerun, no partition redone
    assert (out / "ingest" / "_input.json").read_bytes() == (baseline / "ingest" / "_input.json").read_bytes()
    assert stage_meta(out, "instruct") == stage_meta(baseline, "instruct")
    assert record(out, "instruct", 0).read_bytes() == record(baseline, "instruct", 0).read_bytes()
    for stage in ("ingest", "instruct", "render", "filter"):
        assert all((out / stage / name).exists() for name in STRAY), "not editgen's files: left alone"
    assert validate(str(out)) == []


#: JSON that is not what editgen writes, for each kind of bookkeeping file.
BAD_JSON = [
    b"[]", b'"x"', b"3", b"null", b"{", b"\xff", b'{"partition": "0"}', b'{"partition": true}',
    b'{"partition": -1, "sha256": "x"}', b'{"partition": 0, "sha256": 5}', b'{"partition": 1, "sha256": "x"}',
    b'{"partition": 0, "sha256": "x", "rows_out": "3"}', b'{"partition": 0, "sha256": "x", "dropped": ["a"]}',
    b'{"partition": 0, "sha256": "x", "dropped": {"a": "1"}}',
    b'{"partition": 0, "sha256": "x", "metrics": {"a": null}}',
    b'{"stage_hash": ["h"], "complete": true, "partitions": 2}', b'{"stage_hash": "h", "complete": 1, "partitions": 2}',
    b'{"stage_hash": "h", "complete": true, "partitions": "2"}', b'{"digests": {"0": 1}}', b'{"digests": []}',
    b'{"markers": 3}', b'{"rows_in": 1.5}',
]


@pytest.mark.parametrize("bad", BAD_JSON)
def test_bookkeeping_of_the_wrong_shape_is_damage_not_a_traceback(baseline, tmp_path, bad):
    """Each bad document as a stage file, a partition record and a global record at once: every reader
    (runner resume check, status, validate, preview) counts it as absent or reports one line."""
    from editgen.cli import preview, status, validate
    from editgen.pipeline.records import check_partitions, read_record, read_records, read_stage_meta
    from editgen.pipeline.storage import Storage

    out = copy(baseline, tmp_path / "out")
    for path in (out / "render" / "_stage.json", record(out, "render", 0), out / "shard" / "_done" / "global.json",
                 out / "ingest" / "_dedup" / "_done" / "global.json"):
        path.write_bytes(bad)
    storage = Storage(str(out))
    meta = read_stage_meta(storage, "render")
    assert meta is None
    assert 0 not in {r["partition"] for r in read_records(storage, "render")}
    glob = read_record(storage, "shard", "global.json")
    assert glob is None or isinstance(glob, dict)
    h = stage_meta(baseline, "render")["stage_hash"]
    keys = {r["partition"]: r["input_key"] for r in map(json.loads, (record(baseline, "render", p).read_text()
                                                                        for p in (0, 1)))}
    assert check_partitions(storage, "render", keys, h) == {0: "missing"}
    st = status.collect(str(out))
    status.render_table(st)
    assert [s["stage"] for s in st["stages"]][:4] == list(STAGES)
    problems = validate.validate(str(out))
    assert problems and any(p.startswith("render") for p in problems), problems
    preview.stage_drops(storage)
