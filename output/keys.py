"""Sample keys: one name per (row id, candidate), safe as a tar member prefix and a WebDataset key."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_KEY_STEM = 64


def sample_key(record_id: str, candidate: int) -> str:
    """`<id>-cNNNN` with only [A-Za-z0-9_-]: no dots (webdataset splits there), no '/' or '..', never
    `__meta__`-like; ids that needed sanitizing or truncating get a hash suffix to stay unique."""
    stem = _UNSAFE.sub("_", record_id).strip("_-")[:_MAX_KEY_STEM]
    if stem != record_id or not stem:
        digest = hashlib.sha1(record_id.encode("utf-8")).hexdigest()[:10]
        stem = f"{stem}_{digest}" if stem else digest
    return f"{stem}-c{int(candidate):04d}"
