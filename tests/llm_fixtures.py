"""Helpers for the instruct-stage tests: configs, scripted backends, local HTTP servers.

No network: the "bad" OpenAI server and the real vLLM server both listen on 127.0.0.1 at a free port,
serve a bounded number of requests and are stopped by the fixture that started them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from editgen.llm.base import GenerationSettings, LLMBackend, LLMRequest, LLMResult
from editgen.pipeline.config import EditgenConfig, build_config

ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
#: For @pytest.mark.llm tests: they run in the LLM venv (`make test` runs them there).
requires_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed in this interpreter; run `pytest -m llm` in the LLM venv"
)

#: Messy LAION-style captions (as ingest would pass them on).
CAPTIONS = [
    "Cute Tabby Cat Sleeping On Grey Sofa Stock Image",
    "Women's Summer Floral Maxi Dress Red Size M Free Shipping",
    "man riding a bicycle along the beach at sunset - stock photo",
    "Nike Air Max 90 White Running Shoes Men's Size 10",
    "Old Stone Bridge Over River In Autumn Forest",
    "Fresh Green Apple With Water Drops Isolated On White Background",
    "Kate Middleton grey dress",
    "Hardwood maple basketball court floor viewed from above. stock photo",
    "Red Bull Racing team celebrates in Abu Dhabi",
    "Handmade Wooden Toy Truck For Kids",
    "smiling woman drinking coffee in the kitchen",
    "The ancient city of Dresden, Germany.",
]


def instruct_config(*overrides: str, **instruct: Any) -> EditgenConfig:
    """A validated config; `instruct` kwargs set keys of the instruct section (nested dicts allowed)."""
    return build_config(overrides=list(overrides), extra={"instruct": instruct} if instruct else None)


def caption_batch(captions: Sequence[str | None], prefix: str = "row") -> pa.Table:
    """A table shaped like ingest's kept rows."""
    n = len(captions)
    return pa.table(
        {
            "id": [f"{prefix}-{i:04d}" for i in range(n)],
            "source": ["test"] * n,
            "source_row": list(range(n)),
            "url": [f"http://example.invalid/{i}.jpg" for i in range(n)],
            "caption": list(captions),
            "caption_raw": list(captions),
            "language": ["en"] * n,
        }
    )


class ScriptedBackend(LLMBackend):
    """Answers from a function of (request, call number); records every call for assertions."""

    name = "scripted"

    def __init__(self, answer: Any, model: str = "scripted-model") -> None:
        super().__init__(model, GenerationSettings())
        self.answer = answer
        self.calls: list[list[LLMRequest]] = []

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        self.calls.append(list(requests))
        out = []
        for req in requests:
            a = self.answer(req, len(self.calls) - 1)
            out.append(a if isinstance(a, LLMResult) else LLMResult(text=a, generated_tokens=7, prompt_tokens=11))
        return out


def edit_json(instruction: str, edited: str, edit_type: str | None = "weather_season_time") -> str:
    """An answer as the schema has it (the default type fits the scene edits the tests script; None: no type)."""
    answer = {"instruction": instruction, "edited_caption": edited}
    return json.dumps(answer if edit_type is None else {"edit_type": edit_type, **answer})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- a misbehaving OpenAI-compatible server -------------------------------------------------------
class BadServer:
    """Local chat-completions server. `mode` per request: "ok", "500", "garbage", "hang", "400",
    or "flaky:N" (N times 503, then ok). Records request bodies and Authorization headers."""

    def __init__(self, mode: str = "ok", hang_s: float = 3.0) -> None:
        self.mode = mode
        self.hang_s = hang_s
        self.hits = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.hits += 1
                    n = server.hits
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
                    server.respond(self, body, n)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, h: BaseHTTPRequestHandler, body: dict[str, Any], n: int) -> None:
        mode = self.mode
        if mode.startswith("flaky:"):
            mode = "503" if n <= int(mode.split(":")[1]) else "ok"
        if mode == "hang":
            time.sleep(self.hang_s)
            mode = "500"
        if mode in ("500", "503", "400"):
            h.send_response(int(mode))
            h.end_headers()
            h.wfile.write(b'{"error": "nope"}')
            return
        if mode == "garbage":
            payload = b"<html>502 Bad Gateway</html>\x00\xff"
        else:
            caption = body["messages"][-1]["content"].removeprefix("Caption: ").split("\nEdit type: ")[0]
            content = edit_json("make it snow", caption + " in the snow")
            payload = json.dumps(
                {
                    "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 12},
                }
            ).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def __enter__(self) -> BadServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- the tiny model and a real vLLM server ----------------------------------------------------------
def tiny_llm_dir() -> Path:
    """The tiny random Llama + tokenizer, built once into the test cache."""
    from editgen.tiny.llm import build_tiny_llm, default_dir

    return build_tiny_llm(default_dir())


def tiny_vlm_dir() -> Path:
    """The tiny random Idefics3 + tokenizer + processor (tiny/vlm.py), built once into the test cache."""
    from editgen.tiny.vlm import build_tiny_vlm, default_dir

    return build_tiny_vlm(default_dir())


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


@contextlib.contextmanager
def vllm_server(
    model_dir: Path, log_path: Path, start_timeout_s: float = 420.0, name: str = "tiny-llm",
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on 127.0.0.1 at a free port, serving `model_dir` as `name`;
    yields its /v1 base URL."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "4096", "--dtype", "float32", "--enforce-eager", "--seed", "0",
        # vllm-cpu 0.32 crashes on seeded requests whose prefill is chunked (see llm/vllm_backend.py).
        "--no-enable-chunked-prefill",
        *extra_args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vLLM server exited with {proc.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:  # noqa: S310
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM server not up after {start_timeout_s:.0f}s; see {log_path}")
                time.sleep(1.0)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server and the engine processes it spawned (its own session, started above)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    time.sleep(2)  # let the engine processes exit on their own, then make sure none is left
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


class StageHarness:
    """Runs the instruct stage in a Ray actor (vLLM must not start in the pytest process: it spawns
    engine processes), counting the engine calls so tests can check one call per batch."""

    def __init__(self, config_json: str) -> None:
        from editgen.stages.instruct import InstructStage

        self.stage = InstructStage(EditgenConfig.model_validate_json(config_json))
        self.stage.setup(blocked_terms=[])
        self.engine_calls = 0
        backend = self.stage.backend
        llm = getattr(backend, "llm", None)
        if llm is not None:
            chat = llm.chat

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.engine_calls += 1
                return chat(*args, **kwargs)

            llm.chat = counted

    def set_validation(self, config_json: str) -> None:
        """Judge with another config's thresholds, on the same loaded engine."""
        from editgen.llm.validate import Validator

        cfg = EditgenConfig.model_validate_json(config_json)
        self.stage.validator = Validator.from_config(cfg.instruct, blocked_terms=[])

    def run(self, batch: pa.Table) -> tuple[pa.Table, dict[str, float], int]:
        self.stage.metrics = {}
        self.engine_calls = 0
        out = self.stage.process_partition(batch)
        return out, dict(self.stage.metrics), self.engine_calls

    def run_one_batch(self, batch: pa.Table) -> tuple[pa.Table, dict[str, float], int]:
        """The whole table as a single batch, whatever resources.batch_size says."""
        self.stage.metrics = {}
        self.engine_calls = 0
        out = self.stage.process_batch(batch)
        return out, dict(self.stage.metrics), self.engine_calls

    def generate_with(self, config_json: str, captions: list[str]) -> tuple[list[tuple[str | None, str | None]], Any]:
        """Raw (text, finish_reason) answers and the JSON schema under another instruct config (its prompts and
        schema), on this harness's loaded engine (`VllmBackend.with_generation`)."""
        from editgen.llm import generation_settings
        from editgen.prompts.builder import PromptBuilder

        s = EditgenConfig.model_validate_json(config_json).instruct
        gen = generation_settings(s)
        backend = self.stage.backend.with_generation(gen)  # type: ignore[union-attr]
        builder = PromptBuilder(s.seed, s.fewshot_k, s.system_prompt_file, s.fewshot_file, s.inverse)
        results = backend.generate([builder.request(f"row-{i}", c) for i, c in enumerate(captions)])
        return [(r.text, r.finish_reason) for r in results], gen.schema

    def close(self) -> None:
        self.stage.teardown()


class VlmHarness:
    """The vllm backend on a vision-language model in a Ray actor: judge requests through `LLM.chat` (the
    backend's own path) and through `LLM.generate` with a processor-rendered prompt, for the same inputs."""

    def __init__(self, model_dir: str, schema: dict[str, Any], max_tokens: int = 300) -> None:
        from editgen.llm.base import GenerationSettings
        from editgen.llm.vllm_backend import VllmBackend
        from editgen.pipeline.settings.instruct import VllmSettings

        settings = VllmSettings(
            max_model_len=2048, dtype="float32", enforce_eager=True, cpu_kvcache_space_gib=1,
            engine_kwargs={"limit_mm_per_prompt": {"image": 2}},
        )
        self.gen = GenerationSettings(temperature=0.7, max_tokens=max_tokens, schema=schema)
        self.backend = VllmBackend(model_dir, self.gen, settings)
        self.model_dir = model_dir

    def chat(self, inputs: list[Any], rubric: str) -> list[tuple[str | None, str | None, int]]:
        """(text, finish_reason, prompt tokens) per input, through `VllmBackend.generate` (LLM.chat)."""
        from editgen.llm.vlm_request import judge_request

        results = self.backend.generate([judge_request(i, rubric) for i in inputs])
        return [(r.text, r.finish_reason, r.prompt_tokens) for r in results]

    def generate(self, inputs: list[Any], rubric: str) -> list[tuple[str, str | None, list[int], list[int]]]:
        """(text, finish_reason, vLLM's prompt ids, transformers' processor ids) per input, through
        `LLM.generate` with `processor_prompt`'s prompt and decoded images."""
        from transformers import AutoProcessor

        from editgen.llm.vlm_request import processor_prompt

        processor = AutoProcessor.from_pretrained(self.model_dir)
        prompts = [processor_prompt(processor, i, rubric) for i in inputs]
        params = [self.backend._params(i) for i in inputs]  # the backend's sampling and constraint, row seeds
        outs = self.backend.llm.generate(prompts, params, use_tqdm=False)
        answers = []
        for p, out in zip(prompts, outs, strict=True):
            hf = processor(text=[p["prompt"]], images=[p["multi_modal_data"]["image"]])["input_ids"][0]
            comp = out.outputs[0]
            answers.append((comp.text, comp.finish_reason, list(out.prompt_token_ids), list(hf)))
        return answers

    def close(self) -> None:
        self.backend.close()
