"""Perceptual hash (DCT pHash, 64 bits) of an image, and Hamming distances between such hashes.

Why our own: no new dependency (imagehash pulls scipy). The classic recipe: grayscale, 32x32 (Lanczos,
so resizing the source first barely moves it), 2-D DCT-II (a precomputed orthonormal matrix: two
matrix products), the 8x8 lowest frequencies, one bit per coefficient: above the median of the 63 AC
coefficients (the DC bit is then always 1: brightness alone never separates two images). Resizing and
JPEG re-encoding move a handful of bits; different pictures differ in about half of them.
A hash is an unsigned 64-bit integer; published as 16 hex digits (`to_hex`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIZE = 32
LOW = 8
BITS = LOW * LOW
#: Rows of the orthonormal DCT-II matrix: C[k, n] = a_k cos(pi (2n + 1) k / 2N).
_K, _N = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
DCT = np.cos(np.pi * (2 * _N + 1) * _K / (2 * SIZE)) * np.sqrt(2 / SIZE)
DCT[0] /= np.sqrt(2)
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)
_WEIGHTS = (np.uint64(1) << np.arange(BITS, dtype=np.uint64)[::-1]).astype(np.uint64)


def thumbnail(img: Image.Image) -> Image.Image:
    """The 32x32 gray picture the hash is computed from. Resized before it is made gray, so an RGB photo
    costs no full-size copy (gray is a linear mix of the channels either way); a decoder can take this
    while the full image is in memory and hash it after freeing that (fetch's decode budget)."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS).convert("L")


def phash(img: Image.Image) -> int:
    """The 64-bit pHash of a decoded image (any mode; alpha is ignored)."""
    gray = img if img.size == (SIZE, SIZE) and img.mode == "L" else thumbnail(img)
    pixels = np.asarray(gray, dtype=np.float64)
    low = (DCT @ pixels @ DCT.T)[:LOW, :LOW].ravel()
    bits = low > np.median(low[1:])
    return int(np.sum(_WEIGHTS[bits], dtype=np.uint64))


def phash_bytes(data: bytes) -> int:
    """pHash of an encoded image (PIL.UnidentifiedImageError / OSError when it is not one)."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("L", (SIZE * 2, SIZE * 2))  # JPEG: decode at a reduced scale, enough for 32x32
        return phash(img)


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    """A 16-hex-digit hash (ValueError otherwise: a benchmark file's typo must not match nothing silently)."""
    t = text.strip().lower()
    if len(t) != 16 or any(c not in "0123456789abcdef" for c in t):
        raise ValueError(f"not a 64-bit hex hash: {text[:40]!r}")
    return int(t, 16)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array (numpy 2's bitwise_count, else a byte table)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return _BYTE_BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.int64)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def distances(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Hamming distance of every row hash to every other hash: shape (len(rows), len(others))."""
    return popcount(rows.astype(np.uint64)[:, None] ^ others.astype(np.uint64)[None, :])


def nearest(rows: np.ndarray, others: np.ndarray, block: int = 1024) -> np.ndarray:
    """Each row's smallest distance to `others` (65 when there are none), in blocks of rows so memory
    stays at block x len(others)."""
    out = np.full(len(rows), BITS + 1, np.int64)
    if len(others):
        for i in range(0, len(rows), block):
            out[i:i + block] = distances(rows[i:i + block], others).min(axis=1)
    return out


def bands(distance: int) -> list[tuple[int, int]]:
    """(shift, width) of distance + 1 bit bands covering the 64 bits: two hashes within `distance` bits
    agree exactly on at least one band (pigeonhole), so candidate pairs are found by exact band keys."""
    n = min(distance + 1, BITS)
    widths = [BITS // n + (1 if i < BITS % n else 0) for i in range(n)]
    shifts = [sum(widths[i + 1:]) for i in range(n)]
    return list(zip(shifts, widths, strict=True))


def band_values(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (hashes.astype(np.uint64) >> np.uint64(shift)) & np.uint64((1 << width) - 1)
