"""``editgen pair --image PATH_OR_URL``: the same P2P edit on one real photograph.

The image is read (a local file, or downloaded with the fetch stage's client and rules), resized to
the render size as the fetch stage would, encoded and inverted (``--inversion``), then edited from the
inverted latent (p2p.real). Writes input / reconstruction / edited / mask (when masked) and params.json;
``p2p.regenerate.regenerate(params, image=input bytes)`` reproduces the images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from editgen.pipeline.settings.fetch import FetchConfig
from editgen.pipeline.settings.render import InversionConfig


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


def render_real_pair(args: argparse.Namespace, p2p: Any, record: dict[str, Any], modes: list[str]) -> int:
    """Invert and edit; write the files; returns the exit code (RealImageError: a model that cannot invert)."""
    from editgen.p2p.real import SOURCE_KEY, decode_image, pixels_sha256, prepare_source, render_real

    config = InversionConfig(method=args.inversion, inner_steps=args.inner_steps, mask=args.mask)
    picture = decode_image(args.image_bytes)
    record[SOURCE_KEY] = {"pixels_sha256": pixels_sha256(picture), "inversion": config.model_dump(mode="json"),
                          "blend_start": args.blend_start, "image": args.image}
    try:
        src = prepare_source(p2p, picture, record["source_prompt"], int(record["steps"]),
                             float(record["guidance"]), config)
    except ValueError as exc:
        raise RealImageError(str(exc)) from None
    out = render_real(p2p, [record], src, args.format)[0]
    files = write_outputs(Path(args.out), out, dict(out.record, explicit=False), modes)
    rec = out.record["reconstruction"]
    print(f"wrote {', '.join(files)} and params.json to {args.out} (mode: {modes[0]}, inversion: {args.inversion}, "
          f"reconstruction PSNR {rec['psnr']:.1f} dB, SSIM {rec['ssim']:.3f})")
    return 0
