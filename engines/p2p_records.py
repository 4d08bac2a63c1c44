"""Prompt-to-Prompt's candidate records: drawn, grouped, rendered in their batch layouts, replayed.

A P2P record's engine parameters are its request's render inputs (p2p.candidates.REQUEST_KEYS) and, at
most one of them, the layout it was rendered in, which regeneration follows:

- `shared_source`: k candidates of a pair share one source image. InstructPix2Pix rendered every
  candidate as its own (source, edit) pair: 2 prompts, so 4 UNet rows with CFG; with
  `render.shared_sources: k` a group of k candidates shares its leader's seed and guidance and renders
  as 1 source + k edit rows (each edit with its own P2P windows), 2(1 + k) rows per k candidates. Each
  member carries the whole group (`group_edits`), so any one of them regenerates the same group layout;
  every sample of a group stores the same input image (a shard sample stays self-contained).
- `packed`: rendered in a packed UNet batch (`render.max_rows_per_batch`) with other records. Packed
  rows are not bit-independent of their batch neighbours (GEMM kernels and reductions differ with the
  batch size: ~1e-5 on CPU), so the record stores its position and every member's render inputs, and
  regeneration replays the batch.
- `real_source`: a real photograph, inverted (engines/p2p_real.py).
- `session`: one turn of a multi-turn session, rendered with its session's other turns as one group
  (engines/p2p_sessions.py).

A record without any rendered alone, one group per batch.

Every record drawn since edit masks exist carries its mask's description in `mask` (p2p.masks.describe):
drawn with where it comes from (`source`: LocalBlend's mask, DiffEdit's, or, with neither, the
`cross_attention` maps of the changed words, gathered during the render at no UNet cost with LocalBlend's
settings) and completed at render with its area fraction, bounding box and checksum. The mask changes no
image; a record without `mask` (older ones) renders without one, as it always did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from editgen.engines.base import RenderedCandidate
from editgen.engines.record import CandidateRecord, ModelRef
from editgen.p2p.candidates import (
    REQUEST_KEYS,
    CandidateSpace,
    encode_image,
    encode_mask,
    encode_result,
    image_format_name,
    params_request,
    request_params,
    sample_requests,
)
from editgen.p2p.controls import BlendConfig
from editgen.p2p.generate import P2PPipeline, RenderRequest, RenderResult, dtype_name, plan_batches, render
from editgen.p2p.masks import describe, image_mask
from editgen.p2p.word_maps import MapRequest

#: The engine's name and record version: `editgen.p2p/1`, the records P2P wrote before engines existed.
ENGINE, VERSION = "p2p", 1
SHARED, PACKED, REAL, SESSION = "shared_source", "packed", "real_source", "session"
LAYOUTS = (SHARED, PACKED, REAL, SESSION)


def p2p_record(request: RenderRequest, model: ModelRef, *, pair_id: str | None = None,
               candidate: int | None = None, **params: Any) -> CandidateRecord:
    """The record of one P2P request (plus engine parameters such as a layout or `explicit`)."""
    return CandidateRecord(engine=ENGINE, version=VERSION, model=model, seed=int(request.seed),
                           params={**request_params(request), **params}, pair_id=pair_id, candidate=candidate)


def sample_candidates(pair_id: str, source: str, edit: str, n: int, *, model: ModelRef,
                      space: CandidateSpace | None = None, edit_kind: str | None = None,
                      blend: BlendConfig | Mapping[str, Any] | None = None,
                      reweight: Mapping[str, float] | None = None) -> list[CandidateRecord]:
    """Records of candidates ``0..n-1`` of one caption pair (p2p.candidates.sample_requests draws them)."""
    requests = sample_requests(pair_id, source, edit, n, space=space, edit_kind=edit_kind, blend=blend,
                               reweight=reweight)
    return [p2p_record(r, model, pair_id=pair_id, candidate=i) for i, r in enumerate(requests)]


def layout(record: CandidateRecord) -> str | None:
    """The layout a record declares (SHARED, PACKED, REAL) or None; ValueError if it declares several."""
    found = [key for key in LAYOUTS if key in record.params]
    if len(found) > 1:
        raise ValueError(f"a P2P record has one layout at most; this one has {found}")
    return found[0] if found else None


def record_request(record: CandidateRecord) -> RenderRequest:
    return params_request(record.params, record.seed)


def share_sources(records: list[CandidateRecord], k: int) -> list[CandidateRecord]:
    """Give each run of ``k`` consecutive candidates (by candidate index) its group leader's seed and
    guidance and the group's edits; records stay one per candidate. ``k = 1`` returns them unchanged."""
    if k <= 1:
        return records
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(int(r.candidate or 0) // k, []).append(i)
    out = list(records)
    for g, idx in groups.items():
        idx.sort(key=lambda i: int(records[i].candidate or 0))
        lead = records[idx[0]]
        meta = {"group": g, "size": k, "members": [int(records[i].candidate or 0) for i in idx],
                "group_edits": [records[i].params["edits"][0] for i in idx]}
        for i in idx:
            out[i] = replace(records[i], seed=lead.seed,
                             params={**records[i].params, "guidance": lead.params["guidance"], SHARED: meta})
    return out


#: A cross-attention mask's settings: LocalBlend's (threshold: `render.blend_threshold`).
MASK_DILATE, MASK_DOWNSCALE = 3, 4


def mask_spec(source: str, words: Sequence[str], threshold: float) -> dict[str, Any] | None:
    """What a drawn record says of its mask before rendering (None: no words, no mask)."""
    if not words:
        return None
    spec: dict[str, Any] = {"source": source, "words": list(words)}
    if source == "cross_attention":
        spec.update(threshold=float(threshold), dilate=MASK_DILATE, downscale=MASK_DOWNSCALE)
    return spec


def map_request(record: CandidateRecord) -> MapRequest | None:
    """The word maps a record's cross-attention mask is made of (None for other masks and older records)."""
    m = record.mask
    if not m or m.get("source") != "cross_attention":
        return None
    return MapRequest(tuple(m["words"]), float(m["threshold"]), int(m["dilate"]), downscale=int(m["downscale"]))


def with_mask(record: CandidateRecord, mask: torch.Tensor | None, hw: tuple[int, int]) -> CandidateRecord:
    """The record with its rendered mask described (area, bbox, checksum); without a mask, no `mask`."""
    if record.mask is None or mask is None:
        return replace(record, mask=None)
    spec = {k: v for k, v in record.mask.items() if k not in ("area_fraction", "bbox", "size", "sha256")}
    return replace(record, mask=describe(image_mask(mask, hw), spec.pop("source"), spec.pop("words"), **spec))


def rendered(record: CandidateRecord, res: RenderResult, fmt: str = "png", quality: int = 95) -> RenderedCandidate:
    """A render result (one edit row) as the record's rendered candidate."""
    enc = encode_result(res, fmt, quality)
    rec = with_mask(record, res.masks[0] if res.masks else None, (res.request.height, res.request.width))
    return RenderedCandidate(record=rec, input_image=enc.input_image, edited_image=enc.edited_images[0],
                             image_format=enc.image_format, mask=enc.masks[0] if enc.masks else None, result=res)


def check_model(p2p: P2PPipeline, records: Sequence[CandidateRecord]) -> None:
    for r in records:
        if r.model.model != p2p.model:
            raise ValueError(f"record for model {r.model.model!r} given to a pipeline for {p2p.model!r}")
        if r.model.dtype != dtype_name(p2p.dtype):
            raise ValueError(f"record wants dtype {r.model.dtype}, pipeline runs {dtype_name(p2p.dtype)}")


def render_records(p2p: P2PPipeline, records: Sequence[CandidateRecord], image_format: str = "png",
                   max_rows: int = 0, jpeg_quality: int = 95) -> list[RenderedCandidate]:
    """Render records (in input order), each one group with all its edit rows; ``max_rows > 0`` packs
    compatible records (same size/steps/scheduler) into shared batches of up to that many rows per CFG
    half (faster on a GPU), and each packed record stores its batch (PACKED, module docstring).
    A record with `explicit` renders alone with the materialised-probability reference processors."""
    check_model(p2p, records)
    requests = [record_request(r) for r in records]
    explicit = any(r.params.get("explicit") for r in records)
    outputs: list[RenderedCandidate | None] = [None] * len(records)
    for idx in plan_batches(requests, 0 if explicit else max_rows):
        batch = [render_inputs(records[i]) for i in idx] if len(idx) > 1 else None
        results = render(p2p, [requests[i] for i in idx], explicit=bool(records[idx[0]].params.get("explicit")),
                         maps=[map_request(records[i]) for i in idx])
        for pos, (i, res) in enumerate(zip(idx, results, strict=True)):
            rec = records[i] if batch is None else records[i].with_params(**{PACKED: {"position": pos,
                                                                                      "batch": batch}})
            outputs[i] = rendered(rec, res, image_format, jpeg_quality)
    return [o for o in outputs if o is not None]


def render_inputs(record: CandidateRecord) -> dict[str, Any]:
    """What a packed batch stores of each member: the fields of its row that determine its render."""
    row = record.to_row()
    return {k: row[k] for k in ("format", "seed", *REQUEST_KEYS) if k in row}


def replay_packed(p2p: P2PPipeline, record: CandidateRecord, image_format: str = "png") -> RenderedCandidate:
    """Re-render a packed record's whole batch in its stored order and return its own row."""
    meta = record.params[PACKED]
    for member in meta["batch"]:
        if member.get("format") != record.format:
            raise ValueError(f"packed batch member of format {member.get('format')!r} in a {record.format} record")
    pos = int(meta["position"])
    maps = [map_request(record) if j == pos else None for j in range(len(meta["batch"]))]
    results = render(p2p, [params_request(b, b["seed"]) for b in meta["batch"]], maps=maps)
    return rendered(record, results[pos], image_format)


def render_shared(p2p: P2PPipeline, records: Sequence[CandidateRecord], fmt: str = "png",
                  quality: int = 95) -> list[RenderedCandidate]:
    """Render shared-source records (input order kept): one UNet group per (pair, group), whichever of
    its members are asked for."""
    check_model(p2p, records)
    out: dict[int, RenderedCandidate] = {}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((str(r.pair_id), int(r.params[SHARED]["group"])), []).append(i)
    for idx in groups.values():
        first = records[idx[0]]
        meta = first.params[SHARED]
        request = params_request({**first.params, "edits": meta["group_edits"]}, first.seed)
        res = render(p2p, [request], maps=[map_request(first)])[0]
        source = encode_image(res.images[0], fmt, quality)
        hw = (request.height, request.width)
        for i in idx:
            row = meta["members"].index(int(records[i].candidate or 0))
            mask = res.masks[row]
            out[i] = RenderedCandidate(
                record=with_mask(records[i], mask, hw), input_image=source,
                edited_image=encode_image(res.images[1 + row], fmt, quality), image_format=image_format_name(fmt),
                mask=None if mask is None else encode_mask(mask, hw), result=res)
    return [out[i] for i in range(len(records))]
