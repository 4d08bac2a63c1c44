"""A requested mix of edit types (issue 22 item 2): each row's type is drawn from `instruct.type_weights` by a
hash of its id and the seed, the request asks for it, an answer of another type is kept as a fallback, and
the partition's metrics count rows asked and answers kept per type (what status shows)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editgen.pipeline.errors import ConfigError
from editgen.prompts.taxonomy import NAMES, assign_type
from editgen.stages.instruct import TYPE_FALLBACK, TYPE_KEPT, TYPE_REQUESTED, InstructStage
from tests.llm_fixtures import CAPTIONS, ScriptedBackend, caption_batch, edit_json, instruct_config
from tests.support import SHARED_LAION

WEIGHTS = {"remove_object": 3.0, "colour": 2.0, "style_medium": 2.0, "add_object": 1.0, "count_quantity": 1.0,
           "global_tone_lighting": 1.0, "text_in_image": 0.0}


def _answer(req, call):
    """The type asked for, except that colour requests are answered with a scene edit (a fallback)."""
    if req.edit_type == "colour":
        return edit_json("make it night", req.caption + " at night", "weather_season_time")
    if req.row_id.endswith("-0003"):
        return edit_json("make it night", req.caption + " at night", None)  # no type: dropped
    return edit_json("edit it", req.caption + " with a tiny red bird", "add_object") if req.edit_type == "add_object" \
        else edit_json("edit it", req.caption + " in thick fog", "weather_season_time")


def test_rows_are_asked_for_their_type_and_fallbacks_are_recorded() -> None:
    weights = {"colour": 1.0, "add_object": 1.0}
    stage = InstructStage(instruct_config(type_weights=weights, seed=3, fewshot_k=4))
    backend = ScriptedBackend(_answer)
    stage.setup(backend=backend, blocked_terms=[])
    batch = caption_batch([*CAPTIONS, None])
    out = stage.process_partition(batch).to_pylist()
    ids = batch.column("id").to_pylist()
    want = [assign_type(i, 3, weights) for i in ids[:-1]] + [None]
    assert [r["type_requested"] for r in out] == want  # on dropped rows too; none without a caption
    assert {"colour", "add_object"} == set(want[:-1])
    for req in backend.calls[0]:
        assert req.edit_type == assign_type(req.row_id, 3, weights)
        assert req.messages[-1]["content"].endswith(f"\nEdit type: {req.edit_type}")
        shots = [m["content"] for m in req.messages[1:-1:2]]  # every example turn names its own type
        assert all("\nEdit type: " in m for m in shots)
    for r in out:
        if r["id"].endswith("-0003"):
            assert r["drop_reason"] == "llm_type_missing" and r["edit_type"] is None and r["type_fallback"] is None
        elif r["type_requested"] == "colour":
            assert r["status"] == "kept" and r["edit_type"] == "weather_season_time" and r["type_fallback"] is True
        elif r["type_requested"] == "add_object":
            assert r["status"] == "kept" and r["edit_type"] == "add_object" and r["type_fallback"] is False
    m = stage.metrics
    kept = [r for r in out if r["status"] == "kept"]
    assert {k: v for k, v in m.items() if k.startswith(TYPE_REQUESTED)} == {
        TYPE_REQUESTED + t: float(n) for t, n in Counter(want[:-1]).items()}
    assert {k: v for k, v in m.items() if k.startswith(TYPE_KEPT)} == {
        TYPE_KEPT + t: float(n) for t, n in Counter(r["edit_type"] for r in kept).items()}
    assert m[TYPE_FALLBACK] == sum(r["type_fallback"] for r in kept)


def test_without_weights_the_model_chooses() -> None:
    stage = InstructStage(instruct_config(fewshot_k=2))
    backend = ScriptedBackend(_answer)
    stage.setup(backend=backend, blocked_terms=[])
    out = stage.process_partition(caption_batch(CAPTIONS[:3])).to_pylist()
    assert all(req.edit_type is None and "Edit type:" not in req.messages[-1]["content"] for req in backend.calls[0])
    assert all(r["type_requested"] is None and r["type_fallback"] is None for r in out)
    assert [r["edit_type"] for r in out] == ["weather_season_time"] * 3
    assert not any(k.startswith(TYPE_REQUESTED) for k in stage.metrics)


def _laion_batch() -> pa.Table:
    if not SHARED_LAION.exists():
        pytest.skip(f"{SHARED_LAION} not present")
    caps = [c for c in pq.read_table(SHARED_LAION, columns=["TEXT"]).column("TEXT").to_pylist() if c]
    return caption_batch(caps, prefix="laion")


def test_assignment_is_reproducible_and_matches_the_weights_on_real_captions() -> None:
    """1000 real LAION captions through the template backend: each row's type depends on its id and the seed
    only (not on partitions or order), the asked shares lie within 4 sigma of the weights for every type,
    a zero weight is never drawn, and every kept answer's type obeys its caption rule (validation)."""
    batch = _laion_batch()
    n = batch.num_rows
    stage = InstructStage(instruct_config(backend="template", type_weights=WEIGHTS))
    stage.setup(blocked_terms=[])
    out = stage.process_partition(batch)
    asked = dict(zip(out.column("id").to_pylist(), out.column("type_requested").to_pylist(), strict=True))
    # Another partitioning and order: three shuffled pieces give every row the same type.
    order = list(range(n))
    random.Random(1).shuffle(order)
    again = {}
    for piece in (order[: n // 3], order[n // 3 : n // 2], order[n // 2 :]):
        part = stage.process_partition(batch.take(piece))
        again.update(zip(part.column("id").to_pylist(), part.column("type_requested").to_pylist(), strict=True))
    assert again == asked
    counts = Counter(asked.values())
    total = sum(WEIGHTS.values())
    for name in NAMES:
        p = WEIGHTS.get(name, 0.0) / total
        assert abs(counts[name] - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (name, counts[name], n * p)
    assert counts["text_in_image"] == 0
    other_seed = InstructStage(instruct_config(backend="template", type_weights=WEIGHTS, seed=1))
    other_seed.setup(blocked_terms=[])
    moved = other_seed.process_partition(batch.slice(0, 200)).column("type_requested").to_pylist()
    assert sum(a != asked[i] for a, i in zip(moved, batch.column("id").to_pylist()[:200], strict=True)) > 50
    rows = out.to_pylist()
    kept = [r for r in rows if r["status"] == "kept"]
    assert len(kept) > 0.95 * n
    for r in kept:
        assert r["edit_type"] in NAMES and r["type_fallback"] == (r["edit_type"] != r["type_requested"])
    achieved = Counter(r["edit_type"] for r in kept)
    # The template makes a style, an addition or a tone edit of any caption: those requests are met.
    for name in ("style_medium", "add_object", "global_tone_lighting"):
        assert achieved[name] >= counts[name] * 0.95, (name, achieved[name], counts[name])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{sparkle: 1}", "instruct.type_weights: unknown edit type 'sparkle'"),
        ("{colour: -1}", "instruct.type_weights.colour"),
        ("{colour: 0, remove_object: 0}", "at least one weight must be above 0"),
        ("[colour]", "instruct.type_weights"),
    ],
)
def test_bad_weights_are_one_config_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        instruct_config(f"instruct.type_weights={value}")


def test_weights_are_part_of_the_stage_hash() -> None:
    from editgen.pipeline.config import section_hash

    mixes = ((), ("instruct.type_weights={colour: 1}",), ("instruct.type_weights={colour: 2, add_object: 1}",))
    hashes = {section_hash(instruct_config(*o), "instruct", "up", InstructStage.version) for o in mixes}
    assert len(hashes) == 3
