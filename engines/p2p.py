"""Prompt-to-Prompt as an edit engine (`render.engine: p2p`, the default).

Each pair's candidates are drawn as InstructPix2Pix drew them (a seed, a P2P window p ~ U(p_range), a
CFG scale ~ U(guidance_range), from a per-(pair, candidate) RNG) and rendered with the P2P attention
controls (p2p/); the source is generated from the candidate's seed (`render.source: generated`) or is the
pair's fetched photograph, inverted (`render.source: real`, engines/p2p_real.py). Its settings are the
render section's P2P keys (pipeline/settings/render.py). Records: `editgen.p2p/1`, the layout P2P
records always had (engines/p2p_records.py), so images are byte-identical to the code before engines; every
candidate also carries an edit mask (LocalBlend's, DiffEdit's, or else the changed words' cross-attention
maps gathered during the same render: no extra UNet work, no image changed), described in its record's `mask`.
UNet row-steps per candidate: 2 (1 + 1) x steps with CFG (2 (1 + k) / k x steps with k shared sources),
plus a real image's inversion once per (pair, guidance) (docs/compute.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from editgen.engines.base import GROUP, EditEngine, EngineNeeds, RenderedCandidate, SessionDraw, pair_key
from editgen.engines.p2p_drops import truncation_drops
from editgen.engines.record import CandidateRecord
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.settings.render import RenderConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from editgen.engines.p2p_real import RealSources
    from editgen.engines.runtime import Runtime
    from editgen.p2p.candidates import CandidateSpace


def blend_words(row: Mapping[str, Any]) -> list[str]:
    """Words whose cross-attention marks the edited region: the swapped words, else the added ones."""
    words = list(row.get("source_words") or []) + list(row.get("target_words") or [])
    if not words:
        words = list(row.get("changed_words") or [])
    seen: list[str] = []
    for w in words:
        if w and w not in seen:
            seen.append(w)
    return seen


class P2PEngine(EditEngine):
    name = "p2p"
    version = 1  # editgen.p2p/1: what engines/p2p_records.py writes (ENGINE, VERSION there; a test checks)
    sessions = GROUP  # one group per session candidate from the same noise (engines/p2p_sessions.py)

    def __init__(self, runtime: Runtime, settings: RenderConfig) -> None:
        super().__init__(runtime, settings)
        self.real: RealSources | None = None
        if settings.source == "real":
            from editgen.engines.p2p_real import RealSources

            self.real = RealSources(settings)

    @classmethod
    def needs(cls, settings: RenderConfig) -> EngineNeeds:
        real = settings.source == "real"
        return EngineNeeds(generated_source=not real, real_image=real)

    @classmethod
    def reconstructs(cls, settings: RenderConfig) -> bool:
        return settings.source == "real"

    @classmethod
    def check_settings(cls, settings: RenderConfig) -> None:
        s = settings
        if s.candidates % s.shared_sources:
            raise ValueError(f"candidates ({s.candidates}) must be a multiple of shared_sources ({s.shared_sources})")
        if s.source == "real" and s.shared_sources > 1:
            raise ValueError("shared_sources > 1 is for generated sources (a real image's inversion is already "
                             "shared by its candidates)")
        if s.source == "real" and s.scheduler != "ddim":
            raise ValueError(f"source=real inverts the image with DDIM: scheduler must be ddim (got {s.scheduler})")

    @classmethod
    def check_sessions(cls, settings: RenderConfig) -> None:
        """A session is one group from one generated source: not shared by candidates, not a real photograph
        (its inversion renders one edit), not LocalBlend-ed (each turn's mask is its own words')."""
        if settings.shared_sources > 1:
            raise ValueError("render.shared_sources must be 1 (a session's turns already share one source)")
        if settings.source == "real":
            raise ValueError("render.source=real: P2P renders sessions from a generated source only")
        if settings.local_blend:
            raise ValueError("render.local_blend: a session's turns are masked by their own words; set it false")

    def setup(self) -> None:
        p2p = self.runtime.pipeline
        if self.real is not None and p2p.is_sdxl:
            raise ConfigError("render.source=real: inversion supports SD 1.x/2.x models only, not SDXL")

    def begin(self, table: pa.Table) -> None:
        super().begin(table)
        if self.real is not None:
            self.real.begin()

    def partition_metrics(self) -> dict[str, float]:
        return self.real.metrics() if self.real is not None else {}

    def group_size(self) -> int:
        return self.settings.shared_sources

    def draw(self, row: Mapping[str, Any], n: int, start: int = 0) -> list[CandidateRecord]:
        from editgen.engines.p2p_records import mask_spec, sample_candidates, share_sources

        s = self.settings
        space = self._space()
        if self.real is not None:
            self.real.shape_space(space, row)
        blend = None
        if s.local_blend or (self.real is not None and s.inversion.mask == "local_blend"):
            words = blend_words(row)
            if words:
                blend = {"words": words, "threshold": s.blend_threshold, "start": s.blend_start}
        pair_id = pair_key(row["id"], s.seed)
        kind = row.get("edit_kind")
        k = s.shared_sources
        upto = -(-(start + n) // k) * k  # whole shared-source groups (candidates is a multiple of k)
        with truncation_drops():
            recs = sample_candidates(pair_id, row["caption"], row["edited_caption"], upto, model=self.runtime.model,
                                     space=space, edit_kind=kind if kind in ("replace", "refine") else None,
                                     blend=blend)
        spec = mask_spec(self._mask_source(blend), blend_words(row), s.blend_threshold)
        recs = [replace(r, mask=spec) for r in share_sources(recs, k)[start:upto]]
        return self.real.attach(recs, row, pair_id) if self.real is not None else recs

    def _space(self) -> CandidateSpace:
        """What candidates are drawn from: the render section's P2P settings."""
        from editgen.p2p.candidates import CandidateSpace

        s = self.settings
        return CandidateSpace(
            p_range=tuple(s.p_range), guidance_range=tuple(s.guidance_range), steps=s.steps,
            scheduler=s.scheduler, mode=s.mode, tie_windows=s.tie_windows, self_max_res=s.self_max_res,
            height=s.height, width=s.width, negative_prompt=s.negative_prompt,
        )

    def draw_session(self, rows: Sequence[Mapping[str, Any]], n: int) -> SessionDraw:
        """Candidates 0..n-1 of each turn that renders: one group per candidate (engines/p2p_sessions.py)."""
        from editgen.engines.p2p_sessions import draw_session

        s = self.settings
        return draw_session(self.runtime.pipeline, rows, n, self._space(), s.seed, self.runtime.model,
                            [blend_words(r) for r in rows], s.blend_threshold)

    def session_group(self, record: CandidateRecord) -> object | None:
        from editgen.engines.p2p_sessions import group_key

        return group_key(record)

    def _mask_source(self, blend: Mapping[str, Any] | None) -> str:
        """Where a candidate's edit mask comes from: LocalBlend's when it blends, DiffEdit's when a real
        image is DiffEdit-masked, else the changed words' cross-attention maps of the same render."""
        if blend is not None:
            return "local_blend"
        if self.real is not None and self.settings.inversion.mask == "diffedit":
            return "diffedit"
        return "cross_attention"

    def request(self, record: CandidateRecord) -> object:
        from editgen.engines.p2p_records import record_request

        return record_request(record)

    def check(self, record: CandidateRecord) -> None:
        """The request against the model's tokenizer (words exist and lie within its 77 tokens, windows
        parse, sizes fit); a real photograph needs a model the inversion supports."""
        from editgen.engines.p2p_records import REAL, layout, record_request
        from editgen.p2p.generate import check_request

        p2p = self.runtime.pipeline
        if layout(record) == REAL and p2p.is_sdxl:
            raise ValueError("a real image's inversion supports SD 1.x/2.x models only, not SDXL")
        with truncation_drops():
            check_request(p2p, record_request(record))

    def render(self, records: Sequence[CandidateRecord]) -> list[RenderedCandidate]:
        from editgen.engines.p2p_records import SESSION, render_records, render_shared
        from editgen.engines.p2p_sessions import render_sessions

        s, p2p = self.settings, self.runtime.pipeline
        if records and SESSION in records[0].params:  # a chunk is whole session units (session_group)
            return render_sessions(p2p, records, s.image_format, s.jpeg_quality)
        if self.real is not None:
            return self.real.render(p2p, records)
        if s.shared_sources > 1:
            return render_shared(p2p, records, s.image_format, s.jpeg_quality)
        return render_records(p2p, records, image_format=s.image_format, max_rows=s.max_rows_per_batch,
                              jpeg_quality=s.jpeg_quality)

    def regenerate(self, record: CandidateRecord, image: bytes | None = None,
                   image_format: str = "png") -> RenderedCandidate:
        """The layout the record declares (engines/p2p_records.py): a real photograph's inversion, a
        packed batch replayed, a shared-source group, or the record alone."""
        from editgen.engines import p2p_records as pr

        p2p = self.runtime.pipeline
        kind = pr.layout(record)
        if kind == pr.REAL:
            from editgen.engines.p2p_real import regenerate_real

            return regenerate_real(p2p, record, image, image_format)
        if kind == pr.PACKED:
            return pr.replay_packed(p2p, record, image_format)
        if kind == pr.SHARED:
            return pr.render_shared(p2p, [record], image_format)[0]
        if kind == pr.SESSION:
            from editgen.engines.p2p_sessions import render_sessions

            return render_sessions(p2p, [record], image_format)[0]
        return pr.render_records(p2p, [record], image_format=image_format)[0]

    def row_steps(self, record: CandidateRecord) -> float:
        from editgen.engines.p2p_records import SESSION
        from editgen.p2p.compute import record_compute

        share = int((record.params.get("shared_source") or {}).get("size", 1))
        session = record.params.get(SESSION)
        if session is not None:  # the group's 1 + k rows, shared by its k turns
            share = int(session["turns"])
            return record_compute({**record.params, "edits": [{}]}, 0, share=share).unet_row_steps
        return record_compute(record.params, 0, share=share).unet_row_steps

    def flops_per_row(self, record: CandidateRecord) -> int:
        return self.runtime.flops_at(int(record.params["height"]), int(record.params["width"]))

    def mode(self, record: CandidateRecord) -> str:
        from editgen.engines.p2p_records import SESSION

        turn = int((record.params.get(SESSION) or {}).get("turn", 1))
        return str(record.params["edits"][turn - 1]["mode"])
