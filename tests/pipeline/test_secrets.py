"""No secret in what editgen writes (issue 19 items 4 and 5).

Credentials in input URLs (userinfo, signed or keyed query strings) are used to read but never published:
not in any file under OUT, not in an export, not in the CLI's output. Worker credentials (AWS_*, secret
EDITGEN_* variables, the LLM key's variable) reach Ray workers in memory, never in a runtime_env that Ray
writes into its session files on every node.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest

from editgen.cli.main import main
from tests.image_server import encode, gradient
from tests.support import ROOT, cli_env

DEMO = ROOT / "examples" / "demo_captions.jsonl"
#: What each served file demands (a Basic password or a secret in the query), and the secret strings a
#: run must never write. The caption file itself is behind a password in the input URL.
INPUT_PASS = "inpass-3c9f1e0b"
IMAGE_SECRETS = {
    "0.png": ("basic", "imgpass-7a41d2"),
    "1.png": ("token", "tok-5e08b7c3a9"),
    "2.png": ("X-Amz-Signature", "sig-d41d8cd98f"),
    "3.png": ("api_key", "key-91f0aa37e2"),
}
GONE_TOKEN = "tok-gone-4b2c88e1"
SECRETS = [INPUT_PASS, GONE_TOKEN, "cred-AKIAEXAMPLE99", *(s for _, s in IMAGE_SECRETS.values())]
THINGS = ["red bicycle", "small wooden boat", "green apple", "old stone bridge", "yellow taxi"]


class CredentialServer:
    """127.0.0.1 HTTP server that serves a jsonl caption file (Basic auth, with Range requests, as fsspec
    reads) and four PNGs, each only to a request that carries its own secret; it records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (path, what authorised it)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.files = {f"/img/{name}": encode(gradient(96, 64, seed=i)) for i, name in enumerate(IMAGE_SECRETS)}
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def image_urls(self) -> list[str]:
        h = self.host
        return [f"http://img:{IMAGE_SECRETS['0.png'][1]}@{h}/img/0.png",
                f"http://{h}/img/1.png?w=96&token={IMAGE_SECRETS['1.png'][1]}",
                f"http://{h}/img/2.png?X-Amz-Credential=cred-AKIAEXAMPLE99%2F20240101&X-Amz-Expires=60"
                f"&X-Amz-Signature={IMAGE_SECRETS['2.png'][1]}",
                f"http://{h}/img/gone.png?access_token={GONE_TOKEN}",  # 404: its error names the URL
                f"http://{h}/img/3.png?API_KEY={IMAGE_SECRETS['3.png'][1]}"]

    def serve_captions(self, lines: list[dict[str, str]]) -> str:
        self.files["/data/caps.jsonl"] = "".join(json.dumps(x) + "\n" for x in lines).encode()
        return f"http://reader:{INPUT_PASS}@{self.host}/data/caps.jsonl"

    def _allowed(self, path: str, query: str, auth: str) -> str | None:
        user = base64.b64decode(auth.split(" ", 1)[1]).decode() if auth.startswith("Basic ") else ""
        if path == "/data/caps.jsonl":
            return "basic" if user == f"reader:{INPUT_PASS}" else None
        kind, secret = IMAGE_SECRETS.get(path.rsplit("/", 1)[-1], ("", ""))
        ok = user == f"img:{secret}" if kind == "basic" else f"{kind}={secret}".lower() in unquote(query).lower()
        return kind if secret and ok else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._reply(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._reply(body=False)

            def _reply(self, body: bool) -> None:
                path, _, query = self.path.partition("?")
                why = server._allowed(path, query, self.headers.get("Authorization", ""))
                data = server.files.get(path)
                if why is None or data is None:
                    self.send_response(401 if data is not None else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.seen.append((path, why))
                start, end, status = 0, len(data) - 1, 200
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end, status = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1), 206
                self.send_response(status)
                self.send_header("Content-Type", "image/png" if path.endswith(".png") else "application/octet-stream")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(data[start:end + 1])

            def log_message(self, *args: object) -> None:
                return

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---- item 4: credentials in input URLs are read with, never written -----------------------------------
@pytest.mark.slow
def test_url_credentials_are_used_to_read_but_never_written(tmp_path, ray_address, capsys):
    """The caption file behind a password in its --input URL; image URLs with userinfo, a token, a signed
    S3-style query and an API key; one more that 404s. A full real-image run (a CLI process), then status,
    validate, preview, export and a run whose input is missing (in this process): the server saw every
    credential, and no file under OUT or the export, and no line the CLI printed, holds one. Published URLs
    keep their host, path and parameter names."""
    server = CredentialServer()
    try:
        src = server.serve_captions([{"TEXT": f"a photo of a {t} on a sunny day", "URL": u}
                                     for t, u in zip(THINGS, server.image_urls(), strict=True)])
        out, dest = tmp_path / "out", tmp_path / "hf"
        sets = ["ingest.rows_per_partition=3", "render.source=real", "render.steps=2", "render.candidates=1",
                "render.inversion.method=negative_prompt", "filter.top_k=null", "shard.export_rejected=true"]
        run = editgen(cli_env(), "run", "--profile", "tiny", "--input", src, "--out", str(out), "--no-progress",
                      "--ray-address", ray_address, *[a for kv in sets for a in ("--set", kv)])
        assert run.returncode == 0, run.stderr[-3000:]
        printed = [run.stdout + run.stderr]
        for args in (["status", str(out)], ["status", str(out), "--json"], ["validate", str(out)],
                     ["preview", str(out)], ["export-hf", str(out), str(dest)]):
            assert main(args) == 0, args
            printed.append(capsys.readouterr().out)
        gone = ["run", "--profile", "tiny", "--input", src.replace("caps", "gone"), "--out", str(tmp_path / "o2")]
        assert main(gone) == 2
        printed.append(capsys.readouterr().err)
        assert f"editgen: http://***@{server.host}/data/gone.jsonl" in printed[-1]
    finally:
        server.close()
    assert {p for p, _ in server.seen if p.startswith("/img/")} == {f"/img/{n}" for n in IMAGE_SECRETS}
    assert files_holding(out, *SECRETS) == [] and files_holding(dest, *SECRETS) == []
    assert [s for text in printed for s in SECRETS if s in text] == []
    fetch = {s["stage"]: s for s in json.loads(printed[2])["stages"]}["fetch"]
    assert fetch["rows_out"] == 4 and fetch["dropped"] == {"fetch_http_error": 1}
    urls = pq.read_table(out / "fetch" / "part-00000.parquet", columns=["url"])["url"].to_pylist()
    assert urls[:3] == [f"http://***@{server.host}/img/0.png", f"http://{server.host}/img/1.png?w=96&token=***",
                        f"http://{server.host}/img/2.png?X-Amz-Credential=***&X-Amz-Expires=60&X-Amz-Signature=***"]
    assert json.loads((out / "ingest" / "_input.json").read_text())["files"] == [
        f"http://***@{server.host}/data/caps.jsonl"]


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


# ---- what a secret looks like (pipeline/redact.py) ------------------------------------------------------
@pytest.mark.parametrize(("url", "published"), [
    ("http://user:p@ss@h.example:8080/a.png?x=1", "http://***@h.example:8080/a.png?x=1"),
    ("s3://AKIA:s3cr3t@bucket/caps.parquet", "s3://***@bucket/caps.parquet"),
    ("https://h/a.png?token=t1&w=2", "https://h/a.png?token=***&w=2"),
    ("https://h/a?apiKey=k&api-key=k&APIKEY=k&key=k", "https://h/a?apiKey=***&api-key=***&APIKEY=***&key=***"),
    ("https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&X-Amz-Date=1"
     "&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Security-Token=st&X-Amz-Signature=ab",
     "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Date=1"
     "&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Security-Token=***&X-Amz-Signature=***"),
    ("https://a.blob.core.windows.net/c/x.png?sv=2020&se=2030&sp=r&sig=abc%3D",
     "https://a.blob.core.windows.net/c/x.png?sv=2020&se=2030&sp=r&sig=***"),
    ("https://s.googleapis.com/b/o?GoogleAccessId=sa&Expires=1&Signature=s",
     "https://s.googleapis.com/b/o?GoogleAccessId=***&Expires=1&Signature=***"),
    ("https://h/cb#access_token=t&state=1", "https://h/cb#access_token=***&state=1"),
    ("https://h/a?password=p;session_id=s&auth=a&client_secret=c",
     "https://h/a?password=***;session_id=***&auth=***&client_secret=***"),
])
def test_urls_lose_credentials_and_keep_the_rest(url, published):
    from editgen.pipeline.redact import has_redaction, redact_url

    assert redact_url(url) == published and redact_url(published) == published
    assert has_redaction(published) and not has_redaction(url)


@pytest.mark.parametrize("url", [
    "https://h/a.png?w=64&keyword=cat&max_tokens=5&page=2", "http://h/a@b/c.png", "caps.jsonl", "https://h/p?",
    "https://h/a.png?token=", "https://h/x.png?q=***",
])
def test_urls_without_credentials_are_unchanged(url):
    from editgen.pipeline.redact import has_redaction, redact_url

    assert redact_url(url) == url and not has_redaction(url)


def test_error_text_and_log_records_lose_credentials(tmp_path, monkeypatch):
    """requests/fsspec errors print a URL's path and query, or the whole URL; a known secret value (the
    environment's) is blanked wherever it appears; every log record is redacted when it is made."""
    import logging

    from editgen.pipeline.logs import RunLog
    from editgen.pipeline.redact import redact_text

    text = ("HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: /x.png?sig=abc&w=1 "
            "(Caused by NewConnectionError); also https://u:pw@h/y?token=t9")
    assert redact_text(text) == ("HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: "
                                 "/x.png?sig=***&w=1 (Caused by NewConnectionError); also https://***@h/y?token=***")
    monkeypatch.setenv("EDITGEN_TEST_SECRET_TOKEN", "env-secret-61c2f0")
    runlog = RunLog("INFO", console=False)
    try:
        raise OSError("cannot open s3://AKIA1:wJalr-secret@b/k")
    except OSError:
        logging.getLogger("editgen").exception("reading %s with %s", "https://h/a?api_key=k-77", "env-secret-61c2f0")
    runlog.file_handler.flush()
    logged = Path(runlog._tmp).read_text()
    assert "https://h/a?api_key=*** with ***" in logged and "s3://***@b/k" in logged
    assert not any(s in logged for s in ("k-77", "env-secret-61c2f0", "wJalr-secret"))


def test_openai_base_url_key_is_not_in_config_yaml():
    from editgen.pipeline.config import build_config, config_to_yaml

    cfg = build_config(overrides=["instruct.openai.base_url=https://llm.example/v1?api_key=sk-q-8812&org=o"])
    text = config_to_yaml(cfg)
    assert "sk-q-8812" not in text and "https://llm.example/v1?api_key=***&org=o" in text


def test_shard_metadata_never_carries_credentials():
    """Defence in depth: whatever an upstream partition holds, a shard's json has no URL credentials."""
    from editgen.output.shard_writer import sample_metadata

    meta = sample_metadata({"url": "http://u:pw1@h/a.png?token=t2", "source": "s3://K:sk3@b/caps.jsonl",
                            "fetch_error": "404 Client Error for url: http://h/a.png?sig=s4",
                            "caption": "see http://u:not-a-secret@h/ (data: kept as written)"})
    assert not any(s in json.dumps(meta) for s in ("pw1", "t2", "sk3", "s4"))
    assert meta["caption"] == "see http://u:not-a-secret@h/ (data: kept as written)"


# ---- fetch reads credentials back from the input ---------------------------------------------------------
def test_fetch_reads_redacted_urls_back_from_the_input(tmp_path):
    """Rows whose URL lost its credentials get the input row's URL; a row that no longer matches its input
    row, or an input no longer named, is one clear error."""
    import pyarrow as pa

    from editgen.pipeline.config import build_config
    from editgen.pipeline.errors import InputError
    from editgen.pipeline.redact import redact_url
    from editgen.sources.secret_urls import real_urls

    real = ["http://u:pw@h/0.png", "http://h/1.png", "http://h/2.png?token=t", "http://h/3.png?sig=s"]
    data = tmp_path / "caps.jsonl"
    data.write_text("".join(json.dumps({"TEXT": f"caption {i}", "URL": u}) + "\n" for i, u in enumerate(real)))
    cfg = build_config(overrides=[f"ingest.input=[{data}]"]).ingest
    table = pa.table({"source": ["caps.jsonl"] * 3, "source_row": [0, 2, 3],
                      "url": [redact_url(real[i]) for i in (0, 2, 3)]})
    assert real_urls(table, cfg) == [real[0], real[2], real[3]]
    data.write_text(data.read_text().replace("sig=s", "sig=s&other=1"))
    with pytest.raises(InputError, match=r"caps.jsonl: row 3 changed since ingest"):
        real_urls(table, cfg)
    elsewhere = build_config(overrides=[f"ingest.input=[{DEMO}]"]).ingest
    with pytest.raises(InputError, match="ingest.input no longer names it"):
        real_urls(table, elsewhere)


# ---- workers get secrets in memory -----------------------------------------------------------------------
def test_secret_variables_never_enter_a_runtime_env(monkeypatch):
    from editgen.pipeline.ray_runtime import with_worker_env, worker_env

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
    from editgen.pipeline.ray_runtime import remote_task

    monkeypatch.setenv("EDITGEN_TEST_WORKER_TOKEN", "wt-4411aa")
    task = remote_task(os.environ.get, num_cpus=0.1)
    assert ray_session.get(task.remote("EDITGEN_TEST_WORKER_TOKEN")) == "wt-4411aa"
    monkeypatch.delenv("EDITGEN_TEST_WORKER_TOKEN")
    later = remote_task(os.environ.get, num_cpus=0.1)
    assert ray_session.get([later.remote("EDITGEN_TEST_WORKER_TOKEN") for _ in range(4)]) == [None] * 4
