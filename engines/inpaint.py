"""Mask-grounded inpainting as an edit engine (`render.engine: inpaint`; docs/engines/inpaint.md).

GLIDE-style region edits, as UltraEdit's region path: the region to change is where the source attends to
the words the edit changes (the changed words' accumulated cross-attention maps, gathered while the source
renders: p2p.word_maps, p2p.masks) or, for a fetched photograph (`render.source: real`), DiffEdit's
noise-difference mask; it is re-generated under the edited caption by an inpainting UNet
(`render.inpaint.model`) or, with `model: null`, by latent blending with the base model, and pasted back
through a feathered alpha, so every pixel outside it is the source's byte for byte. A pair's source and
region are made once, in `draw`, and a region covering less than `min_area` or more than `max_area` of the
image drops the pair (`inpaint_mask_too_small` / `inpaint_mask_too_large`) before any inpainting UNet
work. UNet row-steps per candidate: rows(g) x steps for its own re-generation (rows(g) = 2 with CFG),
plus, charged to a pair's first rendered candidate, the source pass (rows(g_src) x steps) or DiffEdit's
2 x n_draws; a dropped pair's source pass goes into the partition's `unet_row_steps` (no candidate
carries it). Records: `editgen.inpaint/1` (engines/inpaint_pairs.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from editgen.engines.base import CHAIN, EditEngine, EngineNeeds, PairRejected, RenderedCandidate, pair_key
from editgen.engines.record import CandidateRecord
from editgen.pipeline.errors import ConfigError
from editgen.pipeline.settings.render import RenderConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from editgen.engines.inpaint_pairs import PairSource
    from editgen.engines.runtime import Runtime


class InpaintEngine(EditEngine):
    name = "inpaint"
    version = 1
    sessions = CHAIN  # turn t edits turn t-1's output as a photograph (docs/sessions.md)

    def __init__(self, runtime: Runtime, settings: RenderConfig) -> None:
        super().__init__(runtime, settings)
        self.unet_ref: dict[str, Any] | None = None
        self.unet_label: str | None = None
        self.sources: dict[str, PairSource] = {}
        self.charged: set[str] = set()
        self.rebuilt_row_steps = 0.0

    @classmethod
    def needs(cls, settings: RenderConfig) -> EngineNeeds:
        real = settings.source == "real"
        return EngineNeeds(generated_source=not real, real_image=real, mask=True)

    @classmethod
    def check_settings(cls, settings: RenderConfig) -> None:
        if settings.model_edits and settings.inpaint.model is not None:
            raise ValueError("render.inpaint.model: render.model_edits change the base UNet only, not an inpainting "
                             "UNet; set render.inpaint.model: null (latent blending with the edited base model)")

    def setup(self) -> None:
        """The base pipeline and the inpainting UNet (`auto`: the base family's), loaded once per actor."""
        from editgen.engines.inpaint_pairs import shared_unet
        from editgen.p2p.inpaint import check_unet
        from editgen.p2p.models import auto_inpaint_model, resolve_inpaint_model

        p2p = self.runtime.pipeline
        if self.settings.source == "real" and p2p.is_sdxl:
            raise ConfigError("render.engine inpaint with render.source=real: DiffEdit's mask supports SD 1.x/2.x "
                              "models only, not SDXL")
        name = self.settings.inpaint.model
        if name is None:
            return
        name = auto_inpaint_model(self.runtime.model.tiny_variant, p2p.is_sdxl) if name == "auto" else name
        path, variant = resolve_inpaint_model(name)
        self.unet_ref, self.unet_label = {"model": path, "tiny_variant": variant}, name
        try:
            check_unet(p2p, shared_unet(self.runtime, self.unet_ref), f"render.inpaint.model {name}")
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc).splitlines()[0] if isinstance(exc, ValueError) else
                              f"render.inpaint.model {name}: cannot load its UNet ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None

    def begin(self, table: pa.Table) -> None:
        super().begin(table)
        self.sources, self.charged, self.rebuilt_row_steps = {}, set(), 0.0

    def partition_metrics(self) -> dict[str, float]:
        """The partition's source passes (every pair's, dropped ones included); the work no kept candidate
        carries (dropped pairs', sources rebuilt after a failed batch) adds to `unet_row_steps`."""
        spent = [s.row_steps for s in self.sources.values()]
        loose = [(s.row_steps, s.hw) for pid, s in self.sources.items() if pid not in self.charged]
        loose_steps = sum(r for r, _ in loose) + self.rebuilt_row_steps
        flops = sum(r * self.runtime.flops_at(*hw) for r, hw in loose)
        return {"inpaint_source_row_steps": float(sum(spent)), "unet_row_steps": float(loose_steps),
                "unet_flops": float(flops),
                "inpaint_dropped_pairs": float(sum(1 for s in self.sources.values() if s.reject))}

    # ---- per pair --------------------------------------------------------------------------------
    def draw(self, row: Mapping[str, Any], n: int, start: int = 0) -> list[CandidateRecord]:
        """The pair's candidates; its source and region are made here, once, and a pair whose region
        is out of range is refused before any candidate's UNet work."""
        pair_id = pair_key(row["id"], self.settings.seed)
        params = self._pair_params(row, pair_id)
        src = self._source(pair_id, params, row.get("image"))
        if src.reject is not None:
            area = src.mask["area_fraction"]
            raise PairRejected(f"inpaint_mask_{src.reject}", f"the edit region covers {area:.4f} of the image "
                               f"(allowed {params['min_area']}..{params['max_area']}; words {src.mask['words']})")
        from editgen.engines.inpaint_params import pair_rng

        lo, hi = self.settings.inpaint.guidance_range
        records = []
        for i in range(start, start + n):
            rng = pair_rng(pair_id, i)
            seed, guidance = rng.randrange(2**31), rng.uniform(lo, hi)
            records.append(CandidateRecord(engine=self.name, version=self.version, model=self.runtime.model,
                                           seed=seed, params={**params, "guidance": guidance}, pair_id=pair_id,
                                           candidate=i, mask=src.mask))
        return records

    def _pair_params(self, row: Mapping[str, Any], pair_id: str) -> dict[str, Any]:
        """What a pair's candidates share, drawn and checked before any UNet work."""
        from editgen.engines.inpaint_params import pair_params

        return pair_params(self.runtime.pipeline, self.settings, row, pair_id, self.unet_ref)

    def _source(self, pair_id: str, params: Mapping[str, Any], image: bytes | None) -> PairSource:
        from editgen.engines.inpaint_pairs import pair_source

        if pair_id not in self.sources:
            s = self.settings
            self.sources[pair_id] = pair_source(self.runtime.pipeline, params, image, s.image_format, s.jpeg_quality)
            if self.sources[pair_id].reject:  # no candidate will need its pixels
                self.sources[pair_id].region, self.sources[pair_id].input_image = None, b""
        return self.sources[pair_id]

    def request(self, record: CandidateRecord) -> object:
        from editgen.engines.inpaint_pairs import candidate_request

        return candidate_request(record)

    def render(self, records: Sequence[CandidateRecord]) -> list[RenderedCandidate]:
        """Each record's region re-generated from its pair's source (made in `draw`); the source's UNet
        work is charged to the first candidate of the pair that renders."""
        from editgen.engines.inpaint_pairs import pair_source, render_candidate, shared_unet

        s, p2p = self.settings, self.runtime.pipeline
        outs, charged = [], set()
        for rec in records:
            pid = str(rec.pair_id)
            src = self.sources.get(pid)
            if src is None:  # drawn by another engine object: made here, the same
                src = self.sources[pid] = pair_source(p2p, rec.params, None, s.image_format, s.jpeg_quality)
            elif src.region is None:  # freed after its last candidate, and a failed batch is retried
                again = pair_source(p2p, rec.params, None, s.image_format, s.jpeg_quality)
                self.rebuilt_row_steps += again.row_steps
                src.region = again.region
            out = render_candidate(p2p, shared_unet(self.runtime, rec.params.get("unet")), rec, src,
                                   s.image_format, s.jpeg_quality)
            if pid not in self.charged and pid not in charged:
                out.extra_row_steps = src.row_steps
                charged.add(pid)
            if rec.candidate is not None and rec.candidate >= s.candidates - 1:
                src.region = None  # the pair's last candidate: free its pixels
            outs.append(out)
        self.charged |= charged  # only once the whole call rendered (a failed batch is retried one by one)
        return outs

    def regenerate(self, record: CandidateRecord, image: bytes | None = None,
                   image_format: str = "png") -> RenderedCandidate:
        """The pair's source and region recomputed from the record (checked against its mask checksum),
        then the candidate's region, bit for bit on the same device, dtype and thread count."""
        from editgen.engines.inpaint_pairs import check_mask, pair_source, render_candidate, shared_unet

        p2p = self.runtime.pipeline
        src = pair_source(p2p, record.params, image, image_format)
        check_mask(record, src)
        return render_candidate(p2p, shared_unet(self.runtime, record.params.get("unet")), record, src, image_format)

    # ---- compute and columns ---------------------------------------------------------------------
    def row_steps(self, record: CandidateRecord) -> float:
        """The candidate's own re-generation: rows(g) x UNet evaluations (the source comes as extra)."""
        from editgen.engines.inpaint_pairs import rows
        from editgen.p2p.compute import unet_evals

        p = record.params
        return float(rows(float(p["guidance"])) * unet_evals(str(p["scheduler"]), int(p["steps"])))

    def flops_per_row(self, record: CandidateRecord) -> int:
        """The base UNet's (an inpainting UNet differs only in its first convolution's 9 input channels)."""
        return self.runtime.flops_at(int(record.params["height"]), int(record.params["width"]))

    def mode(self, record: CandidateRecord) -> str:
        return "inpaint" if record.params.get("unet") else "inpaint_blend"

    def model_label(self) -> str:
        return self.runtime.label if self.unet_label is None else f"{self.runtime.label}+{self.unet_label}"
