"""Where a run's published shards are: the manifest names them (OUT/shards/gen-<G>/<prefix>-NNNNNN.tar)."""

from __future__ import annotations

import json
from pathlib import Path


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "shards" / "manifest.json").read_text())


def shard_path(out: Path, index: int, rejected: bool = False) -> Path:
    """Path of the index-th published (or rejected) shard."""
    m = manifest(out)
    entries = m["rejected"]["shards"] if rejected else m["shards"]
    return Path(out) / "shards" / entries[index]["name"]


def tar_files(out: Path) -> list[Path]:
    """Every tar under OUT/shards, whatever generation: what a `**/*.tar` glob would see."""
    return sorted((Path(out) / "shards").rglob("*.tar"))
