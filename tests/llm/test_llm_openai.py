"""OpenAI-compatible backend: retries/backoff/timeouts against a misbehaving local server, and the
real thing against vLLM's server running the tiny random Llama (llm-marked)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from editgen.llm import generation_settings
from editgen.llm.base import LLMRequest
from editgen.llm.openai_backend import OpenAIBackend
from editgen.pipeline.config import config_to_yaml
from editgen.prompts.taxonomy import NAMES
from editgen.stages.instruct import InstructStage
from tests.llm_fixtures import (
    CAPTIONS,
    BadServer,
    caption_batch,
    instruct_config,
    requires_vllm,
    tiny_llm_dir,
    vllm_server,
)

FAST = {"timeout_s": 0.5, "max_retries": 2, "backoff_s": 0.01, "backoff_max_s": 0.05, "max_concurrency": 4}


def _stage(url: str, **openai):
    cfg = instruct_config(backend="openai", model="served", openai={"base_url": url, **FAST, **openai})
    stage = InstructStage(cfg)
    stage.setup(blocked_terms=[])
    return stage


@pytest.mark.parametrize("mode", ["500", "garbage", "hang"])
def test_failing_server_drops_rows_after_retries(mode: str) -> None:
    with BadServer(mode, hang_s=1.5) as srv:
        stage = _stage(srv.url)
        batch = caption_batch(CAPTIONS[:4])
        t0 = time.monotonic()
        out = stage.process_batch(batch)
        stage.teardown()
    assert out.num_rows == 4
    assert set(out.column("drop_reason").to_pylist()) == {"llm_request_failed"}
    assert srv.hits == 4 * (FAST["max_retries"] + 1)  # each row tried 1 + max_retries times
    assert stage.metrics["request_retries"] == 4 * FAST["max_retries"]
    assert time.monotonic() - t0 < 20


def test_client_errors_are_not_retried() -> None:
    with BadServer("400") as srv:
        out = _stage(srv.url).process_batch(caption_batch(CAPTIONS[:3]))
    assert srv.hits == 3
    assert set(out.column("drop_reason").to_pylist()) == {"llm_request_failed"}


def test_flaky_server_recovers_with_backoff() -> None:
    with BadServer("flaky:2") as srv:
        stage = _stage(srv.url, max_concurrency=1)
        out = stage.process_batch(caption_batch(CAPTIONS[:4]))
    assert Counter(out.column("status").to_pylist()) == {"kept": 4}
    assert stage.metrics["request_retries"] == 2 and srv.hits == 6
    assert stage.metrics["generated_tokens"] == 4 * 12


def test_request_body_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITGEN_TEST_KEY", "sk-secret-123")
    with BadServer("ok") as srv:
        cfg = instruct_config(
            backend="openai", model="served", temperature=0.3,
            openai={"base_url": srv.url, "api_key_env": "EDITGEN_TEST_KEY", **FAST},
        )
        backend = OpenAIBackend("served", generation_settings(cfg.instruct), cfg.instruct.openai)
        req = LLMRequest("r1", "a cat", [{"role": "user", "content": "Caption: a cat"}], seed=42)
        [res] = backend.generate([req])
        backend.close()
    assert res.error is None and res.text and "a cat in the snow" in res.text
    body = srv.bodies[0]
    assert body["model"] == "served" and body["seed"] == 42 and body["temperature"] == 0.3
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["edit_type", "instruction", "edited_caption"]
    assert schema["properties"]["edit_type"]["enum"] == list(NAMES) and body["response_format"]["json_schema"]["strict"]
    assert srv.auth == ["Bearer sk-secret-123"]
    assert "sk-secret" not in repr(backend) and "sk-secret" not in config_to_yaml(cfg)


@pytest.mark.llm
@requires_vllm
def test_real_vllm_openai_server(tmp_path: Path) -> None:
    model_dir = tiny_llm_dir()
    with vllm_server(model_dir, tmp_path / "server.log") as url:
        batch = caption_batch(CAPTIONS[:8])
        common = {
            "backend": "openai", "model": "tiny-llm", "fewshot_k": 2, "max_tokens": 160,
            "max_instruction_chars": 40, "max_caption_chars": 80, "max_attempts": 2,
            "openai": {"base_url": url, "timeout_s": 120, "max_retries": 1, "max_concurrency": 4},
        }
        strict = InstructStage(instruct_config(**common))
        strict.setup(blocked_terms=[])
        out = strict.process_batch(batch)
        # Relaxed validation: random weights write garbage, but schema-valid garbage must come through.
        relaxed = InstructStage(
            instruct_config(**common, min_similarity=0.0, max_instruction_words=1000)
        )
        relaxed.setup(blocked_terms=[])
        out2 = relaxed.process_batch(batch)
        # Asked for types (issue 22 item 2): each row says which; the answer's type may differ (a fallback).
        weights = {"remove_object": 1.0, "colour": 1.0, "style_medium": 1.0}
        asked = InstructStage(instruct_config(**common, min_similarity=0.0, max_instruction_words=1000,
                                              type_weights=weights))
        asked.setup(blocked_terms=[])
        out3 = asked.process_batch(batch)
        # instruct.inverse (issue 22 item 6): json_schema requires the inverse; the answers carry one.
        inverse = InstructStage(instruct_config(**{**common, "max_tokens": 320}, min_similarity=0.0,
                                                max_instruction_words=1000, inverse=True))
        inverse.setup(blocked_terms=[])
        out4 = inverse.process_batch(batch)
        raw = inverse.backend.generate([inverse.builder.request(f"row-{i}", c) for i, c in enumerate(CAPTIONS[:8])])
        schema = inverse.backend.gen.schema
        strict.teardown()
        relaxed.teardown()
        asked.teardown()
        inverse.teardown()
    assert out.num_rows == out2.num_rows == batch.num_rows
    reasons = Counter(out.column("drop_reason").to_pylist())
    assert "llm_request_failed" not in reasons, reasons
    assert strict.metrics["generated_tokens"] > 0 and strict.metrics["requests"] >= batch.num_rows
    kept = [r for r in out2.to_pylist() if r["status"] == "kept"]
    assert kept, Counter(out2.column("drop_reason").to_pylist())
    for r in kept:
        assert r["llm_backend"] == "openai" and r["llm_model"] == "tiny-llm" and r["edited_caption"]
        assert r["edit_type"] in NAMES  # json_schema's enum: never a type outside the taxonomy
    for out_ in (out, out2, out3):
        assert not {"llm_type_missing", "llm_type_unknown"} & set(out_.column("drop_reason").to_pylist())
    rows3 = out3.to_pylist()
    assert all(r["type_requested"] in weights for r in rows3)
    for r in rows3:
        if r["status"] == "kept":
            assert r["edit_type"] in NAMES and r["type_fallback"] == (r["edit_type"] != r["type_requested"])
    assert sum(v for k, v in asked.metrics.items() if k.startswith("type_requested:")) == batch.num_rows
    import jsonschema

    finished = [json.loads(r.text, strict=False) for r in raw if r.finish_reason == "stop"]  # raw control chars
    assert schema["required"][-1] == "inverse_instruction" and finished, raw
    for answer in finished:
        jsonschema.validate(answer, schema)
    kept4 = [r for r in out4.to_pylist() if r["status"] == "kept"]
    assert all(r["inverse_instruction"] and r["inverse_instruction"] != r["instruction"] for r in kept4)
    assert "inverse_instruction" not in out2.column_names
