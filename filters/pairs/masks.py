"""Edit masks as data: a mask image -> its COCO run-length encoding, bounding box and area fraction.

One function (`mask_geometry`) computes all three from the mask image, for the shard's sample JSON,
export-hf's columns and preview, so they always describe the `mask.png` they sit beside. A mask image
is 8-bit grey (any mode PIL can convert) at the image's size; a pixel is in the mask (may be edited)
when its value is >= 128, so a feathered mask counts its inner half.

The encoding is COCO's *uncompressed* RLE, the object `pycocotools.mask.frPyObjects(rle, h, w)` reads:
`{"size": [h, w], "counts": [c0, c1, ...]}`, the pixels taken in column-major order (down the first
column, then the next: index = x * h + y, numpy's `ravel(order="F")`) as alternating runs that START
WITH A RUN OF 0s (outside the mask; `c0` is 0 when the first pixel is in it); the counts sum to h * w.
Decoding: `np.repeat(np.arange(len(counts)) % 2, counts).reshape((h, w), order="F")`.

The bounding box is COCO's `[x, y, w, h]` in pixels (x from the left, y from the top; `[0, 0, 0, 0]`
for an empty mask) and the area the fraction of the image's pixels in the mask (0..1).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Grey level from which a pixel is in the mask.
MASK_THRESHOLD = 128


@dataclass(frozen=True)
class MaskGeometry:
    """What the sample JSON says about its `mask.png` (module doc for the conventions)."""

    rle: dict[str, list[int]]
    bbox: list[int]
    area: float

    @property
    def whole_image(self) -> bool:
        """Every pixel is in the mask (the edit had no region)."""
        h, w = self.rle["size"]
        return self.rle["counts"] == [0, h * w]


def decode_mask(png: bytes) -> np.ndarray:
    """The mask image as a bool array (h, w); ValueError when it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as img:
            grey = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError("mask does not decode") from None
    return grey >= MASK_THRESHOLD


def rle_encode(mask: np.ndarray) -> dict[str, list[int]]:
    """COCO uncompressed RLE of a 2-D bool mask (column-major runs, starting with 0s)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [int(h), int(w)], "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The bool mask (h, w) of a COCO uncompressed RLE; ValueError when the counts do not fill it."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise ValueError("rle: expected {size: [h, w], counts: [int, ...]}") from None
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != h * w:
        raise ValueError(f"rle: counts must be non-negative and sum to h * w = {h * w}")
    values = np.repeat((np.arange(counts.size) % 2).astype(bool), counts)
    return values.reshape((h, w), order="F")


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the mask's pixels; [0, 0, 0, 0] when it has none."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def mask_geometry(mask: bytes | np.ndarray) -> MaskGeometry:
    """RLE, bounding box and area fraction of a mask image (PNG bytes) or a bool array."""
    array = decode_mask(mask) if isinstance(mask, bytes | bytearray) else np.asarray(mask, dtype=bool)
    area = float(array.mean()) if array.size else 0.0
    return MaskGeometry(rle_encode(array), mask_bbox(array), area)
