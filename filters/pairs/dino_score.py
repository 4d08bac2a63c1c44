"""DINOv2 similarity of a before/after pair: how much of the input image's content the edit kept.

`dinov2_sim = cos(D0, D1)`, D0 / D1 the DINOv2 CLS embeddings (`pooler_output`: the final layer-normed
CLS token) of the input and the edited image. CLIP's `sim_image` is trained to match captions, so it
barely moves when an object's identity or the layout changes; DINOv2's self-supervised features do,
which is why UltraEdit filters on it (too low: another picture; too high: nothing was edited). Any
DINOv2 (or other transformers vision backbone with a pooled output) loads by hub id or local folder
through ``AutoModel`` / ``AutoImageProcessor.from_pretrained`` (safetensors only); `tiny-dino` is a
random-weight one built in code (tiny.dino) for offline tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from editgen.filters.pairs.clip_score import decode_image
from editgen.filters.pairs.placement import Placement
from editgen.pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from editgen.pipeline.settings.filter import FilterConfig

DINO_COLUMNS = ("dinov2_sim",)
#: Bump when the scoring computation changes, so cached scores are not reused.
DINO_VERSION = "1"
#: A hub id: `org/name` (what `from_pretrained` resolves when it is not a local folder).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DinoSpec(Placement):
    """Which DINOv2 and how: everything that decides `dinov2_sim`, resolved for this machine."""

    model: str = "facebook/dinov2-base"
    device: str = "auto"
    precision: str = "auto"

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> DinoSpec:
        return cls(cfg.dino_model or "", cfg.device, cfg.precision)

    def cache_key(self) -> str:
        """Fingerprint of what determines the scores (a local folder by its weights' path and size, the tiny
        one by its construction's version)."""
        from editgen.tiny.dino import TINY_DINO_NAME, TINY_DINO_VERSION

        weights: object = self.model
        if self.model == TINY_DINO_NAME:
            weights = {"tiny": TINY_DINO_VERSION}
        elif os.path.isdir(self.model):
            files = sorted(n for n in os.listdir(self.model) if n.endswith(".safetensors"))
            weights = {"dir": os.path.abspath(self.model),
                       "bytes": [os.path.getsize(os.path.join(self.model, n)) for n in files]}
        blob = {"m": weights, "p": self.resolved_precision(), "v": DINO_VERSION}
        return "dinov2/" + hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def check_dino_model(model: str) -> None:
    """Before any work: `tiny-dino`, a local folder with safetensors weights, or a hub id (`org/name`);
    ValueError (one line) otherwise. A folder without safetensors would make transformers fall back to a
    pickled checkpoint, which can run code when loaded."""
    from editgen.tiny.dino import TINY_DINO_NAME

    if model == TINY_DINO_NAME:
        return
    if os.path.isdir(model):
        if not any(n.endswith(".safetensors") for n in os.listdir(model)):
            raise ValueError(f"{model}: no .safetensors weights in this folder (pickled .bin is not loaded)")
        return
    if os.path.exists(model) or not _HUB_ID.match(model):
        raise ValueError(f"{model!r}: not a folder of a transformers model, a hub id (org/name) nor 'tiny-dino'")


def resolve_dino_model(model: str) -> str:
    """A loadable folder or hub id: the tiny one is built once into the cache (tiny.dino)."""
    from editgen.tiny.dino import TINY_DINO_NAME, build_tiny_dino

    return str(build_tiny_dino()) if model == TINY_DINO_NAME else model


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of float32 embeddings (N, D)."""
    import torch.nn.functional as F

    return F.cosine_similarity(F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1), dim=-1)


class DinoScorer:
    """One loaded DINOv2 and its image processor; `dinov2_sim` per candidate."""

    def __init__(self, spec: DinoSpec, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # no loading bars in worker logs
        transformers_logging.disable_progress_bar()
        self.spec, self.batch_size = spec, batch_size
        self.device = torch.device(spec.resolved_device())
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.resolved_precision(), torch.float32)
        path = resolve_dino_model(spec.model)
        try:
            self.processor = AutoImageProcessor.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True, dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001 - missing weights or config, no hub: one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"filter.dino_model: cannot load {spec.model!r}: {first}") from None
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> DinoScorer:
        return cls(DinoSpec.from_config(cfg), cfg.dino_batch_size)

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLS embeddings (N, D), float32 on CPU."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = self.processor(images=list(images[i : i + self.batch_size]), return_tensors="pt")
                pixels = x["pixel_values"].to(self.device, dtype=self.dtype)
                out.append(self.model(pixel_values=pixels).pooler_output.float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    def score(self, inputs: Sequence[bytes | None], edited: Sequence[bytes | None]) -> dict[str, np.ndarray]:
        """`dinov2_sim` per candidate (NaN where an image is missing or undecodable). The candidates of a
        pair share their input image: each distinct image is encoded once."""
        n = len(inputs)
        result = np.full(n, np.nan, dtype=np.float32)
        for start in range(0, n, self.batch_size):  # decode per batch: a partition may not fit decoded
            rows = range(start, min(n, start + self.batch_size))
            distinct = {data: decode_image(data) for i in rows for data in (inputs[i], edited[i]) if data}
            ok = [i for i in rows if inputs[i] and edited[i]
                  and distinct[inputs[i]] is not None and distinct[edited[i]] is not None]
            if not ok:
                continue
            order = [data for data, img in distinct.items() if img is not None]
            emb = self.encode([distinct[data] for data in order])
            at = {data: j for j, data in enumerate(order)}
            a = emb[[at[inputs[i]] for i in ok]]
            b = emb[[at[edited[i]] for i in ok]]
            result[ok] = cosine(a, b).clamp(-1.0, 1.0).numpy()
        return {"dinov2_sim": result}
