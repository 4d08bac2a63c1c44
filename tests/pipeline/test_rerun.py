"""A rerun's config starts from the one recorded in OUT (pipeline.rerun), and stale stages are found from
OUT's records (pipeline.freshness): no Ray, no run (issue 20 item 8; the CLI runs are tests/cli/test_rerun_cli.py)."""

from __future__ import annotations

import json

import pytest

from editgen.pipeline.config import build_config, config_to_yaml
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.freshness import stage_states
from editgen.pipeline.records import write_stage_meta
from editgen.pipeline.rerun import recompute_notice, run_config
from editgen.pipeline.runner import stage_hashes
from editgen.pipeline.storage import Storage


def recorded(tmp_path, **extra):
    """An OUT whose last run used the tiny profile with render.steps=5 (and `extra` sections)."""
    cfg = build_config(profile="tiny", overrides=["render.steps=5"],
                       extra={"ingest": {"input": ["caps.jsonl"], "limit": 7}, **extra})
    storage = Storage(str(tmp_path))
    storage.write_text(config_to_yaml(cfg), "config.yaml")
    return storage, cfg


def test_rerun_without_profile_keeps_the_recorded_config(tmp_path):
    storage, before = recorded(tmp_path)
    cfg, line = run_config(storage, None, [], [], {})
    assert cfg == before and cfg.profile == "tiny" and cfg.render.steps == 5 and cfg.ingest.input == ["caps.jsonl"]
    assert line.startswith("rerun: config recorded in ") and "(profile tiny)" in line
    # without the record (the old behaviour) the same command meant the production defaults
    assert build_config().render.steps != 5 and build_config().ingest != before.ingest


def test_set_and_input_apply_on_top_profile_and_config_replace_the_base(tmp_path):
    storage, before = recorded(tmp_path)
    cfg, line = run_config(storage, None, [], ["render.steps=3"], {"ingest": {"input": ["other.jsonl"]}})
    assert cfg.render.steps == 3 and cfg.ingest.input == ["other.jsonl"] and cfg.ingest.limit == 7
    assert cfg.filter == before.filter and "--input, --set render.steps on top" in line
    fresh, line = run_config(storage, "tiny", [], [], {"ingest": {"input": ["caps.jsonl"]}})
    assert fresh == build_config(profile="tiny", extra={"ingest": {"input": ["caps.jsonl"]}})
    assert line == (f"rerun: starting from --profile tiny, not the config recorded in {tmp_path}/config.yaml "
                    "(profile tiny)")
    conf = tmp_path / "c.yaml"
    conf.write_text("render:\n  steps: 4\n")
    from_file, line = run_config(storage, None, [str(conf)], [], {})
    assert from_file.render.steps == 4 and from_file.profile is None and f"--config {conf}, not the" in line
    assert run_config(Storage(str(tmp_path / "new")), "tiny", [], [], {})[1] == ""  # a first run: nothing to say


def test_where_it_ran_is_not_reused(tmp_path):
    storage, _ = recorded(tmp_path, ray={"address": "10.1.2.3:6379"})
    cfg, line = run_config(storage, None, [], [], {})
    assert cfg.ray.address is None and "not reused: ray.address" in line
    cfg, _ = run_config(storage, None, [], [], {"ray": {"address": "10.9.9.9:6379"}})
    assert cfg.ray.address == "10.9.9.9:6379"


@pytest.mark.parametrize(("where", "flag"), [("input", "--input"), ("env", "--set ray.runtime_env")])
def test_a_redacted_secret_is_never_rebuilt_from_its_blank(tmp_path, where, flag):
    """OUT/config.yaml holds `***` where the secret was: a rerun that would use it is refused (one line
    naming the key and how to pass it), and runs once the command line gives it again."""
    secret_input = {"ingest": {"input": ["https://user:pw@host.example/caps.jsonl"]}}
    env = {"ray": {"runtime_env": {"env_vars": {"HF_TOKEN": "hf_abcdefgh12345"}}}}
    storage, _ = recorded(tmp_path, **(secret_input if where == "input" else env))
    assert "pw@" not in storage.read_text("config.yaml") and "hf_abc" not in storage.read_text("config.yaml")
    with pytest.raises(ConfigError, match=rf"(ingest.input|ray.runtime_env.env_vars.HF_TOKEN) was recorded "
                                          rf"without its secret .*\({flag}"):
        run_config(storage, None, [], [], {})
    if where == "input":
        cfg, _ = run_config(storage, None, [], [], {"ingest": {"input": ["https://user:pw@host.example/caps.jsonl"]}})
        assert cfg.ingest.input == ["https://user:pw@host.example/caps.jsonl"]
    else:
        cfg, _ = run_config(storage, None, [], ["ray.runtime_env.env_vars.HF_TOKEN=hf_zyx98765432"], {})
        assert cfg.ray.runtime_env["env_vars"]["HF_TOKEN"] == "hf_zyx98765432"


def test_unreadable_or_invalid_record_is_one_line(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_text("render: [1, 2\n", "config.yaml")
    with pytest.raises(ConfigError, match=r"config.yaml line 2: the recorded config is not readable YAML "
                                          r"\(expected .*\); pass --profile/--config"):
        run_config(storage, None, [], [], {})
    storage.write_text("render:\n  stepz: 3\n", "config.yaml")
    with pytest.raises(ConfigError, match="unknown key 'render.stepz'.*recorded in .*config.yaml"):
        run_config(storage, None, [], [], {})


def completed(storage: Storage, cfg) -> dict[str, str]:
    """_stage.json of every stage as a run under `cfg` writes them."""
    hashes, up = stage_hashes(cfg), None
    for name, h in hashes.items():
        write_stage_meta(storage, name, {"stage": name, "stage_hash": h, "complete": True, "partitions": 1,
                                         "upstream_hash": hashes[up] if up else None})
        up = name
    return hashes


def test_notice_names_the_changed_keys_and_the_stages_before_any_work(tmp_path):
    storage, cfg = recorded(tmp_path)
    completed(storage, cfg)
    new, _ = run_config(storage, None, [], ["render.steps=3", "render.resources.concurrency=1",
                                            "filter.min_sim_direction=0.1"], {})
    notice = recompute_notice(storage, new, list(stage_hashes(new)), stage_hashes(new))
    assert notice == ("recomputing render, filter, shard (render.steps 5 -> 3; filter.min_sim_direction 0.0 -> 0.1); "
                      "kept: ingest, instruct")
    same, _ = run_config(storage, None, [], ["render.resources.concurrency=1"], {})  # scheduling only
    assert recompute_notice(storage, same, list(stage_hashes(same)), stage_hashes(same)) == ""


def test_status_states_follow_the_hash_chain(tmp_path):
    """After `--only ingest` with a new ingest setting (ingest's record and OUT/config.yaml change), every
    stage downstream is stale although its _stage.json still says complete."""
    storage, cfg = recorded(tmp_path)
    completed(storage, cfg)
    assert [s.label for s in stage_states(storage)] == ["complete"] * 5
    changed = build_config(profile="tiny", overrides=["render.steps=5", "ingest.min_words=4"],
                           extra={"ingest": {"input": ["caps.jsonl"], "limit": 7}})
    storage.write_text(config_to_yaml(changed), "config.yaml")
    write_stage_meta(storage, "ingest", {"stage": "ingest", "stage_hash": stage_hashes(changed)["ingest"],
                                         "complete": True, "partitions": 1, "upstream_hash": None})
    assert [s.label for s in stage_states(storage)] == [
        "complete", "stale (upstream changed)", "stale (upstream stale)", "stale (upstream stale)",
        "stale (upstream stale)"]
    # a setting of its own changed in the recorded config (a run that stopped before reaching it)
    storage.write_text(config_to_yaml(build_config(profile="tiny", overrides=["render.steps=6"], extra={
        "ingest": {"input": ["caps.jsonl"], "limit": 7}})), "config.yaml")
    completed(storage, cfg)
    assert [s.label for s in stage_states(storage)][2:4] == ["stale (config or code changed)",
                                                             "stale (upstream stale)"]
    meta = json.loads((tmp_path / "render" / "_stage.json").read_text())
    assert meta["upstream_hash"] == stage_hashes(cfg)["instruct"]


def test_without_a_recorded_config_only_the_upstream_links_are_judged(tmp_path):
    """No OUT/config.yaml to recompute hashes from (an OUT from before it, a hand-made one): no stage is
    called stale for its settings, but one built on a since-recomputed upstream still is."""
    storage, cfg = recorded(tmp_path)
    completed(storage, cfg)
    (tmp_path / "config.yaml").unlink()
    assert [s.label for s in stage_states(storage)] == ["complete"] * 5
    write_stage_meta(storage, "ingest", {"stage": "ingest", "stage_hash": "0123456789abcdef", "complete": True,
                                         "partitions": 1, "upstream_hash": None})
    assert [s.label for s in stage_states(storage)][:3] == ["complete", "stale (upstream changed)",
                                                            "stale (upstream stale)"]


def test_a_missing_upstream_stage_file_is_not_staleness(tmp_path):
    """instruct's _stage.json gone or damaged (bookkeeping, not data): render is judged on the upstream hash it
    recorded and stays complete; the next run rewrites instruct's file without recomputing anything."""
    storage, cfg = recorded(tmp_path)
    completed(storage, cfg)
    (tmp_path / "instruct" / "_stage.json").write_text('["damaged"]')
    assert [s.label for s in stage_states(storage)] == ["complete", "not run", "complete", "complete", "complete"]
