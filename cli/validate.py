"""`editgen validate OUT`: re-read every shard with webdataset and check it against the manifest, and
the manifest against the stages that produced it.

Checks per shard: present, size and sha256 as listed, a complete tar, the listed sample count, every
sample with input/edited images that decode, an instruction, and metadata JSON with the required
fields whose id/candidate match the sample key and whose mask_rle/mask_bbox/mask_area describe the
sample's mask.png; the eval tars (shard.eval_fraction) are checked like the kept ones, and a key in both
splits is a duplicate; the dataset card (OUT/shards/README.md) names the published splits and counts them
as the manifest does. Then the chain (cli.chain_check): every stage
complete with rows_in = kept + dropped, every partition computed from its upstream's, and the shards
holding exactly the filter stage's kept candidates. Exit 1 with one line per problem, 0 when valid.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from editgen.cli.chain_check import check_chain
from editgen.filters.pairs.masks import mask_geometry, rle_decode
from editgen.output.card import CARD, card_problems
from editgen.output.inverse import inverse_key, is_inverse_key
from editgen.output.manifest import (
    GEN_PREFIX,
    REJECTED_DIR,
    SHARDS_DIR,
    manifest_problem,
    manifest_url,
    parse_manifest,
    read_manifest,
    read_manifest_text,
)
from editgen.output.sessions import FIRST_INPUT, SESSION_FIELD, session_block
from editgen.output.shard_writer import REQUIRED_JSON, sample_key
from editgen.pipeline.sessions import turn_id
from editgen.pipeline.storage import Storage, parse_storage_options

#: Per-shard cap on sample-level lines, so one corrupt shard does not bury the rest.
MAX_LINES_PER_SHARD = 10


def _decodes(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure is the finding
        return False


def check_sample(sample: dict[str, Any]) -> list[str]:
    key = sample.get("__key__", "?")
    problems = []
    for stem in ("input", "edited"):
        found = [k for k in (f"{stem}.png", f"{stem}.jpg") if k in sample]
        if not found:
            problems.append(f"sample {key}: no {stem}.png/.jpg")
        elif not _decodes(sample[found[0]]):
            problems.append(f"sample {key}: {found[0]} does not decode")
    for name in ("mask.png", "reconstruction.png", "reconstruction.jpg"):
        if name in sample and not _decodes(sample[name]):
            problems.append(f"sample {key}: {name} does not decode")
    if not sample.get("txt", b"").strip():
        problems.append(f"sample {key}: missing or empty txt (instruction)")
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError):
        return [*problems, f"sample {key}: missing or invalid json"]
    missing = [f for f in REQUIRED_JSON if f not in meta]
    if missing:
        problems.append(f"sample {key}: json lacks {', '.join(missing)}")
    else:
        problems += _key_problems(key, meta)
    why = mask_rle_problem(meta, sample.get("mask.png"))
    if why is not None:
        problems.append(f"sample {key}: {why}")
    return problems + _session_problems(key, meta, sample)


def _session_problems(key: str, meta: dict[str, Any], sample: dict[str, Any]) -> list[str]:
    """A session turn's block names its own turn (id, candidate) and the keys output/sessions.py derives;
    its first input decodes (docs/sessions.md). Whether `prev`/`first` are published: `session_links`."""
    found = [k for k in sample if k.startswith(f"{FIRST_INPUT}.")]
    if found and not _decodes(sample[found[0]]):
        return [f"sample {key}: {found[0]} does not decode"]
    block = meta.get(SESSION_FIELD)
    if block is None:
        return []
    try:
        want = session_block(str(block["id"]), int(block["turn"]), int(meta["candidate"]))
        own = turn_id(str(block["id"]), int(block["turn"])) == str(meta["id"])
    except (KeyError, TypeError, ValueError):
        return [f"sample {key}: json session block lacks id/turn or is not numbers"]
    if block != want or not own:
        return [f"sample {key}: json session block {block} does not name this turn (expected {want})"]
    return []


def session_links(sample: dict[str, Any]) -> tuple[str | None, str] | None:
    """(prev, first) sample keys a forward session turn links to, else None."""
    try:
        meta = json.loads(sample["json"])
        block = meta.get(SESSION_FIELD) if not meta.get("inverse") else None
        return None if not isinstance(block, dict) else (block.get("prev"), str(block.get("first")))
    except (KeyError, ValueError, AttributeError):
        return None


def _key_problems(key: str, meta: dict[str, Any]) -> list[str]:
    """The key is the JSON's id/candidate (`<id>-cNNNN`), or for an inverse pair (output.inverse) its forward
    sample's key + `-inv`, named by `inverse_of`."""
    try:
        forward = sample_key(str(meta["id"]), int(meta["candidate"]))
    except (TypeError, ValueError):
        return [f"sample {key}: json candidate is not a number"]
    if meta.get("inverse") is True:
        if key != inverse_key(forward) or meta.get("inverse_of") != forward:
            return [f"sample {key}: inverse sample's key / inverse_of do not name its forward sample {forward}"]
        return []
    if is_inverse_key(key) or forward != key:
        return [f"sample {key}: json id/candidate do not match the key"]
    return []


def mask_rle_problem(meta: Any, mask_png: bytes | None) -> str | None:
    """Why the JSON's mask_rle / mask_bbox / mask_area do not describe the sample's mask.png (None: they do,
    or the sample is of before they existed)."""
    if not isinstance(meta, dict) or "mask_rle" not in meta or not mask_png:
        return None
    try:
        expected, stored = mask_geometry(bytes(mask_png)), rle_decode(meta["mask_rle"])
    except (ValueError, TypeError) as exc:
        return f"json mask_rle: {exc}"
    if not np.array_equal(stored, rle_decode(expected.rle)):
        return "json mask_rle does not match mask.png"
    if meta.get("mask_bbox") != expected.bbox or meta.get("mask_area") != expected.area:
        return "json mask_bbox/mask_area do not match mask.png"
    return None


Links = dict[str, tuple[str | None, str]]  # session turn's key -> (its prev key, its first key)


def check_shard(storage: Storage, entry: dict[str, Any]) -> tuple[list[str], int, set[str], Links]:
    """(problems, samples read, keys, session links) for one manifest entry."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    name = entry["name"]
    try:
        present = storage.exists(name)
    except ValueError:  # pipeline.errors.UnsafePathError: a name that would leave OUT
        return [f"{name!r}: unsafe shard name in the manifest (not read)"], 0, set(), {}
    if not present:
        return [f"{name}: listed in manifest but missing"], 0, set(), {}
    problems: list[str] = []
    size = storage.size(name)
    if size != entry["bytes"]:
        problems.append(f"{name}: {size} bytes, manifest says {entry['bytes']} (truncated or altered)")
    h = hashlib.sha256()
    with storage.open(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 {h.hexdigest()[:16]}... does not match the manifest (damaged; "
                        "`editgen run --set run.verify_checksums=full` re-hashes every shard and rewrites it)")
    count, keys, sample_lines = 0, set(), []
    links: Links = {}
    try:
        with storage.open(name) as f:
            for sample in group_by_keys({**d, "__url__": name} for d in tar_file_iterator(f)):
                count += 1
                key = sample["__key__"]
                if key in keys:
                    sample_lines.append(f"sample {key}: duplicate key")
                keys.add(key)
                sample_lines.extend(check_sample(sample))
                link = session_links(sample)
                if link is not None:
                    links[key] = link
    except Exception as exc:  # noqa: BLE001 - tarfile/webdataset errors on a damaged archive
        problems.append(f"{name}: unreadable tar after {count} samples ({type(exc).__name__}: {exc})")
    if count != entry["samples"]:
        problems.append(f"{name}: {count} samples, manifest says {entry['samples']}")
    extra = len(sample_lines) - MAX_LINES_PER_SHARD
    problems += [f"{name}: {line}" for line in sample_lines[:MAX_LINES_PER_SHARD]]
    if extra > 0:
        problems.append(f"{name}: ... and {extra} more sample problems")
    return problems, count, keys, links


def validate(out: str, workers: int = 2, storage_options: dict[str, Any] | None = None,
             chain: bool = True) -> list[str]:
    """All problems found in OUT/shards and, with `chain`, in the stage records behind them
    (empty list = valid)."""
    return _validate(Storage(out, storage_options or {}), workers, chain)[0]


def _validate(storage: Storage, workers: int, chain: bool) -> tuple[list[str], list[str]]:
    problems, manifest, keys = _validate_shards(storage, workers)
    if manifest is None or not chain:
        return problems, []
    from editgen.pipeline.config import out_config
    from editgen.pipeline.registry import stage_names

    # The graph of the run that wrote OUT (OUT/config.yaml): with render.source=real fetch sits between
    # ingest and instruct, and instruct's partitions must match fetch's, not ingest's.
    chain_problems, notes = check_chain(storage, stage_names(out_config(storage)), manifest, keys, workers)
    return problems + chain_problems, notes


def _validate_shards(storage: Storage, workers: int) -> tuple[list[str], dict[str, Any] | None, list[str]]:
    """(problems, manifest, published sample keys: train then eval, in shard order) for the published
    generation; a key in both splits is a duplicate."""
    try:
        manifest = parse_manifest(*read_manifest_text(storage))
    except FileNotFoundError:
        return [f"{manifest_url(storage)}: missing (has the shard stage run?)"], None, []
    except ValueError as exc:
        return [f"{manifest_url(storage)}: not valid JSON ({exc})"], None, []
    why = manifest_problem(manifest)
    if why is not None:
        return [f"{manifest_url(storage)}: not an editgen manifest ({why})"], None, []
    problems: list[str] = []
    kept_keys: list[str] = []
    sets = [("", manifest)] + [(f"{name} ", manifest[name]) for name in ("eval", "rejected") if name in manifest]
    listed: set[str] = set()
    all_keys: dict[str, str] = {}
    kept_links: Links = {}
    for label, part in sets:
        entries = part.get("shards", [])
        listed.update(e["name"] for e in entries)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(lambda e: check_shard(storage, e), entries))
        published = label != "rejected "  # train and eval: one key space, published samples
        for entry, (shard_problems, _count, keys, links) in zip(entries, results, strict=True):
            problems += shard_problems
            if published:
                kept_keys += sorted(keys)
                kept_links.update(links)
            for key in sorted(keys):
                other = all_keys.setdefault(f"{'' if published else label}{key}", entry["name"])
                if other != entry["name"]:
                    problems.append(f"{entry['name']}: sample {key} also in {other}")
        for field in ("samples", "bytes"):
            total = sum(e[field] for e in entries)
            if total != part.get(field):
                problems.append(f"manifest: {label}{field} total {part.get(field)} != shard sum {total}")
    problems += _broken_links(kept_links, set(kept_keys)) + _card(storage, manifest)
    return problems + _unlisted(storage, manifest, listed), manifest, kept_keys


def _card(storage: Storage, manifest: dict[str, Any]) -> list[str]:
    """The dataset card (OUT/shards/README.md) describes this manifest; an OUT published before cards has none."""
    try:
        text = storage.read_text(SHARDS_DIR, CARD)
    except FileNotFoundError:
        return []
    except ValueError:  # not UTF-8
        return [f"{SHARDS_DIR}/{CARD}: not UTF-8 text"]
    return [f"{SHARDS_DIR}/{line}" for line in card_problems(text, manifest)]


def _broken_links(links: Links, published: set[str]) -> list[str]:
    """Session turns whose previous turn or first turn is not a published sample (at most a few named)."""
    broken = [f"sample {key}: its session's {what} {target} is not published"
              for key, (prev, first) in sorted(links.items())
              for what, target in (("previous turn", prev), ("first turn", first))
              if target and target not in published]
    return broken[:MAX_LINES_PER_SHARD] + ([f"... and {len(broken) - MAX_LINES_PER_SHARD} more broken session links"]
                                           if len(broken) > MAX_LINES_PER_SHARD else [])


def _unlisted(storage: Storage, manifest: dict[str, Any], listed: set[str]) -> list[str]:
    """Tars in the published generation (or loose in OUT/shards) that the manifest does not name.
    Other generations are an interrupted re-shard's or not yet removed: readers never see them."""
    gen = manifest.get("generation")
    names = [f"{SHARDS_DIR}/{n}" for n in storage.listdir(SHARDS_DIR) if n.endswith(".tar")]
    for folder in (SHARDS_DIR, REJECTED_DIR) if gen else ():
        names += [f"{folder}/{gen}/{n}" for n in storage.listdir(folder, gen) if n.endswith(".tar")]
    return [f"{n}: shard not listed in the manifest" for n in names if n not in listed]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory (checks the tars OUT/manifest.json lists)")
    parser.add_argument("--workers", type=int, default=2, help="shards checked in parallel")
    parser.add_argument("--shards-only", action="store_true",
                        help="check the shards against the manifest only, not the stage records behind them")


def main(args: argparse.Namespace) -> int:
    storage = Storage(args.out, parse_storage_options(getattr(args, "storage_option", None)))
    problems, notes = _validate(storage, args.workers, chain=not args.shards_only)
    for line in problems:
        print(line)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    if problems:
        print(f"invalid: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    m = read_manifest(storage)
    others = {n for d in (SHARDS_DIR, REJECTED_DIR) for n in storage.listdir(d)
              if n.startswith(GEN_PREFIX) and n != m.get("generation")}
    if others:
        print(f"note: {len(others)} unpublished generation(s) beside the published one (an interrupted "
              "re-shard; the next run removes them)", file=sys.stderr)
    inverse = f" ({m['inverse_samples']} of them inverse pairs)" if m.get("inverse_samples") else ""
    held_out = m.get("eval")
    held = f"; eval: {len(held_out['shards'])} shards, {held_out['samples']} samples" if held_out else ""
    print(f"valid: {len(m['shards'])} shards, {m.get('samples')} samples{inverse}, {m.get('bytes')} bytes{held}")
    return 0
