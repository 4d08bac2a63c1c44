"""Security properties, checked on the code and by behaviour:

* models load only from safetensors (every `from_pretrained` says so; a folder holding only a pickled
  `.bin` fails to load without ever unpickling it; CLIP and vLLM refuse pickles too);
* nothing from the input or OUT is unpickled (no pickle/torch.load/yaml.load/... in the code);
* shard member names and every path under OUT stay inside OUT, whatever ids, records or manifests say;
* no `shell=True` (nor os.system/os.popen) anywhere; ruff's S602 guards it too;
* the preview page escapes all text and links only to http(s);
* API keys never reach logs or OUT/config.yaml.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from editgen.output.manifest import MANIFEST
from editgen.output.shard_writer import sample_key, write_dataset
from editgen.pipeline.config import build_config, config_to_yaml
from editgen.pipeline.errors import ConfigError, UnsafePathError
from editgen.pipeline.records import check_partitions, write_record
from editgen.pipeline.stage import PlanContext, part_name
from editgen.pipeline.storage import Storage, sha256_bytes
from editgen.tiny.synthetic import filter_table, render_table
from tests.support import ROOT

CODE_DIRS = ("pipeline", "stages", "output", "p2p", "tiny", "llm", "filters", "prompts", "sources", "cli", "bench",
             "probe")


def python_files(dirs: tuple[str, ...] = CODE_DIRS) -> list[Path]:
    files = [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 30
    return files


def calls(path: Path) -> list[tuple[ast.Call, str]]:
    """(call node, dotted callee) for every call in a file."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append((node, ast.unparse(node.func)))
    return out


def _enclosing_source(path: Path, call: ast.Call) -> str:
    tree = ast.parse(path.read_text("utf-8"))
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.lineno <= call.lineno <= (
            node.end_lineno or node.lineno
        ):
            best = node
    return ast.get_source_segment(path.read_text("utf-8"), best) if best else ""


# ---- safetensors only ---------------------------------------------------------------------------------
def test_every_model_from_pretrained_uses_safetensors():
    """Tokenizers and image processors load JSON/text files; every other from_pretrained must pass
    use_safetensors=True (directly or through a kwargs dict built in the same function)."""
    checked = 0
    for path in python_files():
        for call, callee in calls(path):
            if not callee.endswith(".from_pretrained"):
                continue
            checked += 1
            if re.search(r"(Tokenizer(Fast)?|ImageProcessor)\.from_pretrained$", callee):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            if isinstance(kw.get("use_safetensors"), ast.Constant) and kw["use_safetensors"].value is True:
                continue
            passes_kwargs = any(k.arg is None for k in call.keywords)
            src = _enclosing_source(path, call)
            assert passes_kwargs and re.search(r"[\"']use_safetensors[\"']\s*:\s*True", src), (
                f"{path.relative_to(ROOT)}:{call.lineno}: {callee} without use_safetensors=True"
            )
    assert checked >= 3


def test_vllm_engine_loads_safetensors_only():
    from editgen.llm.vllm_backend import engine_kwargs

    assert engine_kwargs("m", build_config().instruct.vllm)["load_format"] == "safetensors"


class _Boom:
    """Unpickling this creates a marker directory: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _evil_pickle(path: Path, marker: Path) -> None:
    import torch

    torch.save({"weight": _Boom(marker)}, path)


def test_model_folder_with_only_a_pickle_fails_to_load_and_never_unpickles(tmp_path):
    import shutil

    from editgen.p2p.generate import load_pipeline
    from editgen.tiny.sd import build_tiny_sd

    model = tmp_path / "model"
    shutil.copytree(build_tiny_sd(), model)
    weights = list((model / "unet").glob("*.safetensors"))
    assert weights
    for w in weights:
        w.unlink()
    marker = tmp_path / "PWNED"
    _evil_pickle(model / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises((OSError, ValueError, EnvironmentError)):
        load_pipeline(model, "cpu", "float32")
    assert not marker.exists(), "the pickled .bin was unpickled"


def test_clip_refuses_pickled_weights(tmp_path):
    from editgen.filters.pairs.clip_score import ClipScorer, ClipSpec
    from editgen.stages.filter import FilterStage

    marker = tmp_path / "PWNED"
    evil = tmp_path / "clip.bin"
    _evil_pickle(evil, marker)
    for model in ("tiny-clip", "ViT-B-32"):
        cfg = build_config(extra={"filter": {"clip_model": model, "clip_pretrained": str(evil)}})
        with pytest.raises(ConfigError, match="only .safetensors weights"):
            FilterStage(cfg).preflight()
    with pytest.raises(ValueError, match="only .safetensors weights"):
        ClipScorer(ClipSpec("tiny-clip", str(evil), "cpu", "fp32"))
    (tmp_path / "dir").mkdir()
    _evil_pickle(tmp_path / "dir" / "open_clip_pytorch_model.bin", marker)
    cfg = build_config(extra={"filter": {"clip_model": f"local-dir:{tmp_path / 'dir'}"}})
    with pytest.raises(ConfigError, match="no .safetensors weights"):
        FilterStage(cfg).preflight()
    assert not marker.exists()


# ---- nothing unpickled --------------------------------------------------------------------------------
#: Callees that deserialize executable objects from bytes (or run code), with the argument that makes
#: numpy.load safe.
UNSAFE_LOADERS = re.compile(
    r"(^|\.)(pickle|cPickle|cloudpickle|dill|joblib|marshal|shelve)\.(load|loads|open|Unpickler)$"
    r"|^torch\.load$|(^|\.)read_pickle$|^yaml\.(load|unsafe_load|full_load|load_all)$|^(eval|exec)$"
)


def test_no_unpickling_or_eval_in_the_code():
    found = []
    for path in python_files():
        text = path.read_text("utf-8")
        if re.search(r"^\s*(import|from)\s+(pickle|cPickle|cloudpickle|dill|marshal|shelve)\b", text, re.M):
            found.append(f"{path.relative_to(ROOT)}: imports a pickle module")
        for call, callee in calls(path):
            if UNSAFE_LOADERS.search(callee):
                found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {callee}")
            if callee in ("np.load", "numpy.load"):
                kw = {k.arg: k.value for k in call.keywords}
                if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                    found.append(f"{path.relative_to(ROOT)}:{call.lineno}: np.load(allow_pickle=True)")
    assert found == []


# ---- paths stay inside OUT ----------------------------------------------------------------------------
HOSTILE_IDS = ["../../etc/passwd", "/abs/path", "a.b", "..", "", ".", "ünïcødé 日本", "a/b\\c", "x\x00y",
               "line\nbreak", "__key__", "-c0000", "x" * 500, "C:\\Windows\\system32"]


def test_hostile_ids_give_flat_member_names_that_extract_inside(tmp_path):
    table = filter_table(render_table(len(HOSTILE_IDS), 1, 16, seed=1), seed=1, keep_fraction=1.1)
    table = table.set_column(0, "id", pa.array(HOSTILE_IDS))
    storage = Storage(str(tmp_path / "out"))
    summary = write_dataset(storage, table.to_pylist(), samples_per_shard=100)
    assert summary["rows_out"] == len(HOSTILE_IDS) and summary["dropped"] == {}
    keys = [sample_key(i, 0) for i in HOSTILE_IDS]
    assert len(set(keys)) == len(keys)
    manifest = json.loads(storage.read_text(MANIFEST))
    target = tmp_path / "extract"
    for entry in manifest["shards"]:
        with tarfile.open(tmp_path / "out" / entry["name"]) as tar:
            for m in tar.getmembers():
                pattern = r"[A-Za-z0-9_-]+-c\d{4}\.((input|edited)\.(png|jpg)|mask\.png|txt|json)"
                assert re.fullmatch(pattern, m.name), m.name
                assert m.isfile() and ".." not in m.name and "/" not in m.name
            tar.extractall(target, filter="data")  # the strict filter would refuse anything leaving target
    assert sorted(p.parent for p in target.rglob("*")) == [target] * len(list(target.rglob("*")))
    metas = [json.loads(p.read_text()) for p in target.glob("*.json")]
    assert sorted(m["id"] for m in metas) == sorted(HOSTILE_IDS)  # ids survive, in the JSON only


@pytest.mark.parametrize("parts", [("..", "x"), ("/etc/passwd",), ("a/../../b",), ("shards", "../../x"),
                                   ("a\x00b",), ("../",)])
def test_storage_refuses_paths_outside_out(tmp_path, parts):
    storage = Storage(str(tmp_path / "out"))
    with pytest.raises(UnsafePathError):
        storage.path(*parts)
    with pytest.raises(UnsafePathError):
        storage.write_bytes(b"x", *parts)
    with pytest.raises(UnsafePathError):
        storage.remove(*parts)
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


def test_tampered_record_or_manifest_never_reaches_outside_out(tmp_path):
    """A completion record or manifest naming '../..' is treated as damage (recompute), not followed."""
    from editgen.cli.validate import validate
    from editgen.stages.shard import ShardStage

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    out = tmp_path / "out"
    storage = Storage(str(out))
    rec = {"partition": 0, "file": "../../secret.txt", "stage_hash": "h", "input_key": "k",
           "sha256": sha256_bytes(b"not yours"), "bytes": 9}
    write_record(storage, "render", rec)
    assert check_partitions(storage, "render", {0: "k"}, "h") == {0: "file altered or truncated"}
    manifest = {"shards": [{"name": "../../secret.txt", "bytes": 9, "sha256": rec["sha256"], "samples": 1}],
                "samples": 1, "bytes": 9}
    text = json.dumps(manifest).encode()
    storage.write_bytes(text, MANIFEST)
    cfg = build_config()
    ctx = PlanContext(cfg, storage, [], "filter")
    assert ShardStage(cfg).global_output_valid(ctx, {"sha256": sha256_bytes(text)}) is False
    problems = validate(str(out))
    assert any("unsafe shard name" in p for p in problems), problems


def test_shard_prefix_cannot_name_a_path():
    with pytest.raises(ConfigError, match="shard.prefix"):
        build_config(overrides=["shard.prefix=../../x"])


# ---- no shell ------------------------------------------------------------------------------------------
def test_no_shell_true_anywhere():
    found = []
    for path in python_files((*CODE_DIRS, "tests")):
        for call, callee in calls(path):
            for k in call.keywords:
                if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                    found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {callee}(shell=...)")
            if callee in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {callee}")
    assert found == []
    select = re.search(r"\[tool\.ruff\.lint\][^\[]*?select\s*=\s*\[([^\]]*)\]",
                       (ROOT / "pyproject.toml").read_text()).group(1)
    assert {"S602", "S604", "S605"} <= set(re.findall(r'"(\w+)"', select))


# ---- preview escapes everything ------------------------------------------------------------------------
def test_preview_escapes_every_field_and_links_only_http(tmp_path):
    import argparse

    from editgen.cli import preview

    evil = "<script>document.body.dataset.pwned=1</script>"
    t = filter_table(render_table(3, 2, 16, seed=3), seed=3, keep_fraction=0.5)
    n = t.num_rows
    for col, value in (("caption", evil), ("edited_caption", f"{evil}\"'><img src=x onerror=alert(1)>"),
                       ("instruction", evil), ("edit_kind", evil), ("id", f"id{evil}")):
        t = t.set_column(t.column_names.index(col), col, pa.array([value] * n))
    urls = ["javascript:alert(document.cookie)", " JavaScript:alert(1)", "data:text/html,<script>x</script>",
            "https://ok.example/x.jpg\" onclick=\"alert(1)"]
    t = t.set_column(t.column_names.index("url"), "url", pa.array([urls[i % len(urls)] for i in range(n)]))
    reasons = [r if r is None else evil for r in t["drop_reason"].to_pylist()]
    t = t.set_column(t.column_names.index("drop_reason"), "drop_reason", pa.array(reasons, pa.string()))
    storage = Storage(str(tmp_path))
    sha, nbytes = storage.write_table(t, "filter", part_name(0))
    write_record(storage, "filter", {"partition": 0, "rows_in": n, "rows_out": 1, "dropped": {evil: n - 1},
                                     "sha256": sha, "bytes": nbytes})
    parser = argparse.ArgumentParser()
    preview.add_arguments(parser)
    assert preview.main(parser.parse_args([str(tmp_path), "--limit", "10", "--rejected", "10"])) == 0
    page = (tmp_path / "preview.html").read_text()
    assert evil not in page and "<img src=x" not in page and "&lt;script&gt;document.body" in page
    assert "javascript:" not in page.lower() and "data:text/html" not in page
    assert 'onclick="alert' not in page
    assert 'href="https://ok.example/x.jpg&quot; onclick=&quot;alert(1)"' in page  # one inert attribute
    assert page.count("<script>") == 1  # the page's own image-load check, nothing else
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (tmp_path / src).resolve().is_relative_to(tmp_path.resolve())


# ---- API keys stay out of OUT --------------------------------------------------------------------------
def test_api_key_never_reaches_out(ray_session, tmp_path, monkeypatch):
    """The openai backend through the real runner with its key in an env var (forwarded to the Ray
    actors): the server gets the key, OUT (config.yaml, logs, partitions, records) never holds it."""
    from editgen.pipeline.runner import run_pipeline
    from tests.llm_fixtures import BadServer

    key = "sk-editgen-test-8f2a61c0d9"
    monkeypatch.setenv("EDITGEN_TEST_OPENAI_KEY", key)
    out = tmp_path / "out"
    with BadServer("ok") as srv:
        cfg = build_config(
            profile="tiny",
            overrides=[f"ingest.input=[{ROOT / 'examples' / 'demo_captions.jsonl'}]", "ingest.limit=6",
                       "ingest.rows_per_partition=3", "instruct.backend=openai", "instruct.model=served",
                       f"instruct.openai.base_url={srv.url}", "instruct.openai.api_key_env=EDITGEN_TEST_OPENAI_KEY",
                       "instruct.openai.max_retries=0", "run.progress=false", "run.log_level=DEBUG"],
        )
        result = run_pipeline(cfg, str(out), to_stage="instruct")
    assert result.stages[-1].rows_out > 0
    assert srv.auth and set(srv.auth) == {f"Bearer {key}"}
    leaks = [str(p) for p in out.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaks == []
    assert "api_key_env: EDITGEN_TEST_OPENAI_KEY" in (out / "config.yaml").read_text()


def test_secret_config_values_are_redacted():
    cfg = build_config(overrides=[
        "instruct.openai.extra_body={api_key: sk-body-1, top_k: 5}",
        "instruct.openai.base_url=http://user:pa55w0rd@llm.internal:8000/v1",
        "ray.runtime_env={env_vars: {HF_TOKEN: hf_tok_2, AWS_SECRET_ACCESS_KEY: aws_3, PLAIN: visible}}",
        "ingest.input=[s3://AKIA4:s3cr3t@bucket/captions.parquet]",
    ])
    text = config_to_yaml(cfg)
    for secret in ("sk-body-1", "pa55w0rd", "hf_tok_2", "aws_3", "s3cr3t", "AKIA4"):
        assert secret not in text, secret
    assert "PLAIN: visible" in text and "top_k: 5" in text
    assert "max_tokens: 256" in text, "non-secret settings that merely contain 'token' stay visible"
    assert "api_key_env: OPENAI_API_KEY" in text, "the NAME of the key's env var is not a secret"
    assert "http://***@llm.internal:8000/v1" in text


def test_openai_backend_repr_and_errors_hide_the_key(monkeypatch):
    from editgen.llm import generation_settings
    from editgen.llm.openai_backend import OpenAIBackend
    from tests.llm_fixtures import BadServer

    monkeypatch.setenv("EDITGEN_TEST_KEY2", "sk-hidden-42")
    with BadServer("400") as srv:
        cfg = build_config(extra={"instruct": {"openai": {"base_url": srv.url, "api_key_env": "EDITGEN_TEST_KEY2",
                                                          "max_retries": 0}}})
        backend = OpenAIBackend("m", generation_settings(cfg.instruct), cfg.instruct.openai)
        from editgen.llm.base import LLMRequest

        buf = io.StringIO()
        import logging

        handler = logging.StreamHandler(buf)
        logging.getLogger("editgen.llm").addHandler(handler)
        logging.getLogger("editgen.llm").setLevel(logging.DEBUG)
        try:
            [res] = backend.generate([LLMRequest("r", "a cat", [{"role": "user", "content": "x"}], seed=1)])
        finally:
            logging.getLogger("editgen.llm").removeHandler(handler)
            backend.close()
    assert res.error and "sk-hidden-42" not in repr(backend) and "sk-hidden-42" not in buf.getvalue()
    assert buf.getvalue(), "the rejection was logged"
