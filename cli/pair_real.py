"""``editgen pair --image PATH_OR_URL``: the same P2P edit on one real photograph.

The image is read (a local file, or downloaded with the fetch stage's client and rules), resized to
the render size as the fetch stage would, encoded and inverted (``--inversion``), then edited from the
inverted latent (engines/p2p_real.py). Writes input / reconstruction / edited / mask (when masked) and
params.json; ``engines.regenerate.regenerate(params, image=input bytes)`` reproduces the images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editgen.pipeline.settings.fetch import FetchConfig
from editgen.pipeline.settings.render import InversionConfig

if TYPE_CHECKING:
    from editgen.engines.base import RenderedCandidate


class RealImageError(ValueError):
    """The image cannot be read or used: one line, exit 2."""


def check_real_args(args: argparse.Namespace, request: Any) -> Any:
    """Flags that only make sense with --image; returns the request sized to the image."""
    if args.scheduler != "ddim":
        raise RealImageError(f"--image inverts with DDIM: --scheduler must be ddim (got {args.scheduler})")
    if args.mask == "local_blend" and not args.blend_words:
        raise RealImageError("--mask local_blend needs --blend-words")
    try:
        InversionConfig(method=args.inversion, inner_steps=args.inner_steps, mask=args.mask)
    except ValueError as exc:
        raise RealImageError(f"--inner-steps: {str(exc).splitlines()[-1].strip()}") from None
    data = read_image(args.image)
    prepared = _prepare(data, args.resize_mode, (request.width, request.height))
    args.image_bytes = prepared.data
    return dataclasses.replace(request, width=int(prepared.width), height=int(prepared.height))


def read_image(source: str) -> bytes:
    """The bytes of a local file or of a URL (the fetch stage's client: size limit, timeouts, opt-outs)."""
    if not source.startswith(("http://", "https://")):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise RealImageError(f"--image {source}: {exc.strerror or exc}") from None
    from editgen.sources.http import Fetcher

    # a URL the user names is not a dataset row: a private or local address is allowed
    fetcher = Fetcher(FetchConfig(block_private_addresses=False))
    try:
        d = fetcher.fetch(source)
    finally:
        fetcher.close()
    if d.data is None:
        raise RealImageError(f"--image {source}: {d.reason}: {d.error}")
    return d.data


def _prepare(data: bytes, mode: str, size: tuple[int, int]) -> Any:
    from editgen.sources.image import prepare_image

    prepared = prepare_image(data, FetchConfig(resize_mode=mode, encode_format="png", min_side=8), size)
    if prepared.data is None:
        raise RealImageError(f"--image: {prepared.reason}: {prepared.error}")
    return prepared


def write_outputs(folder: Path, out: Any, params: dict[str, Any], modes: list[str]) -> list[str]:
    """input / [reconstruction] / edited / [mask] images and params.json; returns the image file names."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = "png" if out.image_format == "png" else "jpg"
    files = {f"input.{ext}": out.input_image}
    if out.reconstruction is not None:
        files[f"reconstruction.{ext}"] = out.reconstruction
    files[f"edited.{ext}"] = out.edited_image
    if out.mask is not None:
        files["mask.png"] = out.mask
    for name, data in files.items():
        (folder / name).write_bytes(data)
    params = dict(params, modes=modes, files=list(files))
    (folder / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return list(files)


def real_source(args: argparse.Namespace) -> dict[str, Any]:
    """The record parameters naming the prepared image (its pixels' SHA-256, the inversion, the path)."""
    from editgen.engines.p2p_real import REAL, source_params
    from editgen.p2p.real import decode_image, pixels_sha256

    config = InversionConfig(method=args.inversion, inner_steps=args.inner_steps, mask=args.mask)
    sha = pixels_sha256(decode_image(args.image_bytes))
    return {REAL: source_params(config, sha, args.blend_start, image=args.image)}


def summary(out: RenderedCandidate, modes: list[str]) -> str:
    """What the command prints after its file list: the mode, and a real image's reconstruction error."""
    recon = out.record.params.get("reconstruction")
    inversion = (out.record.params.get("real_source") or {}).get("inversion", {}).get("method")
    if not recon:
        return f"mode: {modes[0]}"
    return (f"mode: {modes[0]}, inversion: {inversion}, reconstruction PSNR {recon['psnr']:.1f} dB, "
            f"SSIM {recon['ssim']:.3f}")
