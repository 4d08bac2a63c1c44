"""The inpaint engine's draws: what a pair's candidates share and each candidate's own, before any UNet work.

A pair's parameters are its captions and render size, its source (a generated one's seed and CFG scale,
drawn once per pair; a photograph's pixel hash), how its region is made (the changed words and the mask
settings, with the attention-grid downscale resolved for the model and size; DiffEdit's settings for a
photograph), the feather width in pixels, the area bounds and the inpainting UNet (None: latent blending).
Pairs the engine cannot edit are refused here with a named reason: no changed word to locate
(`inpaint_no_mask_words`), or an edit past the text encoder's 77 tokens (`render_edit_truncated`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from typing import Any

from editgen.engines.base import PairRejected
from editgen.engines.inpaint_pairs import GENERATED, REAL, request_for
from editgen.p2p.generate import P2PPipeline, check_inputs
from editgen.p2p.masks import feather_px
from editgen.pipeline.settings.render import RenderConfig


def pair_rng(pair_id: str, key: str | int) -> random.Random:
    """The RNG of a pair's source (`key="source"`) or of one of its candidates (`key=index`)."""
    digest = hashlib.sha256(f"{pair_id}\x00inpaint\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def mask_words(caption: str, edited: str) -> list[str]:
    """The words the edit changes: the source's words the edited caption lacks, then the new ones."""
    from editgen.p2p.edit_diff import words

    before, after = words(caption), words(edited)
    found: list[str] = []
    for w in [w for w in before if w not in set(after)] + [w for w in after if w not in set(before)]:
        if w not in found:
            found.append(w)
    return found


def nearest_downscale(latent_side: int, available: set[int]) -> int:
    """The cross-attention downscale whose grid side is nearest 16 cells (ties: the finer grid)."""
    return min(sorted(available), key=lambda f: abs(math.log2(max(latent_side / f, 1e-9)) - 4))


def _check_words(p2p: P2PPipeline, caption: str, edited: str, words: list[str]) -> None:
    from editgen.p2p.seq_align import edit_truncated, tokenize
    from editgen.p2p.word_maps import word_cols

    if not words:
        raise PairRejected("inpaint_no_mask_words", "the captions differ in no word: no region to locate")
    src, tgt = tokenize(p2p.tokenizer, caption), tokenize(p2p.tokenizer, edited)
    if edit_truncated(src, tgt):
        raise PairRejected("render_edit_truncated", f"the edit changes only words past the {src.length}-token "
                           f"truncation: {caption!r} -> {edited!r}")
    if word_cols(src, words) is None and word_cols(tgt, words) is None:
        raise PairRejected("inpaint_no_mask_words", f"the changed words {words} lie in neither caption's first "
                           f"{src.length} tokens")


def pair_params(p2p: P2PPipeline, settings: RenderConfig, row: Mapping[str, Any], pair_id: str,
                unet: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a pair's candidates share (see the module docstring); PairRejected / ValueError to refuse it."""
    s, ip = settings, settings.inpaint
    caption, edited = str(row["caption"]), str(row["edited_caption"])
    words = mask_words(caption, edited)
    _check_words(p2p, caption, edited, words)
    params: dict[str, Any] = {"source_prompt": caption, "prompt": edited, "negative_prompt": s.negative_prompt,
                              "steps": s.steps, "scheduler": s.scheduler, "height": s.height, "width": s.width}
    if s.source == "real":
        from editgen.p2p.real import decode_image, pixels_sha256

        if not row.get("image"):
            raise ValueError("row has no fetched image")
        picture = decode_image(row["image"])
        params.update(height=picture.height, width=picture.width)
        params["source"] = {"kind": REAL, "pixels_sha256": pixels_sha256(picture)}
        params["region"] = {"words": words, "diffedit": ip.diffedit.model_dump(mode="json")}
    else:
        rng = pair_rng(pair_id, "source")
        seed, guidance = rng.randrange(2**31), rng.uniform(*ip.guidance_range)
        params["source"] = {"kind": GENERATED, "seed": seed, "guidance": guidance}
        m = ip.mask
        side = min(s.height, s.width) // p2p.vae_scale
        params["region"] = {"words": words, "threshold": m.threshold, "dilate": m.dilate, "smooth": m.smooth,
                            "normalize": m.normalize,
                            "downscale": m.downscale or nearest_downscale(side, p2p.cross_downscales or {1})}
    hw = (int(params["height"]), int(params["width"]))
    params.update(feather_px=feather_px(ip.feather, hw), min_area=ip.min_area, max_area=ip.max_area,
                  unet=dict(unet) if unet else None)
    check_inputs(p2p, [request_for(params, edited, 0, 1.0)])  # sizes the model takes (ValueError)
    return params
