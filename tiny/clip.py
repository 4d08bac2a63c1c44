"""A tiny random-weight open_clip CLIP with the real CLIP BPE tokenizer, built offline.

No model hub is reachable in tests or the `tiny` profile, so the filter is exercised on a CLIP made in
code: weights are random (scores are meaningless) but everything else — tokenizer, preprocessing,
the safetensors checkpoint and `open_clip.create_model_and_transforms(name, pretrained=FILE)` — is the
production path. The build is deterministic from a seed and cached per directory.
Usage: `python -m tiny.clip DIR [--seed N]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import uuid
from pathlib import Path

from editgen.pipeline.cache import cache_dir

TINY_CLIP_NAME = "tiny-clip"
#: Real vocabulary and context length (so the real tokenizer fits); everything else minimal.
TINY_CLIP_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> None:
    """Make `tiny-clip` a known open_clip architecture (idempotent, per process)."""
    from open_clip import factory

    factory._MODEL_CONFIGS.setdefault(TINY_CLIP_NAME, copy.deepcopy(TINY_CLIP_CFG))


def default_cache_dir() -> Path:
    """Where the tiny CLIP weights are cached (pipeline.cache.cache_dir)."""
    return cache_dir()


def tiny_clip_path(directory: str | Path, seed: int = 0) -> Path:
    return Path(directory) / TINY_CLIP_NAME / f"tiny-clip-seed{seed}.safetensors"


def ensure_tiny_clip(directory: str | Path | None = None, seed: int = 0) -> Path:
    """Build (once) and return the safetensors checkpoint of the tiny CLIP for `seed`."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    register_tiny_clip()
    path = tiny_clip_path(directory or default_cache_dir(), seed)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        save_file(state, str(tmp))
        os.replace(tmp, path)  # concurrent builders write identical bytes; last rename wins
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(ensure_tiny_clip(args.directory, args.seed))


if __name__ == "__main__":
    main()
