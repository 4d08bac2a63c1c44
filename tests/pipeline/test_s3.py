"""Input and OUT on a real S3 API (a moto server on 127.0.0.1), as a cluster job runs editgen.

Credentials and the endpoint exist only in the driver's environment (AWS_*): the Ray nodes are started
without them, so every worker that reads or writes the store got them from the driver (plain settings in
the runtime env, secrets in memory: pipeline.ray_runtime.worker_env). Each faulty run is compared with one
clean run, byte for byte, after ONE rerun: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.ray_start_cluster import ray_start_cluster
from tests.s3_server import S3Server, moto_server
from tests.support import ROOT, cli_env, error_line, wait_until

pytest.importorskip("s3fs")
DEMO = ROOT / "examples" / "demo_captions.jsonl"
SETTINGS = [
    "ingest.limit=12", "ingest.rows_per_partition=3",
    "render.steps=2", "render.candidates=2", "render.resources.concurrency=2",
    "shard.samples_per_shard=2", "shard.resources.concurrency=1", "run.progress=false",
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    name = s3.new_bucket("editgen")
    fs = s3fs_of(s3)
    fs.put(str(DEMO), f"{name}/in/demo_captions.jsonl")
    return name


def s3fs_of(s3: S3Server):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=s3.endpoint, key="testing", secret="testing",
                             use_listings_cache=False, skip_instance_cache=True)


def node_env() -> dict[str, str]:
    """What Ray nodes and their workers start with: no AWS credentials, no endpoint."""
    return {k: v for k, v in cli_env().items() if not k.startswith("AWS_")}


def driver_env(s3: S3Server, **extra: str) -> dict[str, str]:
    return {**node_env(), **s3.env, **extra}


def cli(bucket: str, out: str, *extra: str, ray_address: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input",
           f"s3://{bucket}/in/demo_captions.jsonl", "--out", out, "--no-progress", "-q"]
    for item in (*SETTINGS, *extra):
        cmd += ["--set", item]
    return cmd + (["--ray-address", ray_address] if ray_address else [])


def editgen(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def published(s3: S3Server, out: str) -> dict[str, bytes]:
    """Every data file a run publishes (stage partitions, shards, manifest), by path under OUT."""
    fs, root = s3fs_of(s3), out.removeprefix("s3://")
    files = {}
    for path in sorted(fs.find(root)):
        rel = path[len(root) + 1:]
        if rel.endswith(".parquet") or rel.startswith(("shards/", "rejected/")) or rel == "manifest.json":
            files[rel] = fs.cat_file(path)
    return files


def assert_same(s3: S3Server, out: str, baseline: str) -> None:
    got, want = published(s3, out), published(s3, baseline)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == [], "differs from the clean run"


def manifest_of(s3: S3Server, out: str) -> dict:
    return json.loads(s3fs_of(s3).cat_file(f"{out.removeprefix('s3://')}/manifest.json"))


@pytest.fixture(scope="module")
def baseline(s3: S3Server, bucket: str, tmp_path_factory) -> str:
    """The clean run, on a two-node `ray start` cluster with token auth whose nodes have no credentials."""
    out = f"s3://{bucket}/base"
    with ray_start_cluster(node_env(), tmp_path_factory.mktemp("cluster")) as cluster:
        wrong = editgen(driver_env(s3, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token"),
                        *cli(bucket, out, ray_address=cluster.address)[3:])
        assert wrong.returncode == 2, wrong.stderr[-3000:]
        line = error_line(wrong)
        assert "token authentication" in line and "RAY_AUTH_TOKEN" in line and "gcs_client" not in wrong.stderr
        env = driver_env(s3, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
        proc = editgen(env, *cli(bucket, out, ray_address=cluster.address)[3:])
        assert proc.returncode == 0, proc.stderr[-3000:]
    secret = s3.env["AWS_SECRET_ACCESS_KEY"]
    assert not any(secret.encode() in data for data in published(s3, out).values())
    fs = s3fs_of(s3)
    for path in fs.find(out.removeprefix("s3://")):
        if path.endswith((".yaml", ".json", ".log")):
            assert secret.encode() not in fs.cat_file(path), path
    return out


def test_full_pipeline_on_s3_with_status_validate_preview_export(s3, bucket, baseline):
    env = driver_env(s3)
    status = json.loads(editgen(env, "status", baseline, "--json").stdout)
    rows = {s["stage"]: s for s in status["stages"]}
    assert all(rows[s]["complete"] and rows[s]["rows_out"] > 0 for s in ("ingest", "instruct", "render", "filter"))
    assert rows["render"]["rows_in"] == rows["instruct"]["rows_out"] and status["lease"] is None
    manifest = manifest_of(s3, baseline)
    held_out = manifest.get("eval", {}).get("samples", 0)  # tiny's shard.eval_fraction: published too
    assert rows["shard"]["rows_out"] == manifest["samples"] + held_out and manifest["samples"] >= 3
    valid = editgen(env, "validate", baseline)
    assert valid.returncode == 0 and valid.stdout.startswith("valid: "), valid.stdout + valid.stderr
    assert editgen(env, "preview", baseline).returncode == 0
    assert s3fs_of(s3).exists(f"{baseline.removeprefix('s3://')}/preview.html")
    dest = f"s3://{bucket}/hf"
    exported = editgen(env, "export-hf", baseline, dest, "--rows-per-file", "2")
    assert exported.returncode == 0, exported.stderr
    marker = json.loads(s3fs_of(s3).cat_file(f"{bucket}/hf/export-train.json"))
    assert marker["rows"] == manifest["samples"] and len(marker["files"]) == -(-manifest["samples"] // 2)
    again = editgen(env, "export-hf", baseline, dest, "--rows-per-file", "3")  # no stale files mix in
    assert again.returncode == 0
    files = sorted(p.rsplit("/", 1)[1] for p in s3fs_of(s3).ls(f"{bucket}/hf/data")
                   if p.rsplit("/", 1)[1].startswith("train-"))  # beside them, tiny's eval split as `test`
    marker = json.loads(s3fs_of(s3).cat_file(f"{bucket}/hf/export-train.json"))
    assert [f"data/{f}" for f in files] == marker["files"] and len(files) == -(-manifest["samples"] // 3)
    none = editgen(env, "export-hf", baseline, f"s3://{bucket}/hf-rej", "--rejected")
    assert none.returncode == 2 and "no rejected shards" in error_line(none)


def test_loader_streams_exactly_the_manifest_from_s3(s3, baseline, monkeypatch):
    import webdataset as wds

    from editgen.output.loader import make_dataloader, shard_urls

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    manifest = manifest_of(s3, baseline)
    urls = shard_urls(baseline)
    assert urls == [f"{baseline}/{e['name']}" for e in manifest["shards"]]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert len(keys) == len(set(keys)) == manifest["samples"]
    batches = list(make_dataloader(baseline, batch_size=2, num_workers=0, resolution=16))
    assert sum(len(b["edit_prompt"]) for b in batches) == manifest["samples"]


def test_lost_partition_resumes_in_one_rerun(s3, bucket, baseline, ray_address):
    """The reported data loss: a render partition and its record vanish; ONE rerun restores the dataset."""
    out = f"s3://{bucket}/lost"
    fs = s3fs_of(s3)
    fs.copy(f"{bucket}/base", f"{bucket}/lost", recursive=True)
    fs.rm([f"{bucket}/lost/render/_done/part-00001.json", f"{bucket}/lost/render/part-00001.parquet"])
    proc = editgen(driver_env(s3), *cli(bucket, out, ray_address=ray_address)[3:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert manifest_of(s3, out)["samples"] == manifest_of(s3, baseline)["samples"]
    assert_same(s3, out, baseline)
    assert editgen(driver_env(s3), "validate", out).returncode == 0


def test_second_driver_refused_then_sigkill_mid_render_resumes(s3, bucket, baseline, ray_address):
    """Driver 1 holds the lease; driver 2 (other settings) is refused with the holder named; driver 1 is
    SIGKILLed mid-render; the next run takes the stale lease over and publishes the clean run's bytes."""
    out = f"s3://{bucket}/two"
    fs, root = s3fs_of(s3), f"{bucket}/two"
    env = driver_env(s3, EDITGEN_FAULT_DELAY_S="render=2")
    first = subprocess.Popen(cli(bucket, out, ray_address=ray_address), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: fs.exists(f"{root}/_lease.json"), first)
    second = editgen(driver_env(s3), *cli(bucket, out, "shard.samples_per_shard=3", "ingest.limit=16",
                                          ray_address=ray_address)[3:])
    assert second.returncode == 2
    line = error_line(second)
    assert "another editgen run holds this output" in line and f"pid {first.pid}" in line
    wait_until(lambda: bool(fs.glob(f"{root}/render/_done/part-*.json")), first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    rerun = editgen(driver_env(s3), *cli(bucket, out, ray_address=ray_address)[3:])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "took over a stale lease" in rerun.stdout + rerun.stderr
    assert_same(s3, out, baseline)
    assert not fs.exists(f"{root}/_lease.json")


def test_kill_during_reshard_readers_see_old_then_new(s3, bucket, baseline, ray_address, monkeypatch):
    """A stricter threshold changes the kept set and re-shards; the driver dies mid-shard: loader and
    validate see exactly the previous dataset (never a mix); the rerun publishes the new one and removes
    the old generation."""
    import webdataset as wds

    from editgen.output.loader import shard_urls

    out = f"s3://{bucket}/reshard"
    fs, root = s3fs_of(s3), f"{bucket}/reshard"
    fs.copy(f"{bucket}/base", root, recursive=True)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    old = manifest_of(s3, out)

    def keys() -> list[str]:
        return [s["__key__"] for s in wds.WebDataset(shard_urls(out), shardshuffle=False, empty_check=False)]

    old_keys = keys()
    stricter = f"filter.min_sim_direction={_median_kept_direction(s3, root):.6f}"  # drops about half
    env = driver_env(s3, EDITGEN_FAULT_DELAY_S="shard=2")
    proc = subprocess.Popen(cli(bucket, out, stricter, ray_address=ray_address), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    new_tars = lambda: [p for p in fs.glob(f"{root}/shards/gen-*/*.tar") if old["generation"] not in p]  # noqa: E731
    wait_until(lambda: bool(new_tars()), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert keys() == old_keys and manifest_of(s3, out) == old
    valid = editgen(driver_env(s3), "validate", out)
    assert valid.returncode == 0 and "earlier filter output" in valid.stderr, valid.stdout + valid.stderr
    rerun = editgen(driver_env(s3), *cli(bucket, out, stricter, ray_address=ray_address)[3:])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    new = manifest_of(s3, out)
    assert new["generation"] != old["generation"] and 0 < new["samples"] < old["samples"]
    assert set(keys()) < set(old_keys) and len(keys()) == new["samples"]
    assert not fs.glob(f"{root}/shards/{old['generation']}/*")
    assert editgen(driver_env(s3), "validate", out).returncode == 0


def _median_kept_direction(s3: S3Server, root: str) -> float:
    import pyarrow.parquet as pq

    fs = s3fs_of(s3)
    values = []
    for path in sorted(fs.glob(f"{root}/filter/part-*.parquet")):
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["status", "sim_direction"]).to_pylist()
        values += [r["sim_direction"] for r in t if r["status"] == "kept"]
    values.sort()
    return (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def test_validate_fails_a_dataset_missing_a_filtered_partition(s3, bucket, baseline, monkeypatch):
    """The 36-of-47 dataset: filter planned from a stale listing (one render partition unseen), shards
    built from what it had. Shards and manifest agree; the chain does not."""
    from editgen.pipeline.config import build_config
    from editgen.pipeline.records import read_stage_meta, write_stage_meta
    from editgen.pipeline.runner import run_pipeline
    from editgen.pipeline.storage import Storage

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    out = f"s3://{bucket}/short"
    fs = s3fs_of(s3)
    fs.copy(f"{bucket}/base", f"{bucket}/short", recursive=True)
    storage = Storage(out)
    meta = read_stage_meta(storage, "filter")
    last = meta["partitions"] - 1
    storage.remove("filter", "_done", f"part-{last:05d}.json")
    storage.remove("filter", f"part-{last:05d}.parquet")
    write_stage_meta(storage, "filter", {**meta, "partitions": last})
    cfg = build_config(profile="tiny", overrides=SETTINGS, extra={"ingest": {"input": [f"s3://{bucket}/in/demo_captions.jsonl"]}})
    shard = run_pipeline(cfg, out, only="shard").stages[0]
    assert shard.computed == 1 and shard.rows_out < manifest_of(s3, baseline)["samples"]
    proc = editgen(driver_env(s3), "validate", out)
    assert proc.returncode == 1
    assert f"filter: render partitions [{last}]" in proc.stdout and "never processed by filter" in proc.stdout
    assert editgen(driver_env(s3), "validate", out, "--shards-only").returncode == 0


def test_s3_without_s3fs_is_error_line(tmp_path):
    """An environment without the s3 extra: `s3://` names s3fs and the checkout install (no traceback)."""
    blocker = tmp_path / "s3fs.py"
    blocker.write_text("raise ImportError('No module named s3fs')\n")
    env = {**cli_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-m", "editgen.cli.main", "status", "s3://nowhere/out"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "s3fs" in error_line(proc) and "pip install -e '.[s3]'" in error_line(proc)
