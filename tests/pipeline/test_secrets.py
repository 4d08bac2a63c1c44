"""No secret in what editgen writes (issue 19 items 4 and 5).

Credentials in input URLs (userinfo, signed or keyed query strings) are used to read but never published:
not in any file under OUT, not in an export, not in the CLI's output. Worker credentials (AWS_*, secret
EDITGEN_* variables, the LLM key's variable) reach Ray workers in memory, never in a runtime_env that Ray
writes into its session files on every node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support import ROOT, cli_env

DEMO = ROOT / "examples" / "demo_captions.jsonl"
def files_holding(root: Path, *secrets: str) -> list[str]:
    """Every file under `root` whose bytes (a parquet file's decoded rows: its pages may be compressed)
    hold one of `secrets`; a file that vanishes meanwhile is skipped."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            data = path.read_bytes()
            if path.suffix == ".parquet":
                data += json.dumps(pq.read_table(path).to_pylist(), default=repr).encode()
        except OSError:
            continue
        found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


def editgen(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---- item 5: Ray never writes a worker secret to disk ---------------------------------------------------
@pytest.mark.slow
def test_ray_session_files_never_hold_worker_secrets(tmp_path):
    """A `ray start` cluster whose nodes have no credentials; the driver has the S3 secret, a secret
    EDITGEN_STORAGE_OPTIONS and the LLM key (in a variable without the EDITGEN_ prefix). Ingest (actors and
    tasks) reads and writes S3 and instruct calls the LLM on the worker node, so the secrets reached the
    workers; afterwards no file of any node's Ray session holds one of them."""
    s3fs = pytest.importorskip("s3fs")
    from tests.llm_fixtures import BadServer
    from tests.ray_start_cluster import ray_start_cluster
    from tests.s3_server import moto_server

    aws, llm, opts = "aws-marker-5b1f0c9e77", "llm-marker-0d8e3a41c2", "opts-marker-7c2b9e11f4"
    node_env = {k: v for k, v in cli_env().items() if not k.startswith(("AWS_", "EDITGEN_"))}
    with moto_server(tmp_path) as s3, BadServer("ok") as srv, \
            ray_start_cluster(node_env, tmp_path) as cluster:
        bucket = s3.new_bucket("sec")
        src = f"s3://{bucket}/in/demo_captions.jsonl"
        env = {**node_env, **s3.env, "AWS_SECRET_ACCESS_KEY": aws, "LLM_KEY_FOR_TEST": llm,
               "EDITGEN_STORAGE_OPTIONS": json.dumps({"key": "testing", "secret": opts}),
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
        s3fs.S3FileSystem(endpoint_url=s3.endpoint, key="testing", secret="testing", skip_instance_cache=True).put(
            str(DEMO), src)
        run = editgen(env, "run", "--profile", "tiny", "--input", src, "--out", f"s3://{bucket}/out", "--to",
                      "instruct", "--no-progress", "--ray-address", cluster.address,
                      *[a for kv in ("ingest.limit=6", "ingest.rows_per_partition=3", "instruct.backend=openai",
                                     "instruct.model=served", f"instruct.openai.base_url={srv.url}",
                                     "instruct.openai.api_key_env=LLM_KEY_FOR_TEST", "instruct.openai.max_retries=0",
                                     "run.progress=false") for a in ("--set", kv)])
        assert run.returncode == 0, run.stderr[-3000:]
        assert srv.auth and set(srv.auth) == {f"Bearer {llm}"}, "the key reached the worker node's actors"
        leaks = files_holding(Path(cluster.temp_dir), aws, llm, opts)
    assert leaks == []
    assert not any(s in run.stdout + run.stderr for s in (aws, llm, opts))


# ---- workers get secrets in memory -----------------------------------------------------------------------
def test_secret_variables_never_enter_a_runtime_env(monkeypatch):
    from pipeline.ray_runtime import with_worker_env, worker_env

    env = {"AWS_SECRET_ACCESS_KEY": "a1", "AWS_ACCESS_KEY_ID": "a2", "AWS_SESSION_TOKEN": "a3",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "HF_TOKEN": "h1",
           "EDITGEN_STORAGE_OPTIONS": '{"secret": "s1"}', "EDITGEN_API_KEY": "e1", "EDITGEN_FAULT_DELAY_S": "0",
           "HTTPS_PROXY": "http://me:pw@proxy:3128", "AZURE_STORAGE_CONNECTION_STRING": "c1", "MY_LLM": "l1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plain, secret = worker_env(["MY_LLM"])
    public = {"AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "EDITGEN_FAULT_DELAY_S"}
    assert {k for k in env if k in plain} == public
    assert {k: secret.get(k) for k in env if k not in public} == {k: v for k, v in env.items() if k not in public}
    options = with_worker_env({"runtime_env": {"env_vars": {"PYTHONPATH": "/x"}}}, ["MY_LLM"])
    assert options["runtime_env"]["env_vars"] == {**plain, "PYTHONPATH": "/x"}


def test_workers_get_exactly_the_drivers_secrets(ray_session, monkeypatch):
    """Through a real Ray task: the secret variable set on the driver after Ray started is there on the
    worker; unset on the driver, the next call's worker no longer has it (a reused worker process)."""
    from pipeline.ray_runtime import remote_task

    monkeypatch.setenv("EDITGEN_TEST_WORKER_TOKEN", "wt-4411aa")
    task = remote_task(os.environ.get, num_cpus=0.1)
    assert ray_session.get(task.remote("EDITGEN_TEST_WORKER_TOKEN")) == "wt-4411aa"
    monkeypatch.delenv("EDITGEN_TEST_WORKER_TOKEN")
    later = remote_task(os.environ.get, num_cpus=0.1)
    assert ray_session.get([later.remote("EDITGEN_TEST_WORKER_TOKEN") for _ in range(4)]) == [None] * 4
