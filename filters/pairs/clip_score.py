"""CLIP scores of a before/after pair, as InstructPix2Pix filtered its generated data.

With L2-normalized embeddings I0, I1 (input/edited image) and T0, T1 (input/edited caption):
  sim_0 = cos(I0, T0), sim_1 = cos(I1, T1), sim_direction = cos(I1 - I0, T1 - T0), sim_image = cos(I0, I1).
Any open_clip model works; the tiny random CLIP (tiny.clip) stands in where no hub is reachable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from editgen.filters.pairs.placement import Placement

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from PIL import Image

    from editgen.pipeline.settings.filter import FilterConfig

SCORE_COLUMNS = ("sim_0", "sim_1", "sim_direction", "sim_image")
#: Bump when the scoring computation changes, so cached scores are not reused.
SCORER_VERSION = "1"


def clip_similarities(
    i0: torch.Tensor, i1: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The four scores from raw (unnormalized) embeddings, each of shape (N, D)."""
    import torch.nn.functional as F

    i0, i1, t0, t1 = (F.normalize(x.float(), dim=-1) for x in (i0, i1, t0, t1))
    return {
        "sim_0": F.cosine_similarity(i0, t0, dim=-1),
        "sim_1": F.cosine_similarity(i1, t1, dim=-1),
        "sim_direction": F.cosine_similarity(i1 - i0, t1 - t0, dim=-1),
        "sim_image": F.cosine_similarity(i0, i1, dim=-1),
    }


@dataclass(frozen=True)
class ClipSpec(Placement):
    """Which CLIP, where and how: everything that decides the scores, resolved for this machine."""

    model: str = "ViT-L-14"
    pretrained: str = "openai"
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> ClipSpec:
        return cls(cfg.clip_model, cfg.clip_pretrained, cfg.device, cfg.precision, cfg.clip_cache_dir)

    def model_id(self) -> str:
        """Human-readable id stored with every scored row."""
        return f"{self.model}/{self.pretrained}" if self.pretrained else self.model

    def cache_key(self) -> str:
        """Fingerprint of what determines the scores (not the device: fp32 CPU == fp32 GPU up to noise)."""
        weights: Any = self.pretrained
        if self.pretrained and os.path.isfile(self.pretrained):
            weights = {"file": os.path.abspath(self.pretrained), "bytes": os.path.getsize(self.pretrained)}
        blob = {"m": self.model, "w": weights, "p": self.resolved_precision(), "v": SCORER_VERSION}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def check_weights_file(path: str) -> None:
    """Local weights load only from safetensors: open_clip would torch.load (unpickle) anything else."""
    if os.path.isfile(path) and not path.endswith(".safetensors"):
        raise ValueError(f"{path}: only .safetensors weights are loaded (a pickled .bin/.pt/.pth checkpoint "
                         "can run code when loaded); convert it with safetensors.torch.save_file")


def check_weights_dir(path: str) -> None:
    """`local-dir:PATH`: open_clip falls back to *.bin/*.pth when the folder holds no safetensors."""
    if os.path.isdir(path) and not any(n.endswith(".safetensors") for n in os.listdir(path)):
        raise ValueError(f"{path}: no .safetensors weights in this folder (pickled .bin/.pth are not loaded)")


def _resolve_pretrained(spec: ClipSpec) -> str | None:
    """Tiny CLIP: build its checkpoint on demand; others: pass the tag/file through to open_clip."""
    from editgen.tiny.clip import TINY_CLIP_NAME, ensure_tiny_clip, register_tiny_clip

    if spec.model.startswith("local-dir:"):
        check_weights_dir(spec.model.split(":", 1)[1])
    if spec.pretrained:
        check_weights_file(spec.pretrained)
    if spec.model == TINY_CLIP_NAME:
        register_tiny_clip()
        seed = 0
        if spec.pretrained.startswith("seed:"):
            seed = int(spec.pretrained.split(":", 1)[1])
        elif spec.pretrained and os.path.isfile(spec.pretrained):
            return spec.pretrained
        return str(ensure_tiny_clip(spec.cache_dir, seed))
    return spec.pretrained or None


def decode_image(data: bytes | None) -> Image.Image | None:
    """Encoded PNG/JPEG -> RGB image; None when missing or corrupt (scored as NaN, dropped later)."""
    from PIL import Image

    if not data:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except Exception:  # noqa: BLE001 - any decoder failure means "not a usable image"
        return None


class ClipScorer:
    """One loaded CLIP; batched image/text encoders and the pair scores."""

    def __init__(self, spec: ClipSpec, batch_size: int = 64) -> None:
        import open_clip
        import torch

        self.spec = spec
        self.batch_size = batch_size
        self.device = torch.device(spec.resolved_device())
        self.precision = spec.resolved_precision()
        cache_dir = spec.cache_dir
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=_resolve_pretrained(spec),
            precision=self.precision,
            device=self.device,
            cache_dir=cache_dir,
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        # Half-precision models keep some weights fp32; open_clip names the input dtype to feed.
        self.dtype = open_clip.get_input_dtype(self.precision) or torch.float32

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> ClipScorer:
        return cls(ClipSpec.from_config(cfg), cfg.clip_batch_size)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Raw image embeddings (N, D) in float32 on CPU."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([self.preprocess(im) for im in images[i : i + self.batch_size]])
                x = x.to(self.device, dtype=self.dtype, non_blocking=True)
                out.append(self.model.encode_image(x).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw text embeddings (N, D) in float32 on CPU; duplicates are encoded once."""
        import torch

        uniq = list(dict.fromkeys(texts))
        index = {t: i for i, t in enumerate(uniq)}
        out = []
        with torch.inference_mode():
            for i in range(0, len(uniq), self.batch_size):
                tokens = self.tokenizer(list(uniq[i : i + self.batch_size])).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu())
        if not out:
            return torch.empty(0, 0)
        emb = torch.cat(out)
        return emb[torch.tensor([index[t] for t in texts], dtype=torch.long)]

    def score(
        self,
        input_images: Sequence[bytes | None],
        edited_images: Sequence[bytes | None],
        captions: Sequence[str],
        edited_captions: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Scores per candidate (float32); NaN where an image is missing or undecodable."""
        n = len(input_images)
        result = {c: np.full(n, np.nan, dtype=np.float32) for c in SCORE_COLUMNS}
        for start in range(0, n, self.batch_size):  # decode per batch: a partition may not fit decoded
            rows = range(start, min(n, start + self.batch_size))
            dec = {i: (decode_image(input_images[i]), decode_image(edited_images[i])) for i in rows}
            idx = [i for i, (a, b) in dec.items() if a is not None and b is not None]
            if not idx:
                continue
            i0 = self.encode_images([dec[i][0] for i in idx])
            i1 = self.encode_images([dec[i][1] for i in idx])
            t = self.encode_texts([captions[i] for i in idx] + [edited_captions[i] for i in idx])
            sims = clip_similarities(i0, i1, t[: len(idx)], t[len(idx) :])
            for name, values in sims.items():
                result[name][idx] = values.numpy()
        return result

    def score_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Scores for render rows (columns input_image, edited_image, caption, edited_caption)."""
        return self.score(
            table["input_image"].to_pylist(),
            table["edited_image"].to_pylist(),
            [s or "" for s in table["caption"].to_pylist()],
            [s or "" for s in table["edited_caption"].to_pylist()],
        )
