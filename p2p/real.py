"""Prompt-to-Prompt on real photographs: invert the fetched image once, render every candidate from it.

A real image has no seed. :func:`prepare_source` encodes it with the VAE (posterior mean) and inverts it
under its caption (``render.inversion``: DDIM, null-text or negative-prompt inversion, p2p.inversion);
:func:`render_real` then runs the ordinary P2P render from the inverted latent with the inversion's
per-step unconditional embeddings for every row of the group. Row 0 (the source caption) is therefore
the *reconstruction*; the edit rows are the edits. The shard's ``input`` is the real image itself.

Everything is deterministic, so a record plus the image regenerates the candidate exactly: the inversion
is recomputed rather than stored (null-text's 50 embeddings of 77x768 floats would be ~12 MB per pair).
The record names the image by a SHA-256 of its decoded RGB pixels, so any lossless copy serves: the
fetch partition's bytes or the shard's ``input`` member.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from editgen.filters.pairs.fidelity import image_pixels, psnr, ssim
from editgen.p2p import inversion as inv
from editgen.p2p.candidates import CandidateOutput, candidate_output, encode_image, record_to_request
from editgen.p2p.generate import P2PPipeline, RenderRequest, Start, render
from editgen.pipeline.settings.render import InversionConfig

#: Record keys of a real-image candidate (beside the generated-candidate keys of p2p.candidates).
SOURCE_KEY = "real_source"


@dataclass
class RealSource:
    """One photograph prepared for P2P under one caption, step count and guidance scale."""

    pixels: torch.Tensor  # (1, 3, H, W) in [0, 1], the image as decoded
    latent: torch.Tensor  # its VAE latent (1, C, h, w)
    inversion: inv.Inversion
    cost: inv.InversionCost


def decode_image(data: bytes) -> Image.Image:
    """The stored image bytes as an RGB PIL image (fetch already applied EXIF orientation and the resize)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def pixels_sha256(image: Image.Image) -> str:
    """SHA-256 of the RGB pixels and their shape: the same for every lossless encoding of the image."""
    arr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return hashlib.sha256(f"{arr.shape}".encode() + arr.tobytes()).hexdigest()


def prepare_source(p2p: P2PPipeline, image: Image.Image, caption: str, steps: int, guidance: float,
                   config: InversionConfig) -> RealSource:
    """Encode and invert ``image`` under ``caption`` (the DDIM grid of ``steps``; null-text optimises for
    ``guidance``). Raises ValueError for SDXL (inversion handles SD 1.x/2.x only)."""
    latent = inv.encode_image(p2p, image)
    result = inv.invert(p2p, latent, caption, steps, guidance, config)
    cost = inv.inversion_cost(config.method, steps, config.inner_steps, result.inner_used or None)
    return RealSource(image_pixels(image, np.float32), latent, result, cost)


def _mask(p2p: P2PPipeline, src: RealSource, request: RenderRequest, config: InversionConfig,
          blend_start: float) -> tuple[torch.Tensor | None, int]:
    """DiffEdit's mask for the request's (first) edit, and the step it applies from."""
    if config.mask != "diffedit" or not request.edits:
        return None, 0
    d = config.diffedit
    emb = inv.text_embeddings(p2p, [request.source, request.edits[0].prompt])
    mask, _ = inv.diffedit_mask(p2p, src.latent, emb[:1], emb[1:], d.n_draws, d.strength, d.threshold, d.seed)
    return mask, int(round(blend_start * request.steps))


def source_settings(config: InversionConfig, pixels_sha: str, blend_start: float) -> dict[str, Any]:
    """What a record stores about its real source: enough to recompute the inversion exactly."""
    return {"pixels_sha256": pixels_sha, "inversion": config.model_dump(mode="json"), "blend_start": blend_start}


def render_real(p2p: P2PPipeline, records: Sequence[Mapping[str, Any]], src: RealSource,
                image_format: str = "png", jpeg_quality: int = 95) -> list[CandidateOutput]:
    """Render real-image candidate records (one group each) from one prepared source; each output's
    ``input_image`` is the real image, ``reconstruction`` the source row, and its record gains the
    reconstruction error (vs the real image) and the inversion's UNet cost."""
    outs = []
    for rec in records:
        meta = rec[SOURCE_KEY]
        config = InversionConfig.model_validate(meta["inversion"])
        request = record_to_request(rec)
        mask, mask_start = _mask(p2p, src, request, config, float(meta.get("blend_start", 0.0)))
        start = Start(src.latent, src.inversion.uncond, mask, mask_start)
        res = render(p2p, [request], starts=[start])[0]
        out = candidate_output(dict(rec), res, image_format, jpeg_quality)
        recon = torch.from_numpy(np.ascontiguousarray(res.images[0])).permute(2, 0, 1)[None].float()
        out.record["reconstruction"] = {"psnr": psnr(recon, src.pixels), "ssim": ssim(recon, src.pixels)}
        out.record["inversion_cost"] = {"forward_rows": src.cost.forward_rows,
                                        "backward_rows": src.cost.backward_rows,
                                        "inner_used": list(src.inversion.inner_used)}
        out.reconstruction = out.input_image
        out.input_image = candidate_input(src.pixels, out.image_format, jpeg_quality)
        outs.append(out)
    return outs


def candidate_input(pixels: torch.Tensor, fmt: str, quality: int) -> bytes:
    """The real image encoded like the render's outputs (same pixels as the fetched image)."""
    return encode_image(pixels[0].permute(1, 2, 0).numpy(), fmt, quality)


def regenerate_real(record: Mapping[str, Any], image: bytes, p2p: P2PPipeline,
                    image_format: str = "png") -> CandidateOutput:
    """Re-render a real-image record from the image it names (any lossless copy: the fetched bytes or the
    shard's input member); same bytes as the original render on the same device/dtype."""
    meta = record[SOURCE_KEY]
    picture = decode_image(image)
    got = pixels_sha256(picture)
    if got != meta["pixels_sha256"]:
        raise ValueError(f"image pixels sha256 {got[:12]} are not the record's {meta['pixels_sha256'][:12]}")
    config = InversionConfig.model_validate(meta["inversion"])
    src = prepare_source(p2p, picture, record["source_prompt"], int(record["steps"]), float(record["guidance"]),
                         config)
    return render_real(p2p, [record], src, image_format)[0]
