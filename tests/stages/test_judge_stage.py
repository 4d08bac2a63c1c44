"""The judge stage's bookkeeping (issue 23 items 2, 3), its backend scripted: every candidate gets three scores
with reasons or a named drop, malformed answers are re-asked with new seeds and then dropped, the thresholds
and top-k on the combined score follow the config, the request carries both images, image bytes never reach
the logs, and the stage is in the graph only when enabled. The real engine: tests/llm/test_vlm_vllm.py."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pytest

from editgen.filters.pairs.judge_select import NOT_TOP_K, combined, top_k
from editgen.llm.base import LLMResult
from editgen.llm.judge_parse import UNPARSEABLE, parse_judgement
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.registry import stage_names
from editgen.pipeline.runner import stage_hashes
from editgen.stages.judge import BAD_IMAGE, JudgeStage
from editgen.tiny.synthetic import encode
from tests.llm_fixtures import ScriptedBackend

#: The default thresholds (the tiny profile sets them to 0: its judge is a random model).
DEFAULT_MINIMA = ("judge.min_instruction=6", "judge.min_preservation=5", "judge.min_quality=5")


def answer(i: int, p: int = 8, q: int = 7) -> str:
    return json.dumps({"instruction": i, "instruction_reason": "the car is blue now", "preservation": p,
                       "preservation_reason": "the street is unchanged", "quality": q,
                       "quality_reason": "clean, no artifacts"})


def rows(n_pairs: int = 2, candidates: int = 3) -> pa.Table:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for p in range(n_pairs):
        for c in range(candidates):
            img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            out.append({"id": f"pair{p}", "candidate": c, "instruction": "make the car blue",
                        "input_image": encode(img), "edited_image": encode(255 - img),
                        "sim_direction": 0.1 * (c + 1), "sim_image": 0.8})
    return pa.Table.from_pylist(out)


def judged(script, *overrides: str, table: pa.Table | None = None) -> tuple[list[dict], ScriptedBackend, JudgeStage]:
    stage = JudgeStage(build_config(profile="tiny", overrides=["judge.enabled=true", *overrides]))
    backend = ScriptedBackend(script)
    stage.setup(backend=backend)
    return stage.process_partition(rows() if table is None else table).to_pylist(), backend, stage


def test_every_candidate_gets_scores_reasons_and_a_combined_score():
    scores = {("pair0", 0): 9, ("pair0", 1): 5, ("pair0", 2): 8, ("pair1", 0): 7, ("pair1", 1): 7, ("pair1", 2): 2}

    def script(req, call):
        pid, c = req.row_id.split("#")
        return answer(scores[(pid, int(c))])

    out, backend, stage = judged(script, "judge.top_k=1", *DEFAULT_MINIMA)
    by = {(r["id"], r["candidate"]): r for r in out}
    assert by[("pair0", 1)]["drop_reason"] == "judge_below_instruction"  # 5 < min_instruction 6
    assert by[("pair1", 2)]["drop_reason"] == "judge_below_instruction"
    assert by[("pair0", 0)]["status"] == "kept" and by[("pair0", 2)]["drop_reason"] == NOT_TOP_K
    # pair1: candidates 0 and 1 tie on the judge's scores: the lower candidate stays
    assert by[("pair1", 0)]["status"] == "kept" and by[("pair1", 1)]["drop_reason"] == NOT_TOP_K
    r = by[("pair0", 0)]
    assert (r["judge_instruction"], r["judge_preservation"], r["judge_quality"]) == (9, 8, 7)
    assert r["judge_instruction_reason"] == "the car is blue now" and r["judge_attempts"] == 1
    assert r["judge_score"] == pytest.approx((0.9 + 0.8 + 0.7) / 3) and r["judge_model"] == stage.settings.model
    assert len(backend.calls) == 1 and stage.metrics["requests"] == 6 and stage.metrics["generated_tokens"] == 42
    content = backend.calls[0][0].messages[1]["content"]
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls) and urls[0] != urls[1]


def test_malformed_answers_are_reasked_with_new_seeds_then_dropped(caplog):
    def script(req, call):
        if req.row_id.startswith("pair0#0"):
            return "the edit looks fine"  # never a judgement
        if req.row_id.startswith("pair0#1") and call == 0:
            return json.dumps({"instruction": 11, "instruction_reason": "x", "preservation": 5,
                               "preservation_reason": "y", "quality": 5, "quality_reason": "z"})  # out of range
        if req.row_id.startswith("pair1#2"):
            return LLMResult(text=None, error="llm_request_failed")
        return answer(8)

    with caplog.at_level(logging.DEBUG):
        out, backend, stage = judged(script, "judge.max_attempts=3")
    by = {(r["id"], r["candidate"]): r for r in out}
    assert by[("pair0", 0)]["drop_reason"] == UNPARSEABLE and by[("pair0", 0)]["judge_attempts"] == 3
    assert by[("pair0", 1)]["status"] == "kept" and by[("pair0", 1)]["judge_attempts"] == 2
    assert by[("pair1", 2)]["drop_reason"] == "llm_request_failed"
    seeds = [req.seed for call in backend.calls for req in call if req.row_id == "pair0#0"]
    assert len(seeds) == 3 == len(set(seeds)) and stage.metrics["retries"] == 3
    assert "base64" not in caplog.text and "iVBOR" not in caplog.text  # no image bytes in any log line


def test_undecodable_images_are_dropped_without_a_request():
    table = rows(1, 2)
    table = table.set_column(table.schema.get_field_index("edited_image"), "edited_image",
                             pa.array([b"not an image", table["edited_image"][1].as_py()], pa.binary()))
    out, backend, _ = judged(lambda req, call: answer(9), table=table)
    assert [r["drop_reason"] for r in out] == [BAD_IMAGE, None]
    assert [req.row_id for call in backend.calls for req in call] == ["pair0#1"]


def test_parse_is_tolerant_of_form_and_strict_on_content():
    ok = parse_judgement("Here you go:\n```json\n" + answer(7).replace("7", "7.0") + "\n```")
    assert ok is not None and ok.scores == {"instruction": 7, "preservation": 8, "quality": 7.0}
    assert parse_judgement(answer(7).replace("the car is blue now", "")) is None  # an empty reason
    assert parse_judgement('{"instruction": "7", "instruction_reason": "a", "preservation": 8, '
                           '"preservation_reason": "b", "quality": true, "quality_reason": "c"}') is None
    assert parse_judgement(None) is None and parse_judgement("no json") is None


def test_combined_score_and_top_k_rules():
    assert combined({"instruction": 10, "sim_direction": 0.2}, {"instruction": 1, "sim_direction": 1}) == 0.6
    assert combined({"instruction": 10}, {"instruction": 1, "sim_direction": 1}) != combined(
        {"instruction": 10, "sim_direction": 0.0}, {"instruction": 1, "sim_direction": 1})  # missing: NaN
    keep = top_k(["a", "a", "a", "b"], [0, 1, 2, 0], [0.5, 0.9, 0.9, 0.1], [True, True, True, False], 1)
    assert keep == [False, True, False, False]


def test_the_stage_is_in_the_graph_only_when_enabled_and_checks_its_settings(tmp_path):
    base = build_config(profile="tiny")
    assert "judge" not in stage_names(base)
    on = build_config(profile="tiny", overrides=["judge.enabled=true"])
    assert stage_names(on)[-2:] == ["judge", "shard"]
    before, after = stage_hashes(base), stage_hashes(on)
    assert {k: after[k] for k in before if k != "shard"} == {k: v for k, v in before.items() if k != "shard"}
    with pytest.raises(ConfigError, match="unknown score"):
        build_config(profile="tiny", overrides=["judge.weights={clip: 1}"])
    empty = tmp_path / "rubric.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        JudgeStage(build_config(profile="tiny", overrides=["judge.enabled=true",
                                                           f"judge.rubric_file={empty}"])).preflight()


def test_a_vllm_judge_without_vllm_is_one_line_before_any_work(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("this interpreter has vLLM")
    monkeypatch.delenv("EDITGEN_LLM_PYTHON", raising=False)
    stage = JudgeStage(build_config(profile="tiny", overrides=["judge.enabled=true"]))
    with pytest.raises(ConfigError, match="EDITGEN_LLM_PYTHON"):
        stage.preflight()
    monkeypatch.setenv("EDITGEN_LLM_PYTHON", "/some/llm/venv/bin/python")
    stage.preflight()  # the actors run under that interpreter
