"""Training-side reader: editgen shards -> the batches diffusers' train_instruct_pix2pix.py expects.

Yields dicts with `input_image` and `edited_image` (float tensors, 3xRxR, in [-1, 1]) and
`edit_prompt` (str). One random resize/crop/flip is drawn per sample and applied to both images
(they are stacked into one 6-channel tensor first), so the pair stays pixel-aligned.
Shards are shuffled, split by node (torch.distributed rank) and by DataLoader worker.

OUT may be a local path or any fsspec URL (s3://...): the shard list is exactly what the manifest
names (never a directory glob, which could see a generation being written or removed), and object-store
shards stream through fsspec (credentials and endpoints from the standard variables, e.g. AWS_*, or
$EDITGEN_STORAGE_OPTIONS).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import IO, Any

import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from output.shard_writer import MANIFEST, SHARDS_DIR
from pipeline.storage import Storage, open_filesystem, parse_storage_options

COLUMNS = ("input_image", "edit_prompt", "edited_image")
#: Object-store protocols whose shards webdataset should open through fsspec.
FSSPEC_SCHEMES = ("s3", "s3a", "gcs", "gs", "az", "abfs", "abfss", "memory")


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_kw: Any) -> IO[bytes]:
    """webdataset URL opener for object stores (registered for FSSPEC_SCHEMES)."""
    fs, path = open_filesystem(url, parse_storage_options(None))
    return fs.open(path, mode, block_size=max(bufsize, 8 << 20))


def register_fsspec_schemes() -> None:
    """Make webdataset (in this process and in forked or spawned DataLoader workers, which import this
    module to unpickle the sample mapper) open object-store URLs through fsspec."""
    schemes = importlib.import_module("webdataset.gopen").gopen_schemes  # the package re-exports a function
    for scheme in FSSPEC_SCHEMES:
        schemes[scheme] = gopen_fsspec


register_fsspec_schemes()


def shard_urls(source: str | Sequence[str], rejected: bool = False) -> list[str]:
    """Shard URLs from OUT (or OUT/shards) via its manifest, read fresh; lists/brace patterns pass through."""
    if not isinstance(source, str):
        return list(source)
    options = parse_storage_options(None)
    for base in (f"{source.rstrip('/')}/{SHARDS_DIR}", source):
        storage = Storage(base, options)
        try:
            m = json.loads(storage.read_text(MANIFEST))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        entries = m.get("rejected", {}).get("shards", []) if rejected else m["shards"]
        return [storage.url(s["name"]) for s in entries]
    return list(wds.shardlists.expand_urls(source))


def paired_transform(
    input_image: Image.Image,
    edited_image: Image.Image,
    resolution: int = 256,
    max_upscale: float = 1.0,
    center_crop: bool = False,
    random_flip: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the shorter side to resolution*s (s ~ U[1, max_upscale]), crop RxR, maybe flip: the same
    draw for both images. Returns two float tensors in [-1, 1]."""
    a = pil_to_tensor(input_image.convert("RGB")).float()
    b = pil_to_tensor(edited_image.convert("RGB")).float()
    if b.shape != a.shape:  # keep alignment even if a renderer returned another size
        b = F.interpolate(b[None], size=a.shape[-2:], mode="bilinear", antialias=True, align_corners=False)[0]
    pair = torch.cat([a, b])  # 6 x H x W
    h, w = pair.shape[-2:]
    scale = 1.0 + (max_upscale - 1.0) * float(torch.rand((), generator=generator))
    short = max(resolution, round(resolution * scale))
    size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    if size != (h, w):
        pair = F.interpolate(pair[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    h, w = size
    if center_crop:
        top, left = (h - resolution) // 2, (w - resolution) // 2
    else:
        top = int(torch.randint(0, h - resolution + 1, (), generator=generator))
        left = int(torch.randint(0, w - resolution + 1, (), generator=generator))
    pair = pair[:, top : top + resolution, left : left + resolution]
    if random_flip and float(torch.rand((), generator=generator)) < 0.5:
        pair = pair.flip(-1)
    pair = (pair / 127.5 - 1.0).clamp(-1.0, 1.0)
    return pair[:3].contiguous(), pair[3:].contiguous()


def _member(sample: dict[str, Any], stem: str) -> Any:
    for ext in ("png", "jpg", "jpeg", "webp"):
        if f"{stem}.{ext}" in sample:
            return sample[f"{stem}.{ext}"]
    raise KeyError(f"{sample.get('__key__')}: no {stem} image")


class _ToTraining:
    """Picklable sample mapper (DataLoader workers may be spawned)."""

    def __init__(self, resolution: int, max_upscale: float, center_crop: bool, random_flip: bool) -> None:
        self.kw = {
            "resolution": resolution, "max_upscale": max_upscale,
            "center_crop": center_crop, "random_flip": random_flip,
        }

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        x0, x1 = paired_transform(_member(sample, "input"), _member(sample, "edited"), **self.kw)
        return {"input_image": x0, "edit_prompt": sample["txt"], "edited_image": x1}


def instruct_pix2pix_dataset(
    source: str | Sequence[str],
    resolution: int = 256,
    *,
    shuffle_shards: bool = True,
    shuffle_buffer: int = 1000,
    max_upscale: float = 1.0,
    center_crop: bool = False,
    random_flip: bool = True,
    seed: int = 0,
    rejected: bool = False,
) -> wds.WebDataset:
    """An IterableDataset over editgen shards (OUT, OUT/shards, a list, or a brace pattern)."""
    urls = shard_urls(source, rejected=rejected)
    ds = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle_shards else False,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # more workers than shards leaves some workers empty; that is fine
        seed=seed,
    )
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer)
    return ds.decode("pil").map(_ToTraining(resolution, max_upscale, center_crop, random_flip))


def make_dataloader(
    source: str | Sequence[str], batch_size: int = 4, num_workers: int = 2, **kwargs: Any
) -> torch.utils.data.DataLoader:
    """DataLoader whose batches are {input_image: BxCxRxR, edited_image: ..., edit_prompt: [str]}."""
    ds = instruct_pix2pix_dataset(source, **kwargs)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, persistent_workers=False
    )
