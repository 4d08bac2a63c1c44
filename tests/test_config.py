"""Config schema: defaults, profiles, files, --set overrides and errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.config import build_config, config_to_yaml, profile_names, section_hash
from pipeline.errors import ConfigError
from tests.conftest import ROOT, cli_env


def test_defaults_and_profiles():
    cfg = build_config()
    assert cfg.ingest.text_column == "TEXT"
    assert {"tiny", "sd15", "sdxl"} <= set(profile_names())
    tiny = build_config(profile="tiny")
    assert tiny.profile == "tiny"
    assert tiny.instruct.backend == "template"
    assert tiny.render.resources.num_gpus == 0
    assert build_config(profile="sdxl").render.model == "stabilityai/stable-diffusion-xl-base-1.0"


def test_set_overrides_parse_yaml_scalars():
    cfg = build_config(overrides=["ingest.limit=100", "ingest.languages=[en, de]", "ingest.drop_junk=false"])
    assert cfg.ingest.limit == 100
    assert cfg.ingest.languages == ["en", "de"]
    assert cfg.ingest.drop_junk is False


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'ingest.limt'"):
        build_config(overrides=["ingest.limt=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'nosuchsection'"):
        build_config(overrides=["nosuchsection.x=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"ingest.limit: .*integer.*'abc'"):
        build_config(overrides=["ingest.limit=abc"])
    with pytest.raises(ConfigError, match=r"ingest.rows_per_partition"):
        build_config(overrides=["ingest.rows_per_partition=0"])


def test_bad_set_syntax_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        build_config(overrides=["ingest.limit"])
    with pytest.raises(ConfigError, match="profile 'nope' does not exist"):
        build_config(profile="nope")
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(files=[str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(files=[str(bad)])


def test_precedence_file_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"ingest": {"limit": 7, "seed": 3}}))
    cfg = build_config(profile="tiny", files=[str(f)], overrides=["ingest.limit=9"])
    assert (cfg.ingest.limit, cfg.ingest.seed) == (9, 3)
    assert cfg.instruct.backend == "template"  # from the profile


def test_hash_ignores_resources_and_chains_upstream():
    a = build_config()
    b = build_config(overrides=["ingest.resources.concurrency=7"])
    c = build_config(overrides=["ingest.min_words=5"])
    assert section_hash(a, "ingest") == section_hash(b, "ingest")
    assert section_hash(a, "ingest") != section_hash(c, "ingest")
    assert section_hash(a, "instruct", "u1") != section_hash(a, "instruct", "u2")


def test_secrets_are_redacted_in_dump():
    text = config_to_yaml(build_config())
    assert "api_key:" not in text or "***" in text or "api_key: null" in text


def test_cli_config_error_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "config", "--set", "ingest.limt=3"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ingest.limt" in lines[0]
