"""The per-type counts, the funnel and the quota as functions (issue 22 item 4): counts per type from any stage
output, the funnel lines from summed metrics, caps (n, per type with '*', balance), the best-first choice
with hash ties, independent of input order, and the gate that turns the rest into named drops."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from editgen.output.type_funnel import funnel_rows, type_funnel
from editgen.output.type_quota import OVER_QUOTA, QuotaGate, caps, select
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.stage import BY_TYPE, count_types


def test_count_types_reads_the_answer_then_the_request_then_untyped() -> None:
    table = pa.table({
        "edit_type": ["colour", "", None, "colour", "style_medium"],
        "type_requested": ["colour", "remove_object", "", "", ""],
        "status": ["kept", "dropped", "dropped", "dropped", "kept"],
        "drop_reason": [None, "llm_type_contradicts_remove_object", "llm_unparseable", "below_sim_direction", None],
    })
    got = count_types(table, weights=[1.0, 0.0, 0.0, 2.5, 4.0])
    assert got == {
        f"{BY_TYPE}rows:colour": 2, f"{BY_TYPE}kept:colour": 1, f"{BY_TYPE}drop:colour:below_sim_direction": 1,
        f"{BY_TYPE}unet_flops:colour": 3.5,
        f"{BY_TYPE}rows:remove_object": 1, f"{BY_TYPE}unet_flops:remove_object": 0.0,
        f"{BY_TYPE}drop:remove_object:llm_type_contradicts_remove_object": 1,
        f"{BY_TYPE}rows:untyped": 1, f"{BY_TYPE}drop:untyped:llm_unparseable": 1, f"{BY_TYPE}unet_flops:untyped": 0.0,
        f"{BY_TYPE}rows:style_medium": 1, f"{BY_TYPE}kept:style_medium": 1, f"{BY_TYPE}unet_flops:style_medium": 4.0,
    }
    assert count_types(pa.table({"id": ["a"], "status": ["kept"], "drop_reason": [None]})) == {}


def test_the_funnel_lines_follow_each_stage_and_say_what_is_unattributed() -> None:
    m = {
        "instruct": {"type_requested:colour": 3, "type_requested:remove_object": 2, f"{BY_TYPE}kept:colour": 3,
                     f"{BY_TYPE}drop:remove_object:llm_type_contradicts_remove_object": 2},
        "render": {f"{BY_TYPE}rows:colour": 6, f"{BY_TYPE}unet_flops:colour": 60.0, "unet_flops": 70.0},
        "filter": {f"{BY_TYPE}kept:colour": 4, f"{BY_TYPE}drop:colour:below_sim_direction": 2},
        "shard": {f"{BY_TYPE}kept:colour": 2, f"{BY_TYPE}drop:colour:{OVER_QUOTA}": 2},
    }
    rows = funnel_rows(m)
    assert list(rows) == ["remove_object", "colour"]  # taxonomy order
    c = rows["colour"]
    assert (c.asked, c.answers_kept, c.candidates, c.passed_filter, c.kept_samples) == (3, 3, 6, 4, 2)
    assert c.drops == {"filter:below_sim_direction": 2, f"shard:{OVER_QUOTA}": 2} and c.unet_flops_per_kept == 30.0
    r = rows["remove_object"]
    assert (r.asked, r.answers_kept, r.kept_samples, r.unet_flops_per_kept) == (2, 0, 0, None)
    assert type_funnel(m)["unattributed_unet_flops"] == 10.0
    no_shard = funnel_rows({**m, "shard": None})
    assert no_shard["colour"].kept_samples == 4  # before shard: what passed the filter
    assert funnel_rows({"instruct": {"candidates": 1.0}}) == {} and type_funnel({}) is None


def test_caps_of_each_quota_form() -> None:
    counts = {"colour": 5, "add_object": 2, "untyped": 3}
    assert caps(2, counts) == {"colour": 2, "add_object": 2, "untyped": 2}
    assert caps("balance", counts) == {"colour": 2, "add_object": 2, "untyped": 2}
    assert caps({"colour": 1, "*": 0}, counts) == {"colour": 1, "add_object": 0, "untyped": 0}
    assert caps({"colour": 1}, counts) == {"colour": 1, "add_object": None, "untyped": None}


def _samples(n: int, seed: int = 0) -> list[tuple[str, str, float | None]]:
    rng = random.Random(seed)
    types = ["colour", "add_object", "style_medium"]
    return [(f"k{i}-c0000", types[i % 3], rng.choice([None, 0.1, 0.2, 0.2, rng.random()])) for i in range(n)]


@pytest.mark.parametrize("quota", [0, 1, 3, "balance", {"colour": 2, "*": 1}, {"add_object": 100}])
def test_select_keeps_the_best_of_each_type_whatever_the_order(quota: object) -> None:
    samples = _samples(40)
    keep = select(samples, quota)  # type: ignore[arg-type]
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert select(shuffled, quota) == keep  # type: ignore[arg-type]
    counts: dict[str, int] = {}
    for _, t, _ in samples:
        counts[t] = counts.get(t, 0) + 1
    for t, cap in caps(quota, counts).items():  # type: ignore[arg-type]
        mine = [s for s in samples if s[1] == t]
        chosen = [s for s in mine if s[0] in keep]
        assert len(chosen) == (len(mine) if cap is None else min(cap, len(mine)))
        worst_kept = min((s[2] if s[2] is not None else float("-inf") for s in chosen), default=None)
        for s in mine:
            if s[0] not in keep and worst_kept is not None:
                assert (s[2] if s[2] is not None else float("-inf")) <= worst_kept


def test_the_gate_turns_the_rest_into_named_drops_and_counts_both() -> None:
    rows = [{"id": f"k{i}", "candidate": 0, "edit_type": "colour", "status": "kept", "drop_reason": None}
            for i in range(3)] + [{"id": "x", "candidate": 1, "edit_type": "colour", "status": "dropped",
                                   "drop_reason": "below_sim_direction"}]
    gate = QuotaGate({"k1-c0000"})
    out = list(gate.rows(rows))
    assert [r["status"] for r in out] == ["dropped", "kept", "dropped", "dropped"]
    assert [r["drop_reason"] for r in out] == [OVER_QUOTA, None, OVER_QUOTA, "below_sim_direction"]
    assert gate.kept == {"colour": 1} and gate.over == {"colour": 2}
    open_gate = QuotaGate(None)
    assert list(open_gate.rows(rows)) == rows and open_gate.kept == {"colour": 3} and not open_gate.over


@pytest.mark.parametrize("value, message", [
    ({"colr": 1}, "unknown edit type 'colr'"), (-1, "greater than or equal to 0"), ("even", "balance"),
    ({"colour": True}, "integer"),
])
def test_bad_quotas_are_refused_by_the_schema(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(extra={"shard": {"type_quota": value}})


def test_a_quota_moves_only_the_shard_hash() -> None:
    from editgen.pipeline.runner import stage_hashes

    plain = stage_hashes(build_config(profile="tiny"))
    for quota in ("shard.type_quota=balance", "shard.type_quota=3", "shard.type_quota={colour: 3}"):
        capped = stage_hashes(build_config(profile="tiny", overrides=[quota]))
        assert {k: v for k, v in capped.items() if k != "shard"} == {k: v for k, v in plain.items() if k != "shard"}
        assert capped["shard"] != plain["shard"], quota


def test_a_quota_caps_session_turns_without_breaking_a_chain() -> None:
    """Turn 2 of a chain competes only once its turn 1 stays: no kept turn lacks its previous turn, and a
    type's room left by turns 1 goes to the turns 2 that can stay (issue 22 item 5)."""
    rng = random.Random(3)
    samples = []
    for s in range(12):  # 12 chains of 2 turns: turn 1 a colour edit, turn 2 a colour or a style edit
        first = f"s{s}-c0000"
        samples.append((first, "colour", rng.random(), None))
        samples.append((f"s{s}-t2-c0000", "colour" if s % 2 else "style_medium", rng.random(), first))
    keep = select(samples, {"colour": 8, "style_medium": 3})
    prev = {k: p for k, _, _, p in samples}
    assert all(prev[k] is None or prev[k] in keep for k in keep)
    kinds = [t for k, t, _, _ in samples if k in keep]
    assert kinds.count("colour") == 8 and kinds.count("style_medium") == 3
    assert select(list(reversed(samples)), {"colour": 8, "style_medium": 3}) == keep
    best_firsts = sorted((x for x in samples if x[3] is None), key=lambda x: -x[2])[:8]
    assert {x[0] for x in best_firsts} <= keep  # turns 1 fill the colour room first
