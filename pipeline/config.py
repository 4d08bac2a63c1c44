"""One validated config schema: defaults in code, YAML profiles, `--config FILE`, `--set key=value`.

Precedence (later wins): code defaults < profile < config files (in order) < --set overrides.
Every error names the offending key, so a typo in a 40-key cluster config is found in seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from importlib import resources as importlib_resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError

from editgen.pipeline import safe_yaml
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.redact import REDACTED, is_secret_key, redact_text
from editgen.pipeline.settings.base import Strict
from editgen.pipeline.settings.fetch import FetchConfig
from editgen.pipeline.settings.filter import FilterConfig
from editgen.pipeline.settings.ingest import IngestConfig
from editgen.pipeline.settings.instruct import InstructConfig
from editgen.pipeline.settings.judge import JudgeConfig
from editgen.pipeline.settings.render import RenderConfig
from editgen.pipeline.settings.run import RayConfig, RunConfig
from editgen.pipeline.settings.shard import ShardConfig

if TYPE_CHECKING:
    from editgen.pipeline.storage import Storage

#: A config file is a few KB; reading a multi-GB one (a wrong path) whole would exhaust memory first.
MAX_CONFIG_BYTES = 16 * 2**20
#: Keys that change scheduling only, never results: excluded from stage hashes.
NON_SEMANTIC_KEYS = ("resources",)
#: Per-section keys kept out of the hash chain because something better stands for them: ingest's input
#: spelling (`./a.jsonl`, `a.jsonl`, a glob) is replaced by the files' identities in the partition keys;
#: the shard stage's card settings change only OUT/shards/README.md, which the stage's resume check compares;
#: render's model-edit report is written beside the stages and changes no output row.
UNHASHED_KEYS = {"ingest": ("input", "dedup_buckets"), "shard": ("card",), "render": ("model_edit_report",)}
#: Per-section keys left out of the hash while they hold their default: options added after a section's
#: hash was first published, so an OUT rendered before them (and any run that does not use them) keeps
#: its hash and is not recomputed; set to anything else, they enter the hash like every key.
#: An edit engine's sub-section (`render.<engine>`) goes here too, and so does `render.engine`.
HASH_NEUTRAL_DEFAULTS = {"render": ("engine", "source", "inversion", "shared_sources", "instruct_model",
                                    "sdedit", "inpaint", "routes", "type_candidates"),
                         "filter": ("min_reconstruction_psnr", "min_reconstruction_ssim", "outside_mask",
                                    "max_outside_mask_l1", "min_outside_mask_ssim", "dino_model", "dino_batch_size",
                                    "ssim", "min_dinov2", "max_dinov2", "min_ssim", "max_ssim"),
                         "instruct": ("inverse", "turns"),
                         "shard": ("type_quota", "eval_fraction"),
                         "ingest": ("exclude", "exclude_distance", "canary")}


class EditgenConfig(Strict):
    profile: str | None = Field(None, description="name of the profile this config started from")
    run: RunConfig = Field(default_factory=RunConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig, description="only used with render.source=real")
    instruct: InstructConfig = Field(default_factory=InstructConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="off unless judge.enabled (docs/judge.md)")
    shard: ShardConfig = Field(default_factory=ShardConfig)


def profile_names() -> list[str]:
    files = importlib_resources.files("editgen.pipeline") / "profiles"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    for key, value in data.items():  # a scalar section would be silently replaced by --input/--set merges
        if key != "profile" and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key}: expected a mapping of settings, got {type(value).__name__}")
    return data


def load_profile(name: str) -> dict[str, Any]:
    path = importlib_resources.files("editgen.pipeline") / "profiles" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"profile {name!r} does not exist (known: {', '.join(profile_names())})")
    data = _read_yaml(path.read_text(encoding="utf-8"), f"profile {name}")
    data.setdefault("profile", name)
    return data


def load_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {p.stat().st_size} bytes is not a config file (at most "
                              f"{MAX_CONFIG_BYTES // 2**20} MiB; long term lists belong in a blocklist file)")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save the config file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    return _read_yaml(text, path)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`ingest.limit=100` -> (['ingest', 'limit'], 100); the value is parsed as a YAML scalar/list."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if len(parts) < 2 or any(not p for p in parts):
        raise ConfigError(f"--set {item!r}: key must look like section.key (e.g. ingest.limit=100)")
    try:
        value = safe_yaml.load(raw) if raw.strip() else ""
    except safe_yaml.YamlBombError as exc:
        raise ConfigError(f"--set {key.strip()}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return parts, value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"config: unknown key {key!r}")
        else:
            got = err.get("input")
            got_s = repr(got) if not isinstance(got, dict) else "a mapping"
            if len(got_s) > 60:
                got_s = got_s[:57] + "..."
            msg = err["msg"].removeprefix("Value error, ")
            field = re.match(r"^([a-z_]+): (.*)$", msg)
            if isinstance(got, dict) and field:  # a section-level check that names its own key
                lines.append(f"config: {key}.{field[1]}: {field[2]}")
                continue
            lines.append(f"config: {key}: {msg[:1].lower() + msg[1:]} (got {got_s})")
    return "; ".join(lines)


def _check_text(node: Any, key: str) -> None:
    """Every string of the config must be UTF-8 text: a file name of other bytes given on the command line
    (Python spells its bytes as lone surrogates), or a YAML "\\ud800", could be neither hashed nor written to
    OUT/config.yaml, and would fail the run later with a traceback."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_text(k, key)
            _check_text(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_text(v, f"{key}.{i}")
    elif isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            shown = node.encode("utf-8", "surrogateescape" if _escapable(node) else "backslashreplace")
            raise ConfigError(f"config: {key or 'key'}: not UTF-8 text ({shown!r}: a file name of other bytes, "
                              "or a lone surrogate escape)") from None


def _escapable(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


def build_config(
    profile: str | None = None,
    files: list[str] | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> EditgenConfig:
    """Compose and validate; raises ConfigError naming the bad key. `base` (a rerun's recorded config,
    pipeline.rerun) is the start, under everything else."""
    data: dict[str, Any] = copy.deepcopy(base) if base else {}
    if profile:
        data = deep_merge(data, load_profile(profile))
    for f in files or []:
        data = deep_merge(data, load_file(f))
    if extra:
        data = deep_merge(data, extra)
    for item in overrides or []:
        parts, value = parse_override(item)
        _set_path(data, parts, value)
    _check_text(data, "")
    try:
        return EditgenConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def _redact(obj: Any) -> Any:
    """Secret-named keys blanked, URL credentials and secret-looking parameters in every string blanked
    (pipeline.redact decides what a secret looks like)."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and v else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def out_config(storage: Storage) -> EditgenConfig:
    """The config of OUT's last run (OUT/config.yaml), for tools that read OUT without one (status,
    validate) and must walk the same stage graph. Sections that no longer validate (a redacted secret,
    a key renamed since) fall back to their defaults; no file at all means the defaults."""
    try:
        data = safe_yaml.load(storage.read_text("config.yaml")) or {}
    except (FileNotFoundError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return EditgenConfig()
    if not isinstance(data, dict):
        return EditgenConfig()
    try:
        return EditgenConfig.model_validate(data)
    except ValidationError:
        good = {}
        for key, value in data.items():
            try:
                EditgenConfig.model_validate({key: value})
                good[key] = value
            except ValidationError:
                continue
        return EditgenConfig.model_validate(good)


def config_to_yaml(cfg: EditgenConfig) -> str:
    """The effective config, secrets redacted, as written to OUT/config.yaml."""
    return yaml.safe_dump(_redact(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


def _strip_non_semantic(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_non_semantic(v) for k, v in obj.items() if k not in NON_SEMANTIC_KEYS}
    return obj


def _config_value(cfg: EditgenConfig, entry: str) -> Any:
    """Value of a "section" or "section.key" entry, scheduling keys stripped."""
    node: Any = cfg
    for part in entry.split("."):
        node = getattr(node, part)
    if hasattr(node, "model_dump"):
        node = node.model_dump(mode="json")
    return _strip_non_semantic(node)


def section_hash(
    cfg: EditgenConfig, section: str, upstream_hash: str = "", version: str = "1", reads: tuple[str, ...] = ()
) -> str:
    """Hash of what determines a stage's output: its section (minus scheduling), the other config it
    reads (`reads`: "section" or "section.key" entries), its code version and its upstream's hash,
    so a change anywhere upstream invalidates everything downstream."""
    body = _strip_non_semantic(getattr(cfg, section).model_dump(mode="json"))
    for key in UNHASHED_KEYS.get(section, ()):
        body.pop(key, None)
    neutral = HASH_NEUTRAL_DEFAULTS.get(section, ())
    defaults = type(getattr(cfg, section))().model_dump(mode="json") if neutral else {}
    for key in neutral:
        if key in body and body[key] == defaults.get(key):
            body.pop(key)
    doc: dict[str, Any] = {"s": section, "v": version, "c": body, "u": upstream_hash}
    if reads:  # only then, so stages that read nothing else keep their hashes
        doc["r"] = {entry: _config_value(cfg, entry) for entry in sorted(set(reads))}
    blob = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
