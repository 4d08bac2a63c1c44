"""The numbers of an evaluation, per image-guidance grid point, from the sweep's edited images.

InstructPix2Pix's curve (Brooks et al. 2023, Fig. 6), with the filter's own CLIP code
(filters.pairs.clip_score.clip_similarities, so a score here means what `sim_direction` / `sim_image`
mean in the shards): CLIP direction similarity cos(I_out - I_in, T_edited - T_input) and CLIP image
similarity cos(I_in, I_out). MagicBrush's metrics against a target image (Zhang et al. 2023, Table 2):
L1 (mean absolute pixel difference in [0, 1], the output resized to the target's size), CLIP-I
cos(I_out, I_target), DINO cos(D_out, D_target) (filters.pairs.dino_score's DINOv2 CLS embedding) and
CLIP-T cos(I_out, T_edited). A number is the mean over the samples that have what it needs (captions for
direction and CLIP-T, a target for L1, CLIP-I and DINO); each carries its count, null where none has it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from editgen.filters.pairs.clip_score import clip_similarities, decode_image
from editgen.filters.pairs.dino_score import cosine

if TYPE_CHECKING:
    from PIL import Image

    from editgen.evaluation.data import EvalSample
    from editgen.filters.pairs.clip_score import ClipScorer
    from editgen.filters.pairs.dino_score import DinoScorer

CURVE_METRICS = ("clip_direction_similarity", "clip_image_similarity")
TARGET_METRICS = ("l1", "clip_i", "dino", "clip_t")
DIGITS = 6


def l1_distance(output: Image.Image, target: Image.Image) -> float:
    """Mean |output - target| over pixels and RGB channels in [0, 1], the output resized (bicubic) to the
    target's size (MagicBrush compares at the target's resolution)."""
    from PIL import Image

    out = output.convert("RGB")
    tgt = target.convert("RGB")
    if out.size != tgt.size:
        out = out.resize(tgt.size, Image.Resampling.BICUBIC)
    a = np.asarray(out, dtype=np.float64) / 255.0
    b = np.asarray(tgt, dtype=np.float64) / 255.0
    return float(np.abs(a - b).mean())


def mean(values: Sequence[float]) -> tuple[float | None, int]:
    """(mean rounded to DIGITS, count) of the finite values; (None, 0) when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return (round(float(np.mean(kept)), DIGITS), len(kept)) if kept else (None, 0)


def summarize(values: dict[str, list[float]], names: Sequence[str]) -> dict[str, Any]:
    """Per-sample values (NaN: the sample lacks what the metric needs) -> each metric's mean and count."""
    found = {name: mean(values.get(name, [])) for name in names}
    return {**{k: v for k, (v, _) in found.items()}, "n": {k: n for k, (_, n) in found.items()}}


class Measurer:
    """The sample-side embeddings (inputs, captions, targets), encoded once for every grid point."""

    def __init__(self, samples: Sequence[EvalSample], clip: ClipScorer, dino: DinoScorer | None) -> None:
        self.clip, self.dino = clip, dino
        self.captioned = [s.input_caption is not None and s.edited_caption is not None for s in samples]
        self.has_edited_caption = [s.edited_caption is not None for s in samples]
        self.i_in = clip.encode_images([decode_image(s.input_image) for s in samples])
        self.t_in = clip.encode_texts([s.input_caption or "" for s in samples])
        self.t_edit = clip.encode_texts([s.edited_caption or "" for s in samples])
        self.with_target = [i for i, s in enumerate(samples) if s.target_image is not None]
        self.targets = [decode_image(samples[i].target_image) for i in self.with_target]
        self.i_target = clip.encode_images(self.targets) if self.targets else None
        self.d_target = dino.encode(self.targets) if dino is not None and self.targets else None

    def point(self, outputs: Sequence[Image.Image]) -> dict[str, list[float]]:
        """One grid point's outputs -> every metric per sample, NaN where the sample lacks what it needs."""
        nan = math.nan
        i_out = self.clip.encode_images(list(outputs))
        sims = clip_similarities(self.i_in, i_out, self.t_in, self.t_edit)
        per = {
            "clip_direction_similarity": [float(v) if ok else nan
                                          for v, ok in zip(sims["sim_direction"], self.captioned, strict=True)],
            "clip_image_similarity": [float(v) for v in sims["sim_image"]],
            "clip_t": [float(v) if ok else nan for v, ok in zip(sims["sim_1"], self.has_edited_caption, strict=True)],
        }
        idx, n = self.with_target, len(outputs)
        for name in ("l1", "clip_i", "dino"):
            per[name] = [nan] * n
        for j, i in enumerate(idx):
            per["l1"][i] = l1_distance(outputs[i], self.targets[j])
        if idx:
            for i, v in zip(idx, cosine(i_out[idx], self.i_target).tolist(), strict=True):
                per["clip_i"][i] = v
        if self.dino is not None and idx:
            d_out = self.dino.encode([outputs[i] for i in idx])
            for i, v in zip(idx, cosine(d_out, self.d_target).tolist(), strict=True):
                per["dino"][i] = v
        return per
