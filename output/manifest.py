"""Where a published dataset lives under OUT, and how its manifest is read.

    OUT/manifest.json                          the publication point: every tar, named relative to OUT
    OUT/shards/gen-<G>/edits-NNNNNN.tar        kept samples: the train split
    OUT/shards/gen-<G>/eval-NNNNNN.tar         kept samples held out for evaluation (shard.eval_fraction)
    OUT/shards/README.md                       the dataset card (output/card.py)
    OUT/rejected/gen-<G>/rejected-NNNNNN.tar   filter-rejected candidates (shard.export_rejected)

Rejected tars never sit under OUT/shards, so a directory reader cannot mix them in. The folder holds the
card and, with an eval split, the eval tars beside the train ones: a glob reader takes the train split as
`OUT/shards/**/edits-*.tar` (Ray Data: `read_webdataset(OUT/shards, file_extensions=["tar"])` reads both
splits), and `datasets.load_dataset(OUT/shards)` reads the card's split globs. A glob still sees a
generation a running re-shard is writing: the manifest (or `editgen shards OUT`, which prints its URLs) is
the one exact list, per split (`entries(manifest, split=...)`).

An OUT published by an earlier editgen (format editgen-webdataset/2) has OUT/shards/manifest.json, with
names relative to OUT/shards and rejected tars beside the kept ones; `read_manifest` reads it too, with
its names made relative to OUT, until the next run's shard stage republishes in this layout.
"""

from __future__ import annotations

import json
from typing import Any

from editgen.pipeline.records import shape_problem
from editgen.pipeline.storage import Storage

SHARDS_DIR = "shards"
REJECTED_DIR = "rejected"
MANIFEST = "manifest.json"
LEGACY_MANIFEST = (SHARDS_DIR, MANIFEST)
MANIFEST_FORMAT = "editgen-webdataset/3"
#: The sets of tars a manifest lists: top-level `shards` (train), the `eval` section, the `rejected` section.
SPLITS = ("train", "eval", "rejected")
GEN_PREFIX = "gen-"
#: What every manifest shard entry holds.
ENTRY_FIELDS: dict[str, tuple[type, ...]] = {"name": (str,), "bytes": (int,), "samples": (int,), "sha256": (str,)}


def read_manifest_text(storage: Storage) -> tuple[str, tuple[str, ...]]:
    """(text, where it was found: (MANIFEST,) or LEGACY_MANIFEST); FileNotFoundError when neither exists."""
    for parts in ((MANIFEST,), LEGACY_MANIFEST):
        try:
            return storage.read_text(*parts), parts
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
    raise FileNotFoundError(storage.path(MANIFEST))


def parse_manifest(text: str, where: tuple[str, ...] = (MANIFEST,)) -> Any:
    """The manifest's JSON, with a legacy manifest's tar names made relative to OUT (as the current
    format's are). Returns whatever the JSON holds: callers that need the exact shape check it."""
    manifest = json.loads(text)
    if where == LEGACY_MANIFEST and isinstance(manifest, dict):
        for part in (manifest, manifest.get("rejected")):
            entries = part.get("shards") if isinstance(part, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    entry["name"] = f"{SHARDS_DIR}/{entry['name']}"
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """Why a parsed manifest is not the shape the shard stage writes (None: it is); readers (validate,
    export-hf) say so in one line instead of failing on a field."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    if not isinstance(manifest.get("generation", ""), str):
        return "'generation' is not a string"
    sets = [("", manifest)] + [(f"{name}.", manifest[name]) for name in SPLITS[1:] if name in manifest]
    for label, part in sets:
        entries = part.get("shards") if isinstance(part, dict) else None
        if not isinstance(entries, list):
            return f"'{label}shards' is not a list"
        why = shape_problem(part, {"samples": (int,), "bytes": (int,)})
        if why is not None:
            return f"{label}{why}"
        for i, entry in enumerate(entries):
            why = shape_problem(entry, ENTRY_FIELDS, tuple(ENTRY_FIELDS))
            if why is not None:
                return f"{label}shards[{i}]: {why}"
    return None


def read_manifest(storage: Storage) -> dict[str, Any]:
    """The published manifest (current or legacy location), read fresh."""
    return parse_manifest(*read_manifest_text(storage))


def manifest_url(storage: Storage) -> str:
    """Where the published manifest is (the current location when there is none yet), for messages."""
    if not storage.exists(MANIFEST) and storage.exists(*LEGACY_MANIFEST):
        return storage.url(*LEGACY_MANIFEST)
    return storage.url(MANIFEST)


def entries(manifest: dict[str, Any], rejected: bool = False, split: str | None = None) -> list[dict[str, Any]]:
    """The tars of one split a manifest lists, in order: `split` one of SPLITS (default: `rejected` when
    `rejected`, else `train`, the kept tars); a split the manifest does not have lists none."""
    split = split or ("rejected" if rejected else "train")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    part = manifest if split == "train" else manifest.get(split, {})
    return list(part.get("shards", []))


def published_urls(storage: Storage, rejected: bool = False, split: str | None = None) -> list[str]:
    """Absolute URLs (local paths, or s3://... with the protocol) of the published tars of one split
    (`entries`), in manifest order; FileNotFoundError when nothing is published."""
    return [storage.url(e["name"]) for e in entries(read_manifest(storage), rejected, split)]
