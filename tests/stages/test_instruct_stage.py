"""The instruct stage with scripted backends: reasons, retries, one call per batch, accounting."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from editgen.llm.base import REQUEST_FAILED, LLMResult
from editgen.llm.validate import REASONS
from editgen.stages.instruct import OUTPUT_FIELDS, InstructStage
from tests.llm_fixtures import CAPTIONS, ScriptedBackend, caption_batch, edit_json, instruct_config

SPECIAL = {
    0: '```json\n{"edit_type": "weather_season_time", "instruction": "make it snow",'
       ' "edited_caption": "X in the snow",}\n```',  # kept (repaired)
    1: '{"instruction": "", "edited_caption": "X"}',
    2: edit_json("make it nude", "X nude"),
    3: edit_json(" ".join(["word"] * 30), "X in the rain"),
    4: edit_json("nothing", "X"),
    5: edit_json("rewrite", "completely unrelated words about a spaceship landing on mars today"),
}


def answer(req, call):
    """Row 6 unparseable forever, row 7 unparseable once, row 8 fails, others a good edit."""
    i = int(req.row_id.rsplit("-", 1)[1])
    if i in SPECIAL:
        return SPECIAL[i].replace("X", req.caption)
    if i == 6 or (i == 7 and call == 0):
        return '{"instruction": "make it'
    if i == 8:
        return LLMResult(text=None, error=REQUEST_FAILED, retries=4)
    return edit_json("make it night", req.caption + " at night")


def run_stage(batch: pa.Table, backend, **cfg) -> tuple[InstructStage, pa.Table]:
    stage = InstructStage(instruct_config(**cfg))
    stage.setup(backend=backend, blocked_terms=["nude"])
    return stage, stage.process_partition(batch)


def test_every_reason_and_exact_accounting() -> None:
    batch = caption_batch([*CAPTIONS, None])
    backend = ScriptedBackend(answer)
    stage, out = run_stage(batch, backend, max_attempts=3, max_instruction_words=16)
    assert out.num_rows == batch.num_rows
    assert out.column("id").to_pylist() == batch.column("id").to_pylist()
    reasons = out.column("drop_reason").to_pylist()
    assert reasons[:9] == [
        None, "llm_empty_field", "llm_blocklisted", "llm_instruction_too_long", "llm_no_change",
        "llm_rewrites_too_much", "llm_unparseable", None, "llm_request_failed",
    ]
    assert reasons[-1] == "llm_missing_caption"
    assert set(r for r in reasons if r) <= set(REASONS)
    status = Counter(out.column("status").to_pylist())
    assert status["kept"] + status["dropped"] == batch.num_rows
    # Round 1: every row with a caption; rounds 2 and 3: only the unparseable ones, with new seeds.
    assert [len(c) for c in backend.calls] == [len(CAPTIONS), 2, 1]
    assert backend.calls[1][0].seed != backend.calls[0][7].seed
    attempts = out.column("attempts").to_pylist()
    assert attempts[0] == 1 and attempts[6] == 3 and attempts[7] == 2 and attempts[-1] == 0
    m = stage.metrics
    assert m["requests"] == len(CAPTIONS) + 3 and m["retries"] == 3 and m["request_retries"] == 4
    assert m["generated_tokens"] == 7 * (len(CAPTIONS) + 2) and m["llm_seconds"] >= 0


def test_output_columns_kept_and_dropped_rows() -> None:
    batch = caption_batch(CAPTIONS[:10])
    _, out = run_stage(batch, ScriptedBackend(answer))
    for f in OUTPUT_FIELDS:
        assert out.schema.field(f.name).type == f.type
    for c in batch.column_names:  # all input columns are passed through unchanged
        assert out.column(c).equals(batch.column(c))
    rows = out.to_pylist()
    kept = rows[0]
    assert kept["status"] == "kept" and kept["edit_kind"] == "refine"
    assert kept["changed_words"] == ["in", "the", "snow"] and kept["source_words"] == []
    assert kept["llm_backend"] == "scripted" and kept["llm_model"] == "scripted-model"
    assert isinstance(kept["llm_seed"], int) and kept["attempts"] == 1
    assert rows[9]["edit_kind"] == "refine" and rows[9]["edited_caption"].endswith(" at night")
    dropped = rows[1]
    for name in ("instruction", "edited_caption", "edit_kind", "changed_words", "source_words", "target_words"):
        assert dropped[name] is None
    assert dropped["drop_reason"] == "llm_empty_field"


def test_one_backend_call_per_batch() -> None:
    backend = ScriptedBackend(lambda req, call: edit_json("make it night", req.caption + " at night"))
    batch = caption_batch(CAPTIONS * 3)
    stage, out = run_stage(batch, backend, resources={"batch_size": 16})
    assert [len(c) for c in backend.calls] == [16, 16, 4]
    assert Counter(out.column("status").to_pylist()) == {"kept": 36}
    assert stage.metrics["requests"] == 36


def test_empty_batch() -> None:
    _, out = run_stage(caption_batch([]), ScriptedBackend(answer))
    assert out.num_rows == 0 and {"instruction", "status", "drop_reason"} <= set(out.column_names)


def test_template_backend_is_deterministic_and_config_seed_matters() -> None:
    batch = caption_batch(CAPTIONS)
    outs = []
    for seed in (0, 0, 1):
        stage = InstructStage(instruct_config(backend="template", seed=seed))
        stage.setup(blocked_terms=[])
        outs.append(stage.process_batch(batch))
    assert outs[0].equals(outs[1])
    assert outs[0].column("edited_caption") != outs[2].column("edited_caption")
    assert Counter(outs[0].column("status").to_pylist())["kept"] == len(CAPTIONS)
    assert set(outs[0].column("llm_backend").to_pylist()) == {"template"}


def test_prompts_use_row_id_and_seed() -> None:
    backend = ScriptedBackend(lambda req, call: edit_json("make it night", req.caption + " at night"))
    run_stage(caption_batch(CAPTIONS[:3]), backend, seed=5, fewshot_k=3)
    req = backend.calls[0][0]
    assert req.messages[0]["role"] == "system" and len(req.messages) == 1 + 2 * 3 + 1
    assert json.loads(req.messages[2]["content"]).keys() == {"edit_type", "instruction", "edited_caption"}


def test_resources_and_ray_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDITGEN_LLM_PYTHON", raising=False)
    assert InstructStage(instruct_config(backend="template")).resources().num_gpus == 0
    assert InstructStage(instruct_config(backend="openai")).resources().num_gpus == 0
    assert InstructStage(instruct_config()).resources().num_gpus == 1
    tp = InstructStage(instruct_config(vllm={"tensor_parallel_size": 2})).resources()
    assert tp.num_gpus == 2
    assert InstructStage(instruct_config()).ray_options() == {}
    opts = InstructStage(instruct_config(vllm={"python": "/opt/llm/bin/python"})).ray_options()
    assert opts["runtime_env"]["py_executable"] == "/opt/llm/bin/python"
    assert "PYTHONPATH" in opts["runtime_env"]["env_vars"]
    monkeypatch.setenv("EDITGEN_LLM_PYTHON", "/venv-llm/bin/python")
    assert InstructStage(instruct_config()).ray_options()["runtime_env"]["py_executable"] == "/venv-llm/bin/python"
    assert InstructStage(instruct_config(backend="template")).ray_options() == {}


def test_config_rejects_unknown_keys() -> None:
    from editgen.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="instruct.vllm.bogus"):
        instruct_config("instruct.vllm.bogus=1")
    with pytest.raises(ConfigError, match="instruct.backend"):
        instruct_config("instruct.backend=gpt")


def test_vllm_engine_kwargs() -> None:
    from editgen.llm.vllm_backend import engine_dead, engine_kwargs

    vllm = {"tensor_parallel_size": 2, "max_num_seqs": 64, "engine_kwargs": {"quantization": "fp8"}}
    cfg = instruct_config(vllm=vllm)
    kw = engine_kwargs("m", cfg.instruct.vllm)
    assert kw["model"] == "m" and kw["tensor_parallel_size"] == 2 and kw["max_num_seqs"] == 64
    assert kw["distributed_executor_backend"] == "mp" and kw["quantization"] == "fp8"
    assert "enable_chunked_prefill" not in kw
    assert engine_kwargs("m", cfg.instruct.vllm, on_cpu=True)["enable_chunked_prefill"] is False
    override = instruct_config(vllm={"engine_kwargs": {"enable_chunked_prefill": True}}).instruct.vllm
    assert engine_kwargs("m", override, on_cpu=True)["enable_chunked_prefill"] is True

    class EngineDeadError(RuntimeError):
        pass

    assert engine_dead(EngineDeadError("x")) and not engine_dead(ValueError("prompt too long"))


@pytest.mark.parametrize(("cfg", "gpus"), [({}, 1), ({"vllm": {"tensor_parallel_size": 2}}, 2),
                                           ({"backend": "openai"}, 0), ({"resources": {"num_gpus": 0}}, 0)])
def test_gpu_seconds_are_generation_time_on_the_actors_gpus(cfg: dict, gpus: int) -> None:
    """The survival funnel's compute (output/survival.py): a vLLM engine on the actor's GPUs reports its
    generation time times their number; an openai server's GPUs or a CPU engine report none."""
    backend = ScriptedBackend(lambda req, call: edit_json("make it night", req.caption + " at night"))
    stage = InstructStage(instruct_config(**cfg))
    stage.setup(backend=backend, blocked_terms=[])  # the openai config's engine: the scripted one too
    stage.process_partition(caption_batch(CAPTIONS[:3]))
    m = stage.metrics
    assert m["llm_seconds"] > 0 and m["generated_tokens"] >= 0
    if gpus:
        assert m["gpu_seconds"] == pytest.approx(m["llm_seconds"] * gpus)
    else:
        assert "gpu_seconds" not in m
