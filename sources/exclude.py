"""Benchmark files for decontamination (`ingest.exclude`): their captions, URLs and image hashes.

A file is parquet or JSON lines (by extension: .parquet / .jsonl / .json). Columns are found by name,
case-insensitively: captions in CAPTION_COLUMNS, URLs in URL_COLUMNS, encoded images in IMAGE_COLUMNS
(bytes, or Hugging Face's `{"bytes": ..., "path": ...}` image struct), 16-hex-digit pHashes in
HASH_COLUMNS. Captions and URLs are normalised exactly as ingest's dedup keys are (caption_key of the
cleaned caption; private_url_key), so a benchmark caption matches a row that dedup would call its
duplicate. Images become pHashes (sources.phash). A file without any usable column, unreadable, or
with an undecodable image or a malformed hash is one InputError line naming the file and row: a
decontamination list that silently matches nothing is worse than none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import UnidentifiedImageError

from editgen.filters.captions.clean import caption_key, clean_caption, private_url_key
from editgen.pipeline.errors import InputError
from editgen.pipeline.storage import open_filesystem
from editgen.sources.phash import from_hex, phash_bytes

CAPTION_COLUMNS = ("caption", "text", "input_caption", "output_caption", "edited_caption", "prompt")
URL_COLUMNS = ("url", "image_url")
IMAGE_COLUMNS = ("image", "source_img", "target_img", "input_image", "edited_image", "input", "output")
HASH_COLUMNS = ("phash", "image_hash", "image_phash")
KINDS = {"caption": CAPTION_COLUMNS, "url": URL_COLUMNS, "image": IMAGE_COLUMNS, "hash": HASH_COLUMNS}


@dataclass
class ExcludeSet:
    """What the benchmark files hold, normalised; `digest` is of the files' bytes (their identity)."""

    captions: set[str] = field(default_factory=set)
    urls: set[str] = field(default_factory=set)
    hashes: list[int] = field(default_factory=list)
    digest: str = ""

    def hash_array(self) -> np.ndarray:
        return np.unique(np.array(self.hashes, dtype=np.uint64))


def columns_by_kind(names: list[str]) -> dict[str, list[str]]:
    """The file's columns of each kind (matched case-insensitively)."""
    return {kind: [n for n in names if n.lower() in wanted] for kind, wanted in KINDS.items()}


def _rows(fs: Any, path: str, url: str, images: bool) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """(column names, rows as dicts) of one parquet or JSON-lines file (a parquet file's image columns
    are not read when images=False)."""
    if path.endswith(".parquet"):
        pf = pq.ParquetFile(fs.open(path, "rb"))
        names = pf.schema_arrow.names
        cols = [n for kind, found in columns_by_kind(names).items() if images or kind != "image" for n in found]
        return names, (row for b in pf.iter_batches(batch_size=256, columns=cols) for row in b.to_pylist())
    if path.endswith((".jsonl", ".json")):
        rows = []
        with fs.open(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        raise InputError(f"{url}: line {n}: not JSON ({exc})") from None
                    if not isinstance(row, dict):
                        raise InputError(f"{url}: line {n}: expected a JSON object, got {type(row).__name__}")
                    rows.append(row)
        return sorted({k for r in rows for k in r}), iter(rows)
    raise InputError(f"{url}: ingest.exclude takes .parquet or .jsonl files")


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature
        value = value.get("bytes")
    return value if isinstance(value, bytes | bytearray) and value else None


def _add_row(out: ExcludeSet, row: dict[str, Any], kinds: dict[str, list[str]], where: str,
             images: bool = True) -> int:
    """Add one row's usable values to `out`; returns how many it had."""
    used = 0
    for col in kinds["caption"]:
        key = caption_key(clean_caption(row[col])) if isinstance(row.get(col), str) else ""
        if key:
            out.captions.add(key)
            used += 1
    for col in kinds["url"]:
        key = private_url_key(row.get(col)) if isinstance(row.get(col), str) else None
        if key:
            out.urls.add(key)
            used += 1
    for col in kinds["hash"]:
        if row.get(col) is not None:
            try:
                out.hashes.append(from_hex(str(row[col])))
            except ValueError as exc:
                raise InputError(f"{where}, column {col}: {exc}") from None
            used += 1
    for col in kinds["image"]:
        data = _image_bytes(row.get(col))
        if data is not None and images:
            try:
                out.hashes.append(phash_bytes(bytes(data)))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise InputError(f"{where}, column {col}: not a decodable image ({exc})") from None
        used += data is not None
    return used


def read_file(url: str, out: ExcludeSet, digest: Any, images: bool = True) -> None:
    """Add one benchmark file to `out` (and its bytes to `digest`); images=False skips decoding images."""
    try:
        fs, path = open_filesystem(url)
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        names, rows = _rows(fs, path, url, images)
        kinds = columns_by_kind(names)
        if not any(kinds.values()):
            raise InputError(f"{url}: no caption, url, image or hash column (has: {', '.join(names[:12]) or 'none'}; "
                             f"expected one of {', '.join(c for cs in KINDS.values() for c in cs)})")
        used = sum(_add_row(out, row, kinds, f"{url}: row {n}", images) for n, row in enumerate(rows))
        if not used and images:  # (without images, an image-only file was checked by the preflight)
            found = ", ".join(c for cs in kinds.values() for c in cs)
            raise InputError(f"{url}: no usable value in its columns {found} (empty, null or not text)")
    except FileNotFoundError:
        raise InputError(f"{url}: no such file (ingest.exclude)") from None
    except PermissionError:
        raise InputError(f"{url}: permission denied (ingest.exclude)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{url}: cannot read benchmark file ({exc})") from None


def load_exclude(urls: list[str], images: bool = True) -> ExcludeSet:
    """Every benchmark file's captions, URLs and image hashes (images=False: no image decoded, for the
    caption and URL checks alone), with a digest of their bytes (in order)."""
    out = ExcludeSet()
    digest = hashlib.sha256()
    for url in urls:
        digest.update(url.encode("utf-8", "surrogatepass") + b"\x00")
        read_file(url, out, digest, images)
    out.captions.discard("")
    out.digest = digest.hexdigest()[:32] if urls else ""
    return out
