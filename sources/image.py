"""A downloaded body to the stored image: decode, verify, upright (EXIF), RGB, resize to the render size,
encode (the fetch stage's image half; `sources.http` downloads).

Sizes are checked from the header before any pixel is decoded (min_side, the max_pixels
decompression-bomb guard), so a 1x1 pixel or a 50k x 50k PNG costs nothing. So is what decoding will
cost in memory (`decode_cost`, from size, mode, format and metadata): the worker's threads share a
decoded-bytes budget (`sources.budget`), waiting for their share, and an image over the whole budget
is refused unread. Large JPEGs are decoded at a reduced scale (Pillow's draft mode) when the output
needs fewer pixels. Everything is deterministic: the same body and settings give the same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from editgen.pipeline.settings.fetch import FetchConfig
from editgen.sources.budget import DecodeBudget
from editgen.sources.phash import phash, thumbnail

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
#: Modes with an alpha band besides RGBA: converted to RGBA before the matte.
ALPHA_MODES = ("LA", "La", "PA", "RGBa")
#: The formats fetch decodes (Image.open tries only these): the web's image formats. Pillow's others (EPS
#: through Ghostscript, PSD, FITS, ...) are not web images and only widen what a hostile file can reach.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF") if f in Image.OPEN)
#: Bytes per decoded pixel a decoder holds besides the image while it loads (measured peaks, rounded up):
#: libwebp's animation decoder (Pillow's for every WebP) keeps two canvases and hands Pillow a copy;
#: libavif its YUV planes (up to 16 bits), an RGB buffer and the copy; libtiff an RGBA raster for the
#: layouts it cannot read by strips.
DECODER_EXTRA = {"WEBP": 14, "AVIF": 20, "TIFF": 4}
#: What `decode_cost` adds for what it does not model (line buffers, allocator rounding, Python objects).
COST_MARGIN, COST_FIXED = 9 / 8, 2 * 2**20
#: Pillow decompresses a PNG's text chunks as it opens the file, up to 64 MB per image, before any size
#: is known. fetch needs none of them: with this cap (process-wide; an image over it is
#: fetch_decode_error) sixteen threads opening hostile PNGs hold 64 MB, not 1 GB.
PNG_TEXT_MEMORY = 4 * 2**20
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, PNG_TEXT_MEMORY)


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
    #: 64-bit perceptual hash of the upright original, before any crop or resize (sources.phash): the same
    #: photo at another size or aspect of crop still matches a benchmark's copy or another row's.
    phash: int | None = None


def target_size(settings: FetchConfig, width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The stored image's (width, height) for an upright original of width x height: the render size
    (`size`), or for keep_ratio the original's shape fitted inside it, each side floored to a multiple of 8."""
    if settings.resize_mode != "keep_ratio":
        return size
    scale = min(size[0] / width, size[1] / height)
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def prepare_image(data: bytes, settings: FetchConfig, size: tuple[int, int],
                  budget: DecodeBudget | None = None) -> Prepared:
    """`size` is (render.width, render.height); `budget` is the worker's decoded-bytes budget (alone, a
    budget of `decode_memory_bytes` for this image). Never raises: a bad body is a reason."""
    out = Prepared()
    budget = budget or DecodeBudget(settings.decode_memory_bytes)
    try:
        img = open_image(data)
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error, ...
        return _fail(out, *_reason(exc))
    with img:
        try:
            checked = _check(img, data, settings, size, budget, out)
        except Exception as exc:  # noqa: BLE001
            return _fail(out, *_reason(exc))
        if checked is None:
            return out
        target, cost = checked
        try:
            with budget.reserve(cost):
                decoded = decode(img)
                small = thumbnail(decoded)  # the whole upright picture: a crop would miss the same photo
                resized = resize(decoded, settings, target)
                del decoded
                img.close()  # its decoded pixels go before their bytes are given back to the budget
            out.phash = phash(small)  # hashed once the full-size pixels are gone
            out.data = encode(resized, settings.encode_format, settings.quality)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
            return _fail(out, DECODE_ERROR, f"{type(exc).__name__}: {exc}")
    out.width, out.height = resized.size
    return out


def _check(img: Image.Image, data: bytes, settings: FetchConfig, size: tuple[int, int], budget: DecodeBudget,
           out: Prepared) -> tuple[tuple[int, int], int] | None:
    """Everything knowable before decoding, from the header: sizes, the scale to decode at and what the
    decode will cost (refused when over the whole budget); then the file's structure. Returns (target
    size, cost), or None when `out` says why not."""
    w, h = upright_size(img)
    out.original_width, out.original_height = w, h
    if w * h > settings.max_pixels:
        _fail(out, TOO_LARGE, f"{w}x{h} pixels > fetch.max_pixels={settings.max_pixels}")
        return None
    if min(w, h) < settings.min_side:
        _fail(out, TOO_SMALL, f"{w}x{h}: shorter side < fetch.min_side={settings.min_side}")
        return None
    target = target_size(settings, w, h, size)
    stored = img.size
    scale_for_output(img, settings, target, (w, h))
    cost = decode_cost(img, stored, target)
    if not budget.fits(cost):
        _fail(out, TOO_LARGE, f"decoding {img.format} {img.mode} {img.size[0]}x{img.size[1]} needs "
              f"~{cost / 2**20:.0f} MiB > fetch.decode_memory_bytes={budget.total}")
        return None
    with open_image(data) as fresh:
        fresh.verify()  # structure and checksums (PNG CRCs) without decoding: must come right after open
    return target, cost


def _reason(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, Image.DecompressionBombError):
        return TOO_LARGE, str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return NOT_IMAGE, f"not an image in a format fetch decodes ({', '.join(FORMATS)})"
    return DECODE_ERROR, f"{type(exc).__name__}: {exc}"


def _fail(out: Prepared, reason: str, error: str) -> Prepared:
    out.reason, out.error = reason, error[:300]
    return out


def open_image(data: bytes) -> Image.Image:
    """Opened (header only), trying only the web's image formats (`FORMATS`)."""
    return Image.open(io.BytesIO(data), formats=FORMATS)


def orientation(img: Image.Image) -> int | None:
    """The EXIF orientation the header gives. Image.getexif, not PngImageFile's own: that one decodes the
    whole image to look for an eXIf chunk after the pixel data (so a PNG bomb was decoded before its
    size was checked). Pillow caches this Exif, so `decode`'s exif_transpose turns the image by the same
    orientation; one only found after the pixel data is not used."""
    return Image.Image.getexif(img).get(0x0112)


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown, i.e. after its EXIF orientation, from the header alone."""
    w, h = img.size
    return (h, w) if orientation(img) in SWAPS_SIDES else (w, h)


def scale_for_output(img: Image.Image, settings: FetchConfig, target: tuple[int, int],
                     upright: tuple[int, int]) -> None:
    """A JPEG is decoded at the smallest 1/2^k scale still at least as large as the output needs (draft
    mode; `img.size` becomes that size): the same pixels every time, several times faster on big photos."""
    cover = settings.resize_mode != "border"
    scale = (max if cover else min)(target[0] / upright[0], target[1] / upright[1])
    if scale < 1 and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores a pixel of `mode` in: 1 for 1/L/P, 2 for I;16*, 4 for the rest (3 bands are
    padded to 4)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def decode_cost(img: Image.Image, stored: tuple[int, int], target: tuple[int, int]) -> int:
    """Most bytes `decode` + `resize` hold at once for `img` (opened and scaled, not decoded; `stored` its
    size in the file), from the header alone. The decoded image lives to the end and the steps run one
    after another, each freeing what it made but its result, so the peak is the decoded image plus the
    largest step's extra: the decoder's own buffers, the EXIF transpose's new copy (the old one goes),
    the ICC transform's output, the conversion to RGB (alpha: an RGBA copy and the matte). Besides: a
    JPEG's coefficient buffer (every DCT coefficient of the stored image, 2 bytes each, which libjpeg
    holds when the file has several scans), the ICC profile, resize's intermediate (output width x
    input height) and output, and COST_MARGIN. tests/stages/test_fetch.py measures it against the real
    peak of each case."""
    w, h = img.size
    bpp = pixel_bytes(img.mode)
    icc = img.info.get("icc_profile") or b""
    extras = [DECODER_EXTRA.get(img.format or "", 0), _rgb_extra(img)]
    if orientation(img) in range(2, 9):
        extras.append(bpp)
    if icc and img.mode in ("RGB", "CMYK"):
        extras.append(4)
    cost = w * h * (bpp + max(extras)) + 4 * len(icc) + 4 * target[0] * (max(w, h) + target[1])
    if img.format in ("JPEG", "MPO"):  # which JPEGs have several scans is not in the header: all pay
        cost += 2 * getattr(img, "layers", 4) * stored[0] * stored[1]
    return int(cost * COST_MARGIN) + COST_FIXED


def _rgb_extra(img: Image.Image) -> int:
    """Bytes per pixel `to_rgb` adds beside its input."""
    if img.mode == "RGB":
        return 0
    if img.mode == "RGBA":
        return 4  # the matte
    if img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return 8  # an RGBA copy and the matte
    if img.mode.startswith("I;16"):
        return 8  # numpy's copy, its shifted copy, the 8-bit grey and the RGB
    return 4


def decode(img: Image.Image) -> Image.Image:
    """Fully decoded (the first frame of an animation), upright, sRGB, RGB: the steps `decode_cost`
    models, in its order (the transpose in place, so the unturned pixels go)."""
    img.load()
    ImageOps.exif_transpose(img, in_place=True)
    img = to_srgb(img)
    return to_rgb(img)


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
    if img.mode in ("RGBA", *ALPHA_MODES) or (img.mode == "P" and "transparency" in img.info):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        matte = Image.new("RGB", rgba.size, MATTE)
        matte.paste(rgba, mask=rgba)  # an RGBA mask is its alpha band, with no copy of it
        return matte
    if img.mode.startswith("I;16"):
        grey = (np.asarray(img) >> 8).astype(np.uint8)  # 16-bit values: the shift fits in their own type
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
