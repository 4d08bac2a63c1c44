"""Candidate draws and image encoding: what Prompt-to-Prompt renders for one candidate, and its bytes.

InstructPix2Pix rendered several candidates per caption pair, each with its own seed, a P2P window
fraction ``p ~ U(0.1, 0.9)`` and a CFG scale ``~ U(7.5, 15)``, then kept the ones CLIP liked. Here the
randomness comes from a per-(pair, candidate) RNG so reruns resample the same parameters
(:func:`sample_requests`). A request's render inputs are JSON-able (:func:`request_params` /
:func:`params_request`): the P2P engine (engines/p2p.py) stores them in its candidate records, from
which it renders the same images again bit for bit on the same device and dtype.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from editgen.p2p.controls import BlendConfig, EditControl
from editgen.p2p.generate import RenderRequest, RenderResult

IMAGE_FORMATS = ("png", "jpeg")
#: Keys of a request's render inputs (besides its seed, which every engine's record holds itself).
REQUEST_KEYS = ("source_prompt", "edits", "steps", "guidance", "height", "width", "scheduler", "negative_prompt")


@dataclass
class CandidateSpace:
    """Ranges and fixed settings candidates are drawn from (defaults follow InstructPix2Pix)."""

    p_range: tuple[float, float] = (0.1, 0.9)
    guidance_range: tuple[float, float] = (7.5, 15.0)
    steps: int = 50
    scheduler: str = "ddim"
    mode: str = "auto"  # or replace / refine / reweight / ip2p
    tie_windows: bool = True  # one p for both cross and self windows (IP2P sampled a single p)
    self_max_res: int | None = 32
    height: int = 512
    width: int = 512
    negative_prompt: str | None = None


def candidate_rng(pair_id: str, index: int) -> random.Random:
    """Deterministic RNG for candidate ``index`` of ``pair_id`` (stable across runs and machines)."""
    digest = hashlib.sha256(f"{pair_id}\x00{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class DrawSpace(Protocol):
    """What a candidate's draws depend on: CandidateSpace, or the render settings of an engine that
    reuses P2P's source image for the same candidate."""

    p_range: tuple[float, float]
    guidance_range: tuple[float, float]
    tie_windows: bool


def draw_candidate(pair_id: str, index: int, space: DrawSpace) -> tuple[int, float, float, float]:
    """(seed, cross window p, self window p, CFG scale) of candidate ``index``, in the one order every
    engine relies on: a generated source rendered by another engine is P2P's for the same candidate."""
    rng = candidate_rng(pair_id, index)
    seed = rng.randrange(2**31)
    p_cross = rng.uniform(*space.p_range)
    p_self = p_cross if space.tie_windows else rng.uniform(*space.p_range)
    return seed, p_cross, p_self, rng.uniform(*space.guidance_range)


def source_draw(pair_id: str, index: int, space: DrawSpace) -> tuple[int, float]:
    """(seed, CFG scale) of candidate ``index``'s generated source: P2P's draws for the same candidate."""
    seed, _, _, guidance = draw_candidate(pair_id, index, space)
    return seed, guidance


def sample_requests(
    pair_id: str,
    source: str,
    edit: str,
    n: int,
    *,
    space: CandidateSpace | None = None,
    edit_kind: str | None = None,
    blend: BlendConfig | Mapping[str, Any] | None = None,
    reweight: Mapping[str, float] | None = None,
) -> list[RenderRequest]:
    """The requests of candidates ``0..n-1`` of one caption pair, parameters drawn from :func:`candidate_rng`."""
    space = space or CandidateSpace()
    requests = []
    for i in range(n):
        seed, p_cross, p_self, guidance = draw_candidate(pair_id, i, space)
        control = EditControl(
            prompt=edit,
            mode=space.mode,
            cross_replace=p_cross,
            self_replace=p_self,
            self_max_res=space.self_max_res,
            reweight=dict(reweight or {}),
            blend=BlendConfig(**blend) if isinstance(blend, Mapping) else blend,
            edit_kind=edit_kind,
        )
        requests.append(RenderRequest(
            source=source,
            edits=[control.resolve(source)],
            seed=seed,
            steps=space.steps,
            guidance=guidance,
            height=space.height,
            width=space.width,
            scheduler=space.scheduler,
            negative_prompt=space.negative_prompt,
        ))
    return requests


def request_params(request: RenderRequest) -> dict[str, Any]:
    """A request's render inputs as JSON-able values (its seed apart: see REQUEST_KEYS)."""
    return {
        "source_prompt": request.source,
        "edits": [e.resolve(request.source).to_dict() for e in request.edits],
        "steps": int(request.steps),
        "guidance": float(request.guidance),
        "height": int(request.height),
        "width": int(request.width),
        "scheduler": request.scheduler,
        "negative_prompt": request.negative_prompt,
    }


def params_request(params: Mapping[str, Any], seed: int) -> RenderRequest:
    """Inverse of :func:`request_params` (KeyError names a missing input)."""
    return RenderRequest(
        source=params["source_prompt"],
        edits=[EditControl.from_dict(e) for e in params["edits"]],
        seed=int(seed),
        steps=int(params["steps"]),
        guidance=float(params["guidance"]),
        height=int(params["height"]),
        width=int(params["width"]),
        scheduler=params["scheduler"],
        negative_prompt=params.get("negative_prompt"),
    )


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode a float HWC image in [0, 1] (diffusers' rounding) as PNG or JPEG bytes."""
    return encode_uint8(to_uint8(image), fmt, quality)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float HWC image in [0, 1] as the uint8 pixels its encoding holds (diffusers' rounding)."""
    return (image * 255).round().astype("uint8")


def encode_uint8(pixels: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode uint8 HWC pixels as PNG or JPEG bytes."""
    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    pil = Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt == "png":
        pil.save(buf, format="PNG")
    else:
        pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_mask(mask: torch.Tensor, size: tuple[int, int]) -> bytes:
    """Latent-grid bool mask -> PNG (8-bit, 255 = edited region) at image size (nearest)."""
    pil = Image.fromarray(mask.cpu().numpy().astype("uint8") * 255)
    pil = pil.resize((size[1], size[0]), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class EncodedResult:
    """A render result's images as bytes: the source row, each edit row, each edit's mask (or None)."""

    input_image: bytes
    edited_images: list[bytes]
    masks: list[bytes | None]
    image_format: str = "png"


def encode_result(res: RenderResult, fmt: str = "png", quality: int = 95) -> EncodedResult:
    """Encode a render result (PNG or JPEG images, PNG masks at image size)."""
    hw = (res.request.height, res.request.width)
    return EncodedResult(
        input_image=encode_image(res.images[0], fmt, quality),
        edited_images=[encode_image(img, fmt, quality) for img in res.images[1:]],
        masks=[None if m is None else encode_mask(m, hw) for m in res.masks],
        image_format=image_format_name(fmt),
    )


def image_format_name(fmt: str) -> str:
    return "jpeg" if fmt.lower() in ("jpg", "jpeg") else "png"
