"""A rerun on an existing OUT: which config it starts from, and what a change recomputes, said before any work.

Every run writes its merged config to OUT/config.yaml (secrets redacted). A rerun without --profile or
--config starts from that recorded config, not from the code defaults (which would silently recompute
ingest under production settings): --input, --limit and --set apply on top, --profile/--config replace
the base. A recorded value that lost a secret to redaction cannot be restored: a rerun that would need
one is refused with one line saying how to pass it again. Where the rerun's config changes the hash of a
completed stage, one line names the stages it recomputes and the changed keys (old -> new, redacted)
before any work, on the terminal and in the run log.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from editgen.pipeline import safe_yaml
from editgen.pipeline.config import (
    HASH_NEUTRAL_DEFAULTS,
    NON_SEMANTIC_KEYS,
    UNHASHED_KEYS,
    EditgenConfig,
    build_config,
    out_config,
)
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.freshness import UPSTREAM_CHANGED, redacted_paths, stage_states
from editgen.pipeline.records import read_stage_meta
from editgen.pipeline.redact import REDACTED, is_secret_key, redact_text
from editgen.pipeline.registry import load_stage_class, stage_names
from editgen.pipeline.storage import Storage

CONFIG_FILE = "config.yaml"
#: Recorded keys a rerun does not take over: where the last run ran, not what it computed (a rerun joins
#: --ray-address, RAY_ADDRESS or a local Ray, so a cluster that has since moved is not sought).
NOT_REUSED = (("ray", "address"),)
#: How the command line sets a recorded key again (else `--set key=...`).
FLAGS = {"ingest.input": "--input", "ingest.limit": "--limit", "ray.address": "--ray-address"}
MAX_VALUE_CHARS = 60


def recorded_config(storage: Storage) -> dict[str, Any] | None:
    """OUT/config.yaml as the last run wrote it, or None when OUT has none (a first run)."""
    try:
        text = storage.read_text(CONFIG_FILE)
    except FileNotFoundError:
        return None
    where = storage.path(CONFIG_FILE)
    try:
        data = safe_yaml.load(text)
    except (yaml.YAMLError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{redact_text(where)}{at}: the recorded config is not readable YAML "
                          f"({getattr(exc, 'problem', None) or type(exc).__name__}); pass --profile/--config to "
                          "start from a new one") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{redact_text(where)}: the recorded config is not a mapping; "
                          "pass --profile/--config to start from a new one")
    return data


def run_config(storage: Storage, profile: str | None, files: list[str], overrides: list[str],
               extra: dict[str, Any]) -> tuple[EditgenConfig, str]:
    """The config of `editgen run` on OUT, and one line saying which base it started from ('' for a first
    run on OUT)."""
    if profile or files:
        return build_config(profile=profile, files=files, overrides=overrides, extra=extra), _replaced(
            storage, profile, files)
    recorded = recorded_config(storage)
    if recorded is None:
        return build_config(overrides=overrides, extra=extra), ""
    base = copy.deepcopy(recorded)
    dropped = [".".join(k) for k in NOT_REUSED if base.get(k[0], {}).pop(k[1], None) is not None]
    _check_secrets(storage, base, overrides, extra)
    try:
        cfg = build_config(overrides=overrides, extra=extra, base=base)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (starting from the config recorded in {redact_text(storage.path(CONFIG_FILE))}; "
                          "pass --profile/--config to start from a new one)") from None
    given = [FLAGS.get(f"{section}.{key}", f"{section}.{key}") for section, keys in extra.items() for key in keys]
    given += [f"--set {o.split('=', 1)[0].strip()}" for o in overrides]
    line = (f"rerun: config recorded in {redact_text(storage.path(CONFIG_FILE))}"
            + (f" (profile {cfg.profile})" if cfg.profile else " (no profile)")
            + (f", with {', '.join(given)} on top" if given else "")
            + (f"; not reused: {', '.join(dropped)} (where it ran)" if dropped else ""))
    return cfg, line


def _replaced(storage: Storage, profile: str | None, files: list[str]) -> str:
    """'' on a first run; else the line saying that --profile/--config, not OUT's record, is the base."""
    try:
        recorded = recorded_config(storage)
    except ConfigError:
        recorded = {}
    if recorded is None:
        return ""
    given = " and ".join([f"--profile {profile}"] * bool(profile) + [f"--config {f}" for f in files])
    was = f"profile {recorded['profile']}" if recorded.get("profile") else "no profile"
    return (f"rerun: starting from {given}, not the config recorded in {redact_text(storage.path(CONFIG_FILE))} "
            f"({was})")


def _check_secrets(storage: Storage, base: dict[str, Any], overrides: list[str], extra: dict[str, Any]) -> None:
    """A redacted recorded value that nothing on the command line sets again: one line, exit 2."""
    given = [o.split("=", 1)[0].strip() for o in overrides]
    given += [f"{section}.{key}" for section, keys in extra.items() if isinstance(keys, dict) for key in keys]
    for path in redacted_paths(base):
        if not any(path == g or path.startswith(g + ".") or g.startswith(path + ".") for g in given):
            flag = FLAGS.get(path, f"--set {path}=...")
            raise ConfigError(f"{redact_text(storage.path(CONFIG_FILE))}: {path} was recorded without its secret "
                              f"(editgen never writes one to OUT): pass it again ({flag}), or start from "
                              "--profile/--config")


def recompute_notice(storage: Storage, cfg: EditgenConfig, selected: list[str], hashes: dict[str, str]) -> str:
    """'' when no completed stage of `selected` changes hash; else one line: the stages this run
    recomputes, and why (the changed keys, old -> new, secrets redacted)."""
    old = out_config(storage)
    metas = {name: read_stage_meta(storage, name) for name in dict.fromkeys([*stage_names(old), *hashes])}
    states = {s.name: s for s in stage_states(storage, old, metas)}
    recompute: list[str] = []
    reasons: list[str] = []
    for name in selected:
        meta = metas.get(name)
        if not meta or meta.get("stage_hash") in (None, hashes[name]):
            continue
        recompute.append(name)
        changes = changed_keys(old, cfg, name)
        reasons += [c for c in changes if c not in reasons]
        if changes or _upstream_recomputed(name, selected, recompute):
            continue
        state = states.get(name)
        if state is not None and state.reason == UPSTREAM_CHANGED:
            reasons.append(f"{state.upstream} was recomputed after {name} ran")
        else:
            reasons.append(f"{name}: its upstream, its code or a setting of it changed since it ran")
    if not recompute:
        return ""
    kept = [n for n in selected if n not in recompute and metas.get(n)]
    return (f"recomputing {', '.join(recompute)} ({'; '.join(reasons) or 'upstream recomputed'})"
            + (f"; kept: {', '.join(kept)}" if kept else ""))


def _upstream_recomputed(name: str, selected: list[str], recompute: list[str]) -> bool:
    i = selected.index(name)
    return i > 0 and selected[i - 1] in recompute


def changed_keys(old: EditgenConfig, new: EditgenConfig, stage: str) -> list[str]:
    """`key old -> new` for each setting in `stage`'s hash (its section, the config it reads) that differs."""
    cls = load_stage_class(stage)
    entries = [stage, *cls.config_reads(new)]
    before, after = {}, {}
    for entry in dict.fromkeys(entries):
        before.update(_leaves(_hashed(old, entry), entry))
        after.update(_leaves(_hashed(new, entry), entry))
    out = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            out.append(f"{key} {_shown(key, before.get(key))} -> {_shown(key, after.get(key))}")
    return out


def _hashed(cfg: EditgenConfig, entry: str) -> Any:
    """What of `entry` ("section" or "section.key") enters a stage hash (pipeline.config.section_hash)."""
    node: Any = cfg
    for part in entry.split("."):
        node = getattr(node, part)
    value = node.model_dump(mode="json") if hasattr(node, "model_dump") else node
    if isinstance(value, dict) and "." not in entry:
        defaults = type(node)().model_dump(mode="json")
        value = {k: v for k, v in value.items() if k not in NON_SEMANTIC_KEYS and k not in UNHASHED_KEYS.get(entry, ())
                 and not (k in HASH_NEUTRAL_DEFAULTS.get(entry, ()) and v == defaults.get(k))}
    return value


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() if key not in NON_SEMANTIC_KEYS
                for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def _shown(key: str, value: Any) -> str:
    if value is not None and is_secret_key(key.rsplit(".", 1)[-1]):
        return REDACTED
    text = redact_text(json.dumps(value, ensure_ascii=False))
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."
