"""Prompt-to-Prompt on real photographs: invert the fetched image once, render every candidate from it.

A real image has no seed. :func:`prepare_source` encodes it with the VAE (posterior mean) and inverts it
under its caption (``render.inversion``: DDIM, null-text or negative-prompt inversion, p2p.inversion);
:func:`render_real` then runs the ordinary P2P render from the inverted latent with the inversion's
per-step unconditional embeddings for every row of the group. Row 0 (the source caption) is therefore
the *reconstruction*; the edit rows are the edits. The shard's ``input`` is the real image itself.

Everything is deterministic, so a record plus the image regenerates the candidate exactly: the inversion
is recomputed rather than stored (null-text's 50 embeddings of 77x768 floats would be ~12 MB per pair).
The P2P engine's records (engines/p2p_real.py) name the image by a SHA-256 of its decoded RGB pixels
(:func:`pixels_sha256`), so any lossless copy serves: the fetch partition's bytes or the shard's ``input``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from editgen.filters.pairs.fidelity import image_pixels, psnr, ssim
from editgen.p2p import inversion as inv
from editgen.p2p.candidates import encode_image
from editgen.p2p.generate import P2PPipeline, RenderRequest, RenderResult, Start, render
from editgen.p2p.word_maps import MapRequest
from editgen.pipeline.settings.render import InversionConfig


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


def render_from_source(p2p: P2PPipeline, request: RenderRequest, src: RealSource, config: InversionConfig,
                       blend_start: float, maps: MapRequest | None = None) -> RenderResult:
    """Render one P2P group from a prepared source with its inversion's per-step unconditional embeddings:
    row 0 is the reconstruction, the edit rows the edits (DiffEdit-masked where ``config.mask`` says);
    ``maps`` gathers word maps for an edit mask (no image changes)."""
    mask, mask_start = _mask(p2p, src, request, config, blend_start)
    start = Start(src.latent, src.inversion.uncond, mask, mask_start)
    return render(p2p, [request], starts=[start], maps=[maps])[0]


def reconstruction_error(res: RenderResult, src: RealSource) -> dict[str, float]:
    """PSNR and SSIM of the rendered reconstruction (row 0) vs the real image."""
    recon = torch.from_numpy(np.ascontiguousarray(res.images[0])).permute(2, 0, 1)[None].float()
    return {"psnr": psnr(recon, src.pixels), "ssim": ssim(recon, src.pixels)}


def candidate_input(pixels: torch.Tensor, fmt: str, quality: int) -> bytes:
    """The real image encoded like the render's outputs (same pixels as the fetched image)."""
    return encode_image(pixels[0].permute(1, 2, 0).numpy(), fmt, quality)
