"""Where editgen keeps what it builds or measures once per machine (tiny models, UNet FLOP counts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDITGEN_CACHE`` (when set and not empty) or ``~/.cache/editgen``."""
    return Path(os.environ.get("EDITGEN_CACHE") or Path.home() / ".cache" / "editgen")
