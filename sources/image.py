"""A downloaded body to the stored image: decode, verify, upright (EXIF), RGB, resize to the render size,
encode (the fetch stage's image half; `sources.http` downloads).

Sizes are checked from the header before any pixel is decoded (min_side, the max_pixels
decompression-bomb guard), so a 1x1 pixel or a 50k x 50k PNG costs nothing. Large JPEGs are decoded at
a reduced scale (Pillow's draft mode) when the output needs fewer pixels. Everything is deterministic:
the same body and settings give the same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.settings.fetch import FetchConfig

NOT_IMAGE = "fetch_not_image"
DECODE_ERROR = "fetch_decode_error"
TOO_SMALL = "fetch_too_small"
TOO_LARGE = "fetch_too_large"
LANCZOS = Image.Resampling.LANCZOS
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
SWAPS_SIDES = (5, 6, 7, 8)
SAVE_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: What a fully transparent pixel becomes (alpha is composited onto it): white, as most pages show it.
MATTE = (255, 255, 255)


@dataclass
class Prepared:
    """The stored image (or why there is none) and the original's upright size."""

    data: bytes | None = None
    reason: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None


def target_size(settings: FetchConfig, width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The stored image's (width, height) for an upright original of width x height: the render size
    (`size`), or for keep_ratio the original's shape fitted inside it, each side floored to a multiple of 8."""
    if settings.resize_mode != "keep_ratio":
        return size
    scale = min(size[0] / width, size[1] / height)
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def prepare_image(data: bytes, settings: FetchConfig, size: tuple[int, int]) -> Prepared:
    """`size` is (render.width, render.height). Never raises: a bad body is a reason."""
    out = Prepared()
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = upright_size(img)
            out.original_width, out.original_height = w, h
            if w * h > settings.max_pixels:
                return _fail(out, TOO_LARGE, f"{w}x{h} pixels > fetch.max_pixels={settings.max_pixels}")
            if min(w, h) < settings.min_side:
                return _fail(out, TOO_SMALL, f"{w}x{h}: shorter side < fetch.min_side={settings.min_side}")
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure and checksums (PNG CRCs) without decoding: must come right after open
    except Image.DecompressionBombError as exc:
        return _fail(out, TOO_LARGE, str(exc))
    except UnidentifiedImageError:
        return _fail(out, NOT_IMAGE, "not a known image format")
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error, ...
        return _fail(out, DECODE_ERROR, f"{type(exc).__name__}: {exc}")
    target = target_size(settings, w, h, size)
    try:
        img = _decode(data, settings, target, (w, h))
        resized = resize(img, settings, target)
        out.data = encode(resized, settings.encode_format, settings.quality)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        return _fail(out, DECODE_ERROR, f"{type(exc).__name__}: {exc}")
    out.width, out.height = resized.size
    return out


def _fail(out: Prepared, reason: str, error: str) -> Prepared:
    out.reason, out.error = reason, error[:300]
    return out


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown, i.e. after its EXIF orientation, from the header alone."""
    w, h = img.size
    orientation = img.getexif().get(0x0112)
    return (h, w) if orientation in SWAPS_SIDES else (w, h)


def _decode(data: bytes, settings: FetchConfig, target: tuple[int, int], upright: tuple[int, int]) -> Image.Image:
    """Fully decoded, upright, sRGB. A JPEG is decoded at the smallest 1/2^k scale still at least as
    large as the output needs (draft mode): the same pixels every time, several times faster on big photos."""
    img = Image.open(io.BytesIO(data))
    cover = settings.resize_mode != "border"
    scale = (max if cover else min)(target[0] / upright[0], target[1] / upright[1])
    if scale < 1 and img.format == "JPEG":
        img.draft("RGB", (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
    img.load()
    return to_rgb(to_srgb(ImageOps.exif_transpose(img)))


def to_srgb(img: Image.Image) -> Image.Image:
    """Pixels converted from an embedded ICC profile (Adobe RGB, CMYK press profiles) to sRGB, since the
    stored image carries none; left as they are when there is no profile or it does not apply."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        from PIL import ImageCms

        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(img, io.BytesIO(icc), srgb, outputMode="RGB") or img
    except Exception:  # noqa: BLE001 - a broken or mismatched profile: keep the pixels as decoded
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white, 16-bit grey scaled (not clipped) to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        matte = Image.new("RGB", rgba.size, MATTE)
        matte.paste(rgba, mask=rgba.getchannel("A"))
        return matte
    if img.mode.startswith("I;16"):
        grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")


def resize(img: Image.Image, settings: FetchConfig, target: tuple[int, int]) -> Image.Image:
    """To `target` (from `target_size`). center_crop: scale to cover, crop the centre; border: scale to
    fit, pad with border_color; keep_ratio: the fitted shape floored to multiples of 8, so the sliver the
    flooring removes is cropped from the centre, never squashed."""
    if settings.resize_mode == "border":
        return ImageOps.pad(img, target, LANCZOS, color=tuple(settings.border_color))
    return ImageOps.fit(img, target, LANCZOS)


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    """No metadata is written (EXIF, ICC): the pixels are upright already."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG")
    else:
        img.save(buf, SAVE_FORMAT[fmt], quality=quality)
    return buf.getvalue()
