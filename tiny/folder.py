"""Building a tiny model folder once, safely, however many processes ask at the same time.

Tests, the CLI, Ray workers and the bench all ask for the same tiny models. A folder carries a marker
(`editgen_tiny.json`: construction version, variant, seed...): a folder whose marker matches is reused;
otherwise the model is written to a temporary sibling and renamed into place, so no reader ever sees a
half-written model and concurrent builders of the same model all end with an equivalent folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "editgen_tiny.json"


def marker_matches(folder: Path, meta: dict[str, object]) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == meta
    except (OSError, ValueError):
        return False


def build_once(out: Path, meta: dict[str, object], write: Callable[[Path], None]) -> Path:
    """`out`, built by `write(folder)` unless its marker already matches `meta`. `write` fills a fresh
    folder whose parent is a scratch directory it may use too (removed afterwards)."""
    if marker_matches(out, meta):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model = tmp / "model"
        write(model)
        (model / MARKER).write_text(json.dumps(meta))
        if marker_matches(out, meta):
            return out  # another process finished first; its folder is equivalent
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)  # stale: another version, variant or seed
        try:
            os.replace(model, out)
        except OSError:
            if not marker_matches(out, meta):  # lost a race to an equivalent build: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
