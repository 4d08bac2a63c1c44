"""The P2P engine on real photographs (`render.source=real`): each pair's fetched image, inverted once.

Per partition, each pair's image (the fetch stage's `image` column) is decoded once and inverted once per
(pair, guidance) under its caption (p2p.real, `render.inversion`); every candidate of the pair renders
from that inversion. A record names its image by a SHA-256 of the decoded pixels (`real_source`), with
the inversion settings, so the record plus any lossless copy of the image (the fetch partition's bytes
or the shard's `input` member) regenerates the candidate bit for bit. The inversion's UNet work is
charged to the first candidate that used it, and counted in the partition's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from editgen.engines.base import RenderedCandidate
from editgen.engines.p2p_records import REAL, map_request, record_request, with_mask
from editgen.engines.record import CandidateRecord
from editgen.p2p.candidates import CandidateSpace, encode_result
from editgen.p2p.generate import P2PPipeline
from editgen.p2p.real import (
    RealSource,
    candidate_input,
    decode_image,
    pixels_sha256,
    prepare_source,
    reconstruction_error,
    render_from_source,
)
from editgen.pipeline.settings.render import InversionConfig, RenderConfig


def source_params(config: InversionConfig, pixels_sha: str, blend_start: float, **extra: str) -> dict[str, Any]:
    """What a record stores about its real source: enough to recompute the inversion exactly."""
    return {"pixels_sha256": pixels_sha, "inversion": config.model_dump(mode="json"), "blend_start": blend_start,
            **extra}


def render_real(p2p: P2PPipeline, record: CandidateRecord, src: RealSource, image_format: str = "png",
                jpeg_quality: int = 95) -> RenderedCandidate:
    """Render a real-image record from its prepared source: `input_image` is the real image,
    `reconstruction` the source row; the record gains the reconstruction error (vs the real image) and
    the inversion's UNet cost."""
    meta = record.params[REAL]
    config = InversionConfig.model_validate(meta["inversion"])
    res = render_from_source(p2p, record_request(record), src, config, float(meta.get("blend_start", 0.0)),
                             map_request(record))
    enc = encode_result(res, image_format, jpeg_quality)
    rec = with_mask(record, res.masks[0] if res.masks else None, (res.request.height, res.request.width))
    rec = rec.with_params(
        reconstruction=reconstruction_error(res, src),
        inversion_cost={"forward_rows": src.cost.forward_rows, "backward_rows": src.cost.backward_rows,
                        "inner_used": list(src.inversion.inner_used)},
    )
    return RenderedCandidate(
        record=rec, input_image=candidate_input(src.pixels, enc.image_format, jpeg_quality),
        edited_image=enc.edited_images[0], image_format=enc.image_format,
        mask=enc.masks[0] if enc.masks else None, reconstruction=enc.input_image, result=res,
    )


def regenerate_real(p2p: P2PPipeline, record: CandidateRecord, image: bytes | None,
                    image_format: str = "png") -> RenderedCandidate:
    """Re-render a real-image record from the image it names (any lossless copy); same bytes as the
    original render on the same device/dtype."""
    if image is None:
        raise ValueError("a real-image record regenerates only with its source image (image=...)")
    meta = record.params[REAL]
    picture = decode_image(image)
    got = pixels_sha256(picture)
    if got != meta["pixels_sha256"]:
        raise ValueError(f"image pixels sha256 {got[:12]} are not the record's {meta['pixels_sha256'][:12]}")
    config = InversionConfig.model_validate(meta["inversion"])
    src = prepare_source(p2p, picture, record.params["source_prompt"], int(record.params["steps"]),
                         float(record.params["guidance"]), config)
    return render_real(p2p, record, src, image_format)


class RealSources:
    """The render stage's real images: decoded once per partition, inverted once per (pair, guidance)."""

    def __init__(self, settings: RenderConfig) -> None:
        self.settings = settings
        self.begin()

    def begin(self) -> None:
        self.images: dict[str, Any] = {}  # pair key -> decoded PIL image
        self.sources: dict[tuple[str, float], RealSource] = {}
        self.forward_rows = self.backward_rows = 0

    def shape_space(self, space: CandidateSpace, row: Mapping[str, Any]) -> None:
        """The image's own size (fetch's keep_ratio may differ from render.height/width); one guidance."""
        if not row.get("image"):
            raise ValueError("row has no fetched image")
        space.height = int(row.get("image_height") or space.height)
        space.width = int(row.get("image_width") or space.width)
        g = self.settings.inversion.guidance
        if g is not None:
            space.guidance_range = (g, g)

    def attach(self, records: list[CandidateRecord], row: Mapping[str, Any], pair_id: str) -> list[CandidateRecord]:
        if pair_id not in self.images:
            self.images[pair_id] = decode_image(row["image"])
        meta = source_params(self.settings.inversion, pixels_sha256(self.images[pair_id]), self.settings.blend_start)
        return [r.with_params(**{REAL: meta}) for r in records]

    def render(self, p2p: P2PPipeline, records: Sequence[CandidateRecord]) -> list[RenderedCandidate]:
        s, outs = self.settings, []
        for rec in records:
            key = (str(rec.pair_id), float(rec.params["guidance"]))
            first = key not in self.sources
            if first:
                self.sources[key] = prepare_source(p2p, self.images[key[0]], rec.params["source_prompt"],
                                                   int(rec.params["steps"]), key[1], s.inversion)
                self.forward_rows += self.sources[key].cost.forward_rows
                self.backward_rows += self.sources[key].cost.backward_rows
            out = render_real(p2p, rec, self.sources[key], s.image_format, s.jpeg_quality)
            if first:  # the inversion's work, charged to the first candidate that used it (backward ~ 2 forward)
                cost = self.sources[key].cost
                out.extra_row_steps = float(cost.forward_rows + 2 * cost.backward_rows)
            outs.append(out)
        return outs

    def metrics(self) -> dict[str, float]:
        """This partition's inversion work in UNet rows (a CFG call on B prompts is 2B rows)."""
        return {"inversion_forward_rows": float(self.forward_rows),
                "inversion_backward_rows": float(self.backward_rows)}
