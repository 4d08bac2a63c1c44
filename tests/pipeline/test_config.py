"""Config schema: defaults, profiles, files, --set overrides and errors that name the key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from pipeline.config import build_config, config_to_yaml, profile_names, section_hash
from pipeline.errors import ConfigError
from tests.support import ROOT, cli_env


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
        [sys.executable, "-m", "cli.main", "config", "--set", "ingest.limt=3"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ingest.limt" in lines[0]


#: --set value -> words the one-line error must contain (issue 10: each used to be a traceback, a silent
#: drop of every row, or NaN written to disk)
BAD_SETTINGS = {
    "run.log_level=BOGUS": "run.log_level: input should be 'DEBUG'",
    "ingest.seed=-1": "ingest.seed: input should be greater than or equal to 0",
    "ray.object_store_memory=100000000000000": "ray.object_store_memory: 100000000000000 bytes is more than",
    "render.guidance_range=[7.5, .nan]": "render.guidance_range.1: input should be a finite number",
    "render.guidance_range=[.inf, 15]": "render.guidance_range.0: input should be a finite number",
    "ingest.languages=[zz]": "ingest.languages: unknown language code 'zz'",
    "render.height=100000": "render.height: input should be less than or equal to 4096",
    "ingest.min_words=100": "ingest.min_words: 100 is above max_words (60)",
}


@pytest.mark.parametrize("item", sorted(BAD_SETTINGS))
def test_bad_values_name_the_key(item):
    with pytest.raises(ConfigError, match=re.escape(BAD_SETTINGS[item])):
        build_config(overrides=[item])


def test_log_level_is_case_insensitive():
    assert build_config(overrides=["run.log_level=debug"]).run.log_level == "DEBUG"


def _cli_run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, object]:
    out = tmp_path / "out"
    (tmp_path / "caps.txt").write_text("a red car on a road\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "--only", "ingest", "--input", str(tmp_path / "caps.txt"),
         "--out", str(out), "-q", *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    return proc, out


@pytest.mark.parametrize("item", ["run.log_level=BOGUS", "ingest.seed=-1", "ray.object_store_memory=100000000000000",
                                  "render.guidance_range=[.nan, 8]", "ingest.languages=[zz]"])
def test_cli_bad_value_exit_2_nothing_written(tmp_path, item):
    proc, out = _cli_run(tmp_path, "--set", item)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and item.split("=")[0] in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(("body", "words"), [
    (b"ingest:\n  limit: \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 17)"),
    (b"- ingest\n- render\n", "expected a mapping of sections, got list"),
    (b"ingest: 5\n", "ingest: expected a mapping of settings, got int"),
])
def test_cli_bad_config_file_exit_2(tmp_path, body, words):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_bytes(body)
    proc, out = _cli_run(tmp_path, "--config", str(cfg_file))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(("args", "words"), [(["--guidance", "nan"], "--guidance: input should be a finite number"),
                                             (["--size", "100000"], "--size: input should be less than or equal to")])
def test_pair_validates_like_the_config(tmp_path, args, words):
    out = tmp_path / "pair"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "pair", "--profile", "tiny", "--prompt", "a cat on a sofa",
         "--edit-prompt", "a dog on a sofa", "--out", str(out), *args],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert not out.exists()
