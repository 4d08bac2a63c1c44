"""Candidate sampling, JSON-able render records, batch rendering and exact regeneration.

InstructPix2Pix rendered several candidates per caption pair, each with its own seed, a P2P window
fraction ``p ~ U(0.1, 0.9)`` and a CFG scale ``~ U(7.5, 15)``, then kept the ones CLIP liked. Here the
randomness comes from a per-(pair, candidate) RNG so reruns resample the same parameters, and every
input to the render is written into a flat dict (the *record*). ``regenerate(record)`` rebuilds the
request from that dict alone and renders it in the same batch layout, so images come back bit-for-bit
on the same device and dtype.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from editgen.p2p.controls import BlendConfig, EditControl
from editgen.p2p.generate import (
    DTYPES,
    P2PPipeline,
    RenderRequest,
    RenderResult,
    dtype_name,
    load_pipeline,
    plan_batches,
    render,
)

RECORD_FORMAT = "editgen.p2p/1"
IMAGE_FORMATS = ("png", "jpeg")


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


def sample_candidates(
    pair_id: str,
    source: str,
    edit: str,
    n: int,
    *,
    model: str,
    dtype: str | torch.dtype = "float32",
    space: CandidateSpace | None = None,
    edit_kind: str | None = None,
    blend: BlendConfig | Mapping[str, Any] | None = None,
    reweight: Mapping[str, float] | None = None,
    profile: str | None = None,
) -> list[dict[str, Any]]:
    """``n`` candidate records for one caption pair; parameters drawn from :func:`candidate_rng`."""
    space = space or CandidateSpace()
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"record dtype must be explicit ({sorted(DTYPES)}), got {dtype!r}")
    dt = dtype_name(DTYPES[dtype] if isinstance(dtype, str) else dtype)
    records = []
    for i in range(n):
        rng = candidate_rng(pair_id, i)
        seed = rng.randrange(2**31)
        p_cross = rng.uniform(*space.p_range)
        p_self = p_cross if space.tie_windows else rng.uniform(*space.p_range)
        guidance = rng.uniform(*space.guidance_range)
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
        request = RenderRequest(
            source=source,
            edits=[control.resolve(source)],
            seed=seed,
            steps=space.steps,
            guidance=guidance,
            height=space.height,
            width=space.width,
            scheduler=space.scheduler,
            negative_prompt=space.negative_prompt,
        )
        records.append(request_to_record(request, model=model, dtype=dt, pair_id=pair_id, candidate=i, profile=profile))
    return records


def request_to_record(request: RenderRequest, *, model: str, dtype: str, **extra: Any) -> dict[str, Any]:
    """Flat, JSON-able dict holding every input of the render."""
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "model": str(model),
        "dtype": dtype,
        "source_prompt": request.source,
        "edits": [e.resolve(request.source).to_dict() for e in request.edits],
        "seed": int(request.seed),
        "steps": int(request.steps),
        "guidance": float(request.guidance),
        "height": int(request.height),
        "width": int(request.width),
        "scheduler": request.scheduler,
        "negative_prompt": request.negative_prompt,
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def record_to_request(record: Mapping[str, Any]) -> RenderRequest:
    if record.get("format", RECORD_FORMAT) != RECORD_FORMAT:
        raise ValueError(f"unsupported record format {record.get('format')!r}")
    return RenderRequest(
        source=record["source_prompt"],
        edits=[EditControl.from_dict(e) for e in record["edits"]],
        seed=int(record["seed"]),
        steps=int(record["steps"]),
        guidance=float(record["guidance"]),
        height=int(record["height"]),
        width=int(record["width"]),
        scheduler=record["scheduler"],
        negative_prompt=record.get("negative_prompt"),
    )


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode a float HWC image in [0, 1] (diffusers' rounding) as PNG or JPEG bytes."""
    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    pil = Image.fromarray((image * 255).round().astype("uint8"))
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
class CandidateOutput:
    """Encoded outputs of one candidate: input image, edited image(s), masks, and its record."""

    record: dict[str, Any]
    input_image: bytes
    edited_images: list[bytes]
    masks: list[bytes | None]
    image_format: str = "png"
    result: RenderResult | None = field(default=None, repr=False)
    reconstruction: bytes | None = None  # real-image sources: the source row re-rendered from the inversion

    @property
    def edited_image(self) -> bytes:
        return self.edited_images[0]

    @property
    def mask(self) -> bytes | None:
        return self.masks[0] if self.masks else None


def candidate_output(record: dict[str, Any], res: RenderResult, fmt: str = "png", quality: int = 95) -> CandidateOutput:
    """Encode a render result as a :class:`CandidateOutput` carrying ``record``."""
    hw = (res.request.height, res.request.width)
    return CandidateOutput(
        record=record,
        input_image=encode_image(res.images[0], fmt, quality),
        edited_images=[encode_image(img, fmt, quality) for img in res.images[1:]],
        masks=[None if m is None else encode_mask(m, hw) for m in res.masks],
        image_format="jpeg" if fmt.lower() in ("jpg", "jpeg") else "png",
        result=res,
    )


def render_records(
    p2p: P2PPipeline,
    records: Sequence[Mapping[str, Any]],
    image_format: str = "png",
    max_rows: int = 0,
    jpeg_quality: int = 95,
) -> list[CandidateOutput]:
    """Render candidate records (in input order). Each record is one batch with all its edited rows;
    ``max_rows > 0`` packs compatible records (same size/steps/scheduler) into shared batches of up to
    that many rows per CFG half -- faster on a GPU. Packed rows are not independent of their batch
    neighbours (GEMM kernels and reductions differ with the batch size: ~1e-5 on CPU), so a packed
    record stores its batch (``packed``: its position and the batch's render inputs) and ``regenerate``
    replays that batch: bit-exact either way on the same device and dtype.
    """
    for r in records:
        if r.get("model", p2p.model) != p2p.model:
            raise ValueError(f"record for model {r['model']!r} given to a pipeline for {p2p.model!r}")
        if r.get("dtype", dtype_name(p2p.dtype)) != dtype_name(p2p.dtype):
            raise ValueError(f"record wants dtype {r['dtype']}, pipeline runs {dtype_name(p2p.dtype)}")
    requests = [record_to_request(r) for r in records]
    outputs: list[CandidateOutput | None] = [None] * len(records)
    for idx in plan_batches(requests, max_rows):
        batch = [render_inputs(records[i]) for i in idx] if len(idx) > 1 else None
        for pos, (i, res) in enumerate(zip(idx, render(p2p, [requests[i] for i in idx]), strict=True)):
            rec = dict(records[i])
            if batch is not None:
                rec[PACKED] = {"position": pos, "batch": batch}
            outputs[i] = candidate_output(rec, res, image_format, jpeg_quality)
    return [o for o in outputs if o is not None]


#: Record key of a candidate rendered in a packed batch: {position, batch: [render inputs of each group]}.
PACKED = "packed"
_RENDER_KEYS = ("format", "source_prompt", "edits", "seed", "steps", "guidance", "height", "width", "scheduler",
                "negative_prompt")


def render_inputs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a record that determine its render (what a packed batch stores of each member)."""
    return {k: record[k] for k in _RENDER_KEYS if k in record}


def replay_packed(p2p: P2PPipeline, record: Mapping[str, Any], image_format: str = "png") -> CandidateOutput:
    """Re-render a packed record's whole batch in its stored order and return its own row."""
    meta = record[PACKED]
    results = render(p2p, [record_to_request(b) for b in meta["batch"]])
    return candidate_output(dict(record), results[int(meta["position"])], image_format)


_PIPELINES: dict[tuple[str, str, str], P2PPipeline] = {}


def pipeline_for_record(record: Mapping[str, Any], device: str | torch.device | None = None) -> P2PPipeline:
    """Load (and memoise) the pipeline a record names; tiny-profile folders are rebuilt if missing."""
    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    edits = record.get("model_edits")
    key = (str(record["model"]), dev, str(record["dtype"]), edits["checksum"] if edits else "")
    if key not in _PIPELINES:
        if record.get("profile") == "tiny" and not os.path.exists(os.path.join(record["model"], "model_index.json")):
            from editgen.tiny.sd import build_tiny_sd

            build_tiny_sd(record["model"], variant=record.get("tiny_variant", "sd"))
        p2p = load_pipeline(record["model"], dev, record["dtype"], record["scheduler"])
        if edits:
            from editgen.p2p.model_edit.solve import reapply

            reapply(p2p, edits)
        _PIPELINES[key] = p2p
    return _PIPELINES[key]
