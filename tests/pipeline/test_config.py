"""Config schema: defaults, profiles, files, --set overrides and errors that name the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from types import UnionType
from typing import Annotated, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from editgen.pipeline.config import EditgenConfig, build_config, config_to_yaml, out_config, profile_names, section_hash
from editgen.pipeline.errors import ConfigError, OutputError
from editgen.pipeline.storage import Storage, parse_storage_options
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
        [sys.executable, "-m", "editgen.cli.main", "config", "--set", "ingest.limt=3"],
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
        [sys.executable, "-m", "editgen.cli.main", "run", "--only", "ingest", "--input", str(tmp_path / "caps.txt"),
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
        [sys.executable, "-m", "editgen.cli.main", "pair", "--profile", "tiny", "--prompt", "a cat on a sofa",
         "--edit-prompt", "a dog on a sofa", "--out", str(out), *args],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert not out.exists()


# ---- issue 19 item 11: wrong types are errors that name the key ----------------------------------------

#: Python values of the wrong type per field type: YAML gives `true`/`yes`/`on` as True, `1.5` as a float,
#: a quoted "3" as a string; an int is an int, a float an int or float, a bool a bool.
WRONG = {int: [True, False, 1.5, 2.0, "3", "1e3", None], float: [True, False, "1.5", "nan", None],
         bool: [1, 0, "true", "yes", 1.0, None]}


def _numeric_fields(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], type, bool]]:
    """(key path, int/float/bool, optional) of every scalar number/bool field of the schema, tuple items
    as `key.N`, walking nested sections (resources, inversion, diffedit, vllm, openai, ...)."""
    for name, info in model.model_fields.items():
        ann, optional = info.annotation, False
        if get_origin(ann) in (Union, UnionType):
            args = [a for a in get_args(ann) if a is not type(None)]
            optional = len(args) < len(get_args(ann))
            ann = args[0] if len(args) == 1 else ann
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _numeric_fields(ann, (*path, name))
        elif ann in (int, float, bool):
            yield (*path, name), ann, optional
        elif get_origin(ann) is tuple:
            for i, item in enumerate(get_args(ann)):
                base = get_args(item)[0] if get_origin(item) is Annotated else item
                if base in (int, float, bool):
                    yield (*path, name, str(i)), base, False


def _nest(path: tuple[str, ...], value: object) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value  # type: ignore[return-value]


def _with_item(path: tuple[str, ...], value: object) -> dict:
    """A config dict setting one field (or one item of a tuple field, the others at their defaults)."""
    if path[-1].isdigit():
        section = build_config()
        for part in path[:-2]:
            section = getattr(section, part)
        current, i = getattr(section, path[-2]), int(path[-1])
        # an optional range left at None: the other bounds at 0 below and 100 above this item, so a
        # valid value keeps the range ordered (guidance ranges lie in [0, 100])
        items = list(current) if current is not None else [0.0] * i + [100.0] * (len(get_args(_tuple_of(path))) - i)
        items[i] = value
        return _nest(path[:-1], items)
    return _nest(path, value)


def _tuple_of(path: tuple[str, ...]) -> object:
    """The tuple annotation of the field `path` names an item of (None stripped from an optional one)."""
    model: type[BaseModel] = EditgenConfig
    for part in path[:-2]:
        ann = model.model_fields[part].annotation
        model = next(a for a in (get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel))
    ann = model.model_fields[path[-2]].annotation
    options = get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)
    return next(a for a in options if get_origin(a) is tuple)


FIELDS = list(_numeric_fields(EditgenConfig))


def test_schema_walk_finds_every_numeric_field():
    """The walk below must see the whole schema (a walk that found nothing would prove nothing)."""
    keys = {".".join(p) for p, _, _ in FIELDS}
    assert len(FIELDS) > 100, len(FIELDS)
    assert {"render.steps", "render.candidates", "ingest.min_words", "render.guidance_range.1",
            "fetch.border_color.2", "render.inversion.diffedit.n_draws", "instruct.openai.timeout_s",
            "ray.num_cpus", "shard.resources.num_cpus", "filter.cache_scores", "run.progress"} <= keys
    assert {t for _, t, _ in FIELDS} == {int, float, bool}


@pytest.mark.parametrize(("path", "typ", "optional"), FIELDS, ids=[".".join(p) for p, _, _ in FIELDS])
def test_every_number_and_bool_field_refuses_wrong_types(path, typ, optional):
    key = ".".join(path)
    for value in WRONG[typ]:
        if value is None and optional:
            continue
        with pytest.raises(ConfigError, match=rf"config: {re.escape(key)}: input should be a valid"):
            build_config(extra=_with_item(path, value))
    if typ is float:  # YAML's `1` is an int: still a valid float (some int within the field's bounds)
        accepted = []
        for value in (1, 0, 2, 100, 10_000):
            try:
                got = build_config(extra=_with_item(path, value))
            except ConfigError:
                continue
            node = got
            for part in path:
                node = node[int(part)] if part.isdigit() else getattr(node, part)
            accepted.append(node == value and isinstance(node, float))
        assert accepted and all(accepted), key


@pytest.mark.parametrize(("item", "words"), [
    ("render.steps=true", "render.steps: input should be a valid integer (got True)"),
    ("render.candidates=yes", "render.candidates: input should be a valid integer (got True)"),
    ("ingest.min_words=false", "ingest.min_words: input should be a valid integer (got False)"),
    ("render.steps=2.5", "render.steps: input should be a valid integer (got 2.5)"),
    ("render.steps='7'", "render.steps: input should be a valid integer (got '7')"),
    ("render.guidance_range=[on, 9]", "render.guidance_range.0: input should be a valid number (got True)"),
    ("filter.cache_scores=1", "filter.cache_scores: input should be a valid boolean (got 1)"),
    ("render.model_edits=[{kind: debias, concept: a doctor, attributes: [a, b], weights: [1, true]}]",
     "render.model_edits.0.debias.weights.1: input should be a valid number (got True)"),
])
def test_wrong_types_from_set_and_yaml_name_the_key(tmp_path, item, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_config(overrides=[item])
    section, key, value = re.split(r"[.=]", item, maxsplit=2)
    f = tmp_path / "c.yaml"
    f.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_config(files=[str(f)])


def test_numbers_yaml_spells_are_still_numbers():
    """Ints for floats (`temperature: 1`), exponents without a dot (YAML 1.1 reads `1e-6` as a string), and
    the documented string/bool spellings (verify_checksums: true) stay accepted."""
    cfg = build_config(overrides=["instruct.temperature=1", "render.inversion.early_stop_epsilon=1e-6",
                                  "render.guidance_range=[5, 8]", "fetch.max_seconds=2E1", "run.verify_checksums=true",
                                  "ray.num_cpus=2"])
    assert cfg.instruct.temperature == 1.0 and isinstance(cfg.instruct.temperature, float)
    assert cfg.render.inversion.early_stop_epsilon == 1e-6 and cfg.fetch.max_seconds == 20.0
    assert cfg.render.guidance_range == (5.0, 8.0) and cfg.run.verify_checksums == "full" and cfg.ray.num_cpus == 2
    assert build_config(profile="sd15").render.steps == build_config(profile="sd15").render.steps  # profiles load


# ---- issue 19 item 9: YAML alias bombs and nesting bombs ----------------------------------------------

def _laughs(levels: int = 9, under: str = "ray:\n  runtime_env:\n") -> str:
    """The classic "billion laughs": ~400 bytes, 9**9 values once expanded."""
    lines = ['    l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return under + "\n".join(lines) + "\n"


@pytest.mark.parametrize("under", ["ray:\n  runtime_env:\n", "render:\n  extra:\n",
                                   "fetch:\n  headers:\n"])
def test_yaml_alias_bomb_in_config_is_refused_at_once(tmp_path, under):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(under=under))
    assert bomb.stat().st_size < 700
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yaml line \d+: not valid YAML \(aliases expand to more than 10000"):
        build_config(files=[str(bomb)])
    assert time.monotonic() - t0 < 2


def test_yaml_bombs_in_set_storage_options_and_out_config(tmp_path):
    bomb = "{" + _laughs(levels=7, under="").replace("\n", ", ").replace("    ", "").rstrip(", ") + "}"
    with pytest.raises(ConfigError, match=r"--set ray.runtime_env: aliases expand to more than 10000"):
        build_config(overrides=[f"ray.runtime_env={bomb}"])
    with pytest.raises(OutputError, match=r"--storage-option client_kwargs: aliases expand to more than 10000"):
        parse_storage_options([f"client_kwargs={bomb}"])
    (tmp_path / "config.yaml").write_text(_laughs())  # OUT/config.yaml read back by status/validate
    assert out_config(Storage(str(tmp_path))) == EditgenConfig()


@pytest.mark.parametrize(("body", "words"), [
    ("ray:\n  runtime_env: &a {x: [*a]}\n", "alias *a refers to a node that contains it"),
    ("ray:\n  runtime_env: {x: " + "[" * 500 + "]" * 500 + "}\n", "nested deeper than 64 levels"),
])
def test_recursive_and_deep_yaml_is_one_line(tmp_path, body, words):
    f = tmp_path / "c.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_config(files=[str(f)])


def test_shared_anchors_within_the_bound_still_work(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ingest:\n  resources: &r {num_cpus: 2, batch_size: 8}\nshard:\n  resources: *r\n"
                 "filter:\n  resources: {<<: *r, num_gpus: 0}\n")
    cfg = build_config(files=[str(f)])
    assert cfg.shard.resources.batch_size == 8 == cfg.filter.resources.batch_size


def test_cli_yaml_bomb_is_one_line_exit_2(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs())
    proc, out = _cli_run(tmp_path, "--config", str(bomb))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "aliases expand to more than 10000" in lines[0], proc.stderr
    assert not out.exists()


def test_strings_that_are_not_utf8_name_the_key():
    """A file name of non-UTF-8 bytes on the command line, or a lone surrogate in YAML, could be neither
    hashed nor written to OUT/config.yaml: one line naming the key (it used to be a traceback mid-run)."""
    name = os.fsdecode(b"/data/caps-\xff.txt")
    with pytest.raises(ConfigError, match=re.escape("config: ingest.input.1: not UTF-8 text (b'/data/caps-\\xff.txt'")):
        build_config(extra={"ingest": {"input": ["ok.txt", name]}})
    with pytest.raises(ConfigError, match=re.escape("config: ingest.text_column: not UTF-8 text")):
        build_config(overrides=['ingest.text_column="\\ud800"'])
