"""SDEdit as an edit engine (`render.engine: sdedit`; Meng et al. 2021, "SDEdit: Guided Image Synthesis and
Editing with Stochastic Differential Equations").

The source image is noised to a strength t0 ~ U(render.sdedit.strength_range) and denoised under the edited
caption with CFG: what is kept of the source is its layout and colours at the scales the noise left intact,
what changes is everything the edited caption says differently about the whole image. So it is for global
edits (style, medium, season, weather, time of day), where Prompt-to-Prompt's attention injection holds the
layout too rigidly or, on a real photograph, needs an inversion.

The source is generated from the candidate's seed and the source caption by the P2P generation path (the
same seed and CFG scale P2P draws for that candidate, so the same source image the p2p engine renders), or
is the pair's fetched photograph (`render.source: real`), VAE-encoded once per pair. Every parameter is in
the record (`editgen.sdedit/1`: prompts, steps, scheduler, size, CFG, strength, the source), so
`regenerate` renders the same bytes from it alone (plus the photograph for a real source). The record's
reading is engines/sdedit_request.py, the heavy part engines/sdedit_render.py; this module stays torch-free
at import (the config check imports it).

UNet row-steps per candidate: (2 x E / k for a generated source shared by k candidates, 0 for a real one)
+ 2 x E(t0), the CFG doubling only with a scale > 1; E = the scheduler's UNet evaluations at `steps`
(p2p.compute.unet_evals), E(t0) = E - (steps - int(steps x t0)) evaluations of the partial schedule
(0 when int(steps x t0) = 0). docs/engines/sdedit.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from editgen.engines.base import CHAIN, EditEngine, EngineNeeds, RenderedCandidate, pair_key
from editgen.engines.record import CandidateRecord
from editgen.engines.sdedit_request import REAL, SDEditRequest

if TYPE_CHECKING:
    import pyarrow as pa

    from editgen.engines.runtime import Runtime
    from editgen.pipeline.settings.render import RenderConfig


class SDEditEngine(EditEngine):
    name = "sdedit"
    version = 1  # editgen.sdedit/1
    sessions = CHAIN  # turn t edits turn t-1's output as a photograph (docs/sessions.md)

    def __init__(self, runtime: Runtime, settings: RenderConfig) -> None:
        super().__init__(runtime, settings)
        self.images: dict[str, Any] = {}  # real sources: pair key -> decoded photograph (this partition)

    @classmethod
    def needs(cls, settings: RenderConfig) -> EngineNeeds:
        real = settings.source == REAL
        return EngineNeeds(generated_source=not real, real_image=real)

    @classmethod
    def check_settings(cls, settings: RenderConfig) -> None:
        s, lo = settings, settings.sdedit.strength_range[0]
        if int(s.steps * lo) < 1:
            raise ValueError(f"render.sdedit.strength_range: a strength of {lo:g} re-runs int({s.steps} x {lo:g}) = 0 "
                             f"of render.steps={s.steps} (a candidate equal to its source); raise the lower bound "
                             f"to at least 1/{s.steps} or the steps")
        if s.source == REAL and s.shared_sources > 1:
            raise ValueError("render.shared_sources > 1 is for generated sources (sdedit encodes a real image "
                             "once per pair anyway)")
        if s.candidates % s.shared_sources:
            raise ValueError(f"candidates ({s.candidates}) must be a multiple of shared_sources ({s.shared_sources})")

    def begin(self, table: pa.Table) -> None:
        super().begin(table)
        self.images = {}

    def group_size(self) -> int:
        return self.settings.shared_sources

    def draw(self, row: Mapping[str, Any], n: int, start: int = 0) -> list[CandidateRecord]:
        """Candidates `start`.. (whole groups of `shared_sources`): seed and source CFG scale as P2P draws
        them for the same candidate (so a generated source is P2P's), strength and the edit's CFG scale
        (`render.sdedit`) from this engine's own per-(pair, candidate) RNG."""
        from editgen.engines.sdedit_render import draw_params

        s = self.settings
        pair_id = pair_key(row["id"], s.seed)
        k = s.shared_sources
        upto = -(-(start + n) // k) * k
        common: dict[str, Any] = {"source_prompt": row["caption"], "edit_prompt": row["edited_caption"],
                                  "steps": s.steps, "scheduler": s.scheduler, "height": s.height, "width": s.width,
                                  "negative_prompt": s.negative_prompt}
        real = None
        if s.source == REAL:
            real = self._real_source(row, pair_id)
            common.update(height=int(row.get("image_height") or s.height), width=int(row.get("image_width") or s.width))
        records = []
        for i in range(start, upto):
            seed, params, generated = draw_params(s, pair_id, i, k)
            source = real if real is not None else generated
            records.append(CandidateRecord(engine=self.name, version=self.version, model=self.runtime.model,
                                           seed=seed, params={**common, **params, "source": source},
                                           pair_id=pair_id, candidate=i))
        return records

    def _real_source(self, row: Mapping[str, Any], pair_id: str) -> dict[str, Any]:
        """The record's name for the pair's photograph: a SHA-256 of its decoded pixels (any lossless copy
        regenerates)."""
        from editgen.p2p.real import decode_image, pixels_sha256

        if not row.get("image"):
            raise ValueError("row has no fetched image")
        if pair_id not in self.images:
            self.images[pair_id] = decode_image(row["image"])
        return {"kind": REAL, "pixels_sha256": pixels_sha256(self.images[pair_id])}

    def request(self, record: CandidateRecord) -> SDEditRequest:
        return SDEditRequest.of(record)

    def check(self, record: CandidateRecord) -> None:
        """Sizes, scheduler and prompts against the loaded model; an edit the text encoder cannot see (the
        captions' tokens equal within its window) is dropped as `render_edit_truncated`."""
        from editgen.engines.sdedit_render import check_request

        check_request(self.runtime.pipeline, SDEditRequest.of(record))

    def render(self, records: Sequence[CandidateRecord]) -> list[RenderedCandidate]:
        from editgen.engines.sdedit_render import render_records

        s = self.settings
        return render_records(self.runtime.pipeline, records, self.images, s.image_format, s.jpeg_quality)

    def regenerate(self, record: CandidateRecord, image: bytes | None = None,
                   image_format: str = "png") -> RenderedCandidate:
        """The record alone re-renders a generated source and its edit; a real source needs the photograph
        (any lossless copy: its decoded pixels must hash to the record's `pixels_sha256`)."""
        from editgen.engines.sdedit_render import photograph, render_records

        req = SDEditRequest.of(record)
        images = {} if req.generated else {str(record.pair_id): photograph(image, req.source["pixels_sha256"])}
        return render_records(self.runtime.pipeline, [record], images, image_format)[0]

    def row_steps(self, record: CandidateRecord) -> float:
        return SDEditRequest.of(record).row_steps()

    def flops_per_row(self, record: CandidateRecord) -> int:
        return self.runtime.flops_at(int(record.params["height"]), int(record.params["width"]))
