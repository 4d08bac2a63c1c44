"""A tiny random-weight DINOv2 for offline tests of the filter's `dinov2_sim` (filters.pairs.dino_score).

No model hub is reachable in tests or the `tiny` profile, so `filter.dino_model: tiny-dino` names a DINOv2
made in code: a `Dinov2Config` with tiny sizes (2 layers of width 32, 28 px crops in 7 px patches) and
seeded random weights, saved with `save_pretrained` (safetensors) beside the image processor config
`facebook/dinov2-base` ships (a `BitImageProcessor`: shortest edge resized, centre crop, ImageNet mean
and std; smaller sizes). It is loaded back through ``AutoModel`` / ``AutoImageProcessor.from_pretrained``,
the path a hub id takes, so only the weights' values differ from production: the scores mean little, but
identical images score 1 and unrelated ones clearly less. Usage: `python -m editgen.tiny.dino [DIR] [--seed N]`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from editgen.pipeline.cache import cache_dir
from editgen.tiny.folder import build_once

TINY_DINO_NAME = "tiny-dino"
TINY_DINO_VERSION = 1  # bump when the construction changes, so cached folders get rebuilt
#: ImageNet statistics, as facebook/dinov2-base's preprocessor_config.json.
_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _save(folder: Path, seed: int) -> None:
    """The model (seeded random weights) and its image processor, as save_pretrained writes them."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # Initialised 10x wider than DINOv2's 0.02: at 0.02 the CLS token is mostly its own bias and every two
    # images score ~0.97; at 0.2 the patches reach it (measured: noise vs a gradient ~0.45, a local edit ~0.99).
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=28, patch_size=7, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    BitImageProcessor(do_resize=True, size={"shortest_edge": 32}, resample=3, do_center_crop=True,
                      crop_size={"height": 28, "width": 28}, do_rescale=True, rescale_factor=1 / 255,
                      do_normalize=True, image_mean=_MEAN, image_std=_STD,
                      do_convert_rgb=True).save_pretrained(str(folder))


def build_tiny_dino(path: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Build (once) the tiny DINOv2 folder; a folder whose marker matches (version, seed) is reused. Written
    to a temporary sibling and renamed into place, so concurrent builders never expose a half-written model."""
    out = Path(path) if path is not None else cache_dir() / TINY_DINO_NAME
    meta: dict[str, object] = {"version": TINY_DINO_VERSION, "variant": "dinov2", "seed": seed}
    return build_once(out, meta, lambda folder: _save(folder, seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_dino(args.directory, args.seed))


if __name__ == "__main__":
    main()
