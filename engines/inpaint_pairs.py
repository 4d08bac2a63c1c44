"""The inpaint engine's UNet work: each pair's source and region once, then each candidate's region.

A pair's source is generated from a seed and CFG scale drawn once per pair (`source.kind: generated`)
while a word-map recorder gathers the changed words' cross-attention maps at no extra UNet cost
(p2p.word_maps: the source caption's words on its own row, the edited caption's words read with the
source row's queries), or it is the pair's fetched photograph (`real`), whose region is DiffEdit's
noise-difference mask (2 x n_draws UNet rows at one noise level). The region's area is checked before
any candidate is rendered. Each candidate re-generates the region under the edited caption with its own
seed and CFG scale (p2p.inpaint) and is pasted onto the source through the feathered alpha. Everything
here is a function of a record's `params` (plus a photograph's pixels), so a regeneration recomputes
the source, the region (checked against the record's mask checksum) and the edit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from editgen.engines.base import RenderedCandidate
from editgen.engines.record import CandidateRecord
from editgen.engines.runtime import Runtime
from editgen.p2p.candidates import encode_uint8, image_format_name, to_uint8
from editgen.p2p.compute import unet_evals
from editgen.p2p.generate import P2PPipeline, RenderRequest, check_inputs, dtype_name, render
from editgen.p2p.inpaint import Region, encode_pixels, load_unet, normalized, regenerate_region
from editgen.p2p.masks import area_check, describe, encode_png, feather_alpha, image_mask
from editgen.p2p.word_maps import MapRequest

GENERATED, REAL = "generated", "real"


@dataclass
class PairSource:
    """A pair's source and region: made once per pair, shared by its candidates."""

    region: Region | None  # None once its candidates are done (memory) or when the pair is dropped
    mask: dict[str, Any]  # its description (p2p.masks.describe): the record's `mask`
    input_image: bytes
    row_steps: float  # UNet row-steps spent making it (the source pass, or DiffEdit's draws)
    hw: tuple[int, int]
    reject: str | None = None  # `too_small` / `too_large` (p2p.masks.area_check) or None


@dataclass
class InpaintResult:
    """A rendered candidate's raw result (tests, tools): its pair's source and the pasted pixels."""

    source: PairSource
    pixels: np.ndarray


def request_for(params: Mapping[str, Any], prompt: str, seed: int, guidance: float) -> RenderRequest:
    return RenderRequest(source=prompt, edits=[], seed=int(seed), steps=int(params["steps"]), guidance=float(guidance),
                         height=int(params["height"]), width=int(params["width"]), scheduler=params["scheduler"],
                         negative_prompt=params.get("negative_prompt"))


def source_request(params: Mapping[str, Any]) -> RenderRequest:
    """The generated source's render: the source caption from the pair's source seed and CFG scale."""
    src = params["source"]
    return request_for(params, params["source_prompt"], src["seed"], src["guidance"])


def candidate_request(record: CandidateRecord) -> RenderRequest:
    """A candidate's re-generation: the edited caption from its own seed and CFG scale."""
    return request_for(record.params, record.params["prompt"], record.seed, record.params["guidance"])


def region_request(params: Mapping[str, Any]) -> MapRequest:
    """The word maps of a generated source's region (the edited caption is the probe)."""
    r = params["region"]
    return MapRequest(tuple(r["words"]), float(r["threshold"]), int(r["dilate"]), float(r["smooth"]),
                      str(r["normalize"]), int(r["downscale"]), probe=params["prompt"])


def rows(guidance: float) -> int:
    return 2 if guidance > 1.0 else 1


def _finish(params: Mapping[str, Any], pixels: np.ndarray, latent: torch.Tensor, mask: torch.Tensor, source: str,
            words: list[str], row_steps: float, fmt: str, quality: int) -> PairSource:
    """The region's description, area check and feathered alpha, and the source's encoded bytes."""
    hw = (int(pixels.shape[0]), int(pixels.shape[1]))
    img = image_mask(mask, hw)
    px = int(params["feather_px"])
    meta = describe(img, source, words, feather_px=px)
    reject = area_check(meta["area_fraction"], float(params["min_area"]), float(params["max_area"]))
    region = Region(latent, pixels, mask, feather_alpha(img, px))
    return PairSource(region, meta, encode_uint8(pixels, fmt, quality), float(row_steps), hw, reject)


def generated_source(p2p: P2PPipeline, params: Mapping[str, Any], fmt: str = "png", quality: int = 95) -> PairSource:
    """Render the pair's source once, gathering its region's word maps in the same pass."""
    request = source_request(params)
    res = render(p2p, [request], maps=[region_request(params)])[0]
    h, w = request.height // p2p.vae_scale, request.width // p2p.vae_scale
    mask = res.source_mask if res.source_mask is not None else torch.zeros(h, w, dtype=torch.bool)
    steps = unet_evals(request.scheduler, request.steps) * rows(request.guidance)
    return _finish(params, to_uint8(res.images[0]), res.latents[:1], mask, "cross_attention", res.mask_words,
                   steps, fmt, quality)


def real_source(p2p: P2PPipeline, params: Mapping[str, Any], image: bytes | None, fmt: str = "png",
                quality: int = 95) -> PairSource:
    """The pair's photograph (checked against the record's pixel hash) and its DiffEdit region."""
    from editgen.p2p.inversion import diffedit_mask, text_embeddings
    from editgen.p2p.real import decode_image, pixels_sha256

    if image is None:
        raise ValueError("a real-image record renders only with its source image (image=...)")
    picture = decode_image(image)
    got, want = pixels_sha256(picture), params["source"]["pixels_sha256"]
    if got != want:
        raise ValueError(f"image pixels sha256 {got[:12]} are not the record's {want[:12]}")
    pixels = np.array(picture, dtype=np.uint8)  # a writable copy
    check_inputs(p2p, [request_for(params, params["prompt"], 0, 1.0)])
    latent = encode_pixels(p2p, normalized(pixels))
    d = params["region"]["diffedit"]
    emb = text_embeddings(p2p, [params["source_prompt"], params["prompt"]])
    mask, _ = diffedit_mask(p2p, latent, emb[:1], emb[1:], int(d["n_draws"]), float(d["strength"]),
                            float(d["threshold"]), int(d["seed"]))
    return _finish(params, pixels, latent.float().cpu(), mask.cpu(), "diffedit", list(params["region"]["words"]),
                   2 * int(d["n_draws"]), fmt, quality)


def pair_source(p2p: P2PPipeline, params: Mapping[str, Any], image: bytes | None = None, fmt: str = "png",
                quality: int = 95) -> PairSource:
    """A pair's source and region from a record's parameters (any candidate's: they share them)."""
    if params["source"]["kind"] == REAL:
        return real_source(p2p, params, image, fmt, quality)
    return generated_source(p2p, params, fmt, quality)


def shared_unet(runtime: Runtime, ref: Mapping[str, Any] | None) -> Any | None:
    """The inpainting UNet a record names, loaded once per runtime (None: latent blending). A tiny one
    whose folder is gone is built again from its variant, as a tiny base model is."""
    if not ref:
        return None
    path, variant = str(ref["model"]), ref.get("tiny_variant")
    if variant and not os.path.isfile(os.path.join(path, "unet", "config.json")):
        from editgen.tiny.sd import build_tiny_inpaint

        build_tiny_inpaint(path, variant)
    p2p = runtime.pipeline
    return runtime.shared(f"inpaint:unet:{path}", lambda: load_unet(path, p2p.device, p2p.dtype))


def check_record(p2p: P2PPipeline, record: CandidateRecord) -> None:
    if record.model.model != p2p.model:
        raise ValueError(f"record for model {record.model.model!r} given to a pipeline for {p2p.model!r}")
    if record.model.dtype != dtype_name(p2p.dtype):
        raise ValueError(f"record wants dtype {record.model.dtype}, pipeline runs {dtype_name(p2p.dtype)}")


def check_mask(record: CandidateRecord, src: PairSource) -> None:
    """A recomputed region must be the one the record was rendered with (its checksum)."""
    want = (record.mask or {}).get("sha256")
    if want is not None and want != src.mask["sha256"]:
        raise ValueError(f"the recomputed mask {src.mask['sha256'][:12]} is not the record's {want[:12]} "
                         "(another device, dtype or thread count?)")


def render_candidate(p2p: P2PPipeline, unet: Any | None, record: CandidateRecord, src: PairSource,
                     fmt: str = "png", quality: int = 95) -> RenderedCandidate:
    """One candidate: its region re-generated and pasted onto the source; the mask PNG is the alpha."""
    if src.region is None:
        raise ValueError(f"pair {record.pair_id}: its source is gone")
    check_record(p2p, record)
    pixels = regenerate_region(p2p, candidate_request(record), src.region, unet)
    return RenderedCandidate(record=record, input_image=src.input_image,
                             edited_image=encode_uint8(pixels, fmt, quality), image_format=image_format_name(fmt),
                             mask=encode_png(src.region.alpha), result=InpaintResult(src, pixels))
