"""Training-side reader: editgen shards -> paired, augmented training samples for a loop of your own.

Yields dicts with `input_image` and `edited_image` (float tensors, 3xRxR, in [-1, 1]) and
`edit_prompt` (str); with `tokenizer=` (the model's CLIP tokenizer) the keys diffusers'
train_instruct_pix2pix.py loop reads instead: `original_pixel_values`, `edited_pixel_values` (the same
tensors) and `input_ids` (padded to the tokenizer's model_max_length, as that script tokenizes); webdataset
adds each sample's `__key__`. That script itself does not take a DataLoader: it loads `--dataset_name`,
which `editgen export-hf OUT DEST` writes (output/export_hf.py). One random resize/crop/flip is drawn
per sample and applied to both images (they are stacked into one 6-channel tensor first), so the pair
stays pixel-aligned.
Shards are shuffled, split by node (torch.distributed rank) and by DataLoader worker: each worker reads
whole shards, so `make_dataloader` uses at most as many workers as there are shards (and says so).

OUT may be a local path or any fsspec URL (s3://...): the shard list is exactly what the manifest
names (never a directory glob, which could see a generation being written or removed), and object-store
shards stream through fsspec (credentials and endpoints from the standard variables, e.g. AWS_*, or
$EDITGEN_STORAGE_OPTIONS).

Splits: the training tars by default; `split="eval"` reads the held-out eval tars (shard.eval_fraction,
output.eval_split: pairs never in the training tars), `split="rejected"` (or `rejected=True`) the rejected ones.

Inverse pairs (instruct.inverse, output.inverse) are read like any sample; `inverse=False` skips them (by
their key, before any image is decoded) to train on the forward pairs alone.

Multi-turn sessions (instruct.turns > 1, output.sessions): by default (`sessions=False`) every turn is a
sample as above. `sessions=True` yields whole sessions instead: a list of turn samples (each the dict
above), turn 1 first, one list per chain (the turns of one candidate of a session: turn t's input image is
turn t-1's edited image). The turns of a list share one resize/crop/flip draw, so they stay pixel-aligned
with each other too. A sample without a `session` block (a dataset without sessions) is a 1-turn session;
inverse pairs are left out. A session's samples are consecutive in one tar (the shard writer keeps them
so), so grouping needs no more memory than one session and the shuffle buffer shuffles whole sessions.
`make_dataloader(..., sessions=True)` batches lists: a batch is a list of `batch_size` sessions (their
lengths differ, so they are not stacked).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterator, Sequence
from typing import IO, Any

import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from editgen.output.inverse import is_inverse_key
from editgen.output.manifest import SHARDS_DIR, published_urls
from editgen.output.sessions import SESSION_FIELD
from editgen.pipeline.storage import Storage, open_filesystem, parse_storage_options

log = logging.getLogger("editgen")

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


def shard_urls(source: str | Sequence[str], rejected: bool = False, split: str | None = None) -> list[str]:
    """Shard URLs of one split (`train` by default, `eval`: the held-out tars, `rejected`; rejected=True is
    `rejected`) from OUT (or OUT/shards) via its manifest, read fresh; lists/brace patterns pass through."""
    if not isinstance(source, str):
        return list(source)
    options = parse_storage_options(None)
    base = source.rstrip("/")
    roots = [base] + ([base.rsplit("/", 1)[0]] if base.endswith(f"/{SHARDS_DIR}") else [])
    for root in roots:
        try:
            urls = published_urls(Storage(root, options), rejected, split)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        if not urls and split == "eval":
            raise ValueError(f"{source}: the published dataset has no eval split (shard.eval_fraction is 0, or no "
                             "pair was drawn for it)")
        return urls
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
    """Picklable sample mapper (DataLoader workers may be spawned); with a tokenizer, diffusers' keys."""

    def __init__(self, resolution: int, max_upscale: float, center_crop: bool, random_flip: bool,
                 tokenizer: Any = None) -> None:
        self.kw = {
            "resolution": resolution, "max_upscale": max_upscale,
            "center_crop": center_crop, "random_flip": random_flip,
        }
        self.tokenizer = tokenizer

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        x0, x1 = paired_transform(_member(sample, "input"), _member(sample, "edited"), generator=generator,
                                  **self.kw)
        if self.tokenizer is None:
            return {"input_image": x0, "edit_prompt": sample["txt"], "edited_image": x1}
        tok = self.tokenizer
        ids = tok(sample["txt"], max_length=tok.model_max_length, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids[0]
        return {"original_pixel_values": x0, "edited_pixel_values": x1, "input_ids": ids}


def _session_of(sample: dict[str, Any]) -> tuple[str, str, int]:
    """(session id, chain: its first sample's key, turn) from a raw sample's JSON; a sample outside a
    session is a session of its own (its key, turn 1)."""
    try:
        block = json.loads(sample["json"]).get(SESSION_FIELD)
    except (KeyError, ValueError, AttributeError):
        block = None
    if not isinstance(block, dict):
        return sample["__key__"], sample["__key__"], 1
    return str(block["id"]), str(block["first"]), int(block["turn"])


def _chains(found: list[tuple[str, int, dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """One session's raw samples -> its chains (by first key), each in turn order."""
    chains: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for first, turn, sample in found:
        chains.setdefault(first, []).append((turn, sample))
    for first in sorted(chains):
        yield [sample for _, sample in sorted(chains[first], key=lambda t: t[0])]


def group_sessions(samples: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive raw samples of one session -> one list per chain (module doc); inverse pairs dropped."""
    current: str | None = None
    found: list[tuple[str, int, dict[str, Any]]] = []
    for sample in samples:
        if is_inverse_key(sample["__key__"]):
            continue
        sid, first, turn = _session_of(sample)
        if sid != current and found:
            yield from _chains(found)
            found = []
        current = sid
        found.append((first, turn, sample))
    if found:
        yield from _chains(found)


class _SessionToTraining:
    """Picklable session mapper: decode each turn's images and apply one shared transform draw."""

    def __init__(self, to_training: _ToTraining) -> None:
        self.to_training = to_training
        self.decode = wds.autodecode.Decoder([wds.autodecode.imagehandler("pil")])

    def __call__(self, chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seed = int(torch.randint(0, 2**62, ()))
        return [self.to_training(self.decode(sample), torch.Generator().manual_seed(seed)) for sample in chain]


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
    tokenizer: Any = None,
    inverse: bool = True,
    sessions: bool = False,
    split: str | None = None,
) -> wds.WebDataset:
    """An IterableDataset over editgen shards (OUT, OUT/shards, a list, or a brace pattern); `tokenizer`
    (e.g. CLIPTokenizer) switches to diffusers' keys; `inverse=False` leaves inverse pairs out; `sessions`
    yields whole sessions, lists of turn samples (module doc); `split="eval"` reads the held-out tars
    (shard.eval_fraction) instead of the training ones."""
    urls = shard_urls(source, rejected=rejected, split=split)
    ds = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle_shards else False,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # more workers than shards leaves some workers empty; that is fine
        seed=seed,
    )
    to_training = _ToTraining(resolution, max_upscale, center_crop, random_flip, tokenizer)
    if sessions:
        ds = ds.compose(group_sessions)
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer)
        return ds.map(_SessionToTraining(to_training))
    if not inverse:
        ds = ds.select(lambda sample: not is_inverse_key(sample["__key__"]))
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer)
    return ds.decode("pil").map(to_training)


def node_shards(urls: Sequence[str]) -> int:
    """How many of these shards this node reads (webdataset's split_by_node: every world_size-th)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return len(urls[dist.get_rank() :: dist.get_world_size()])
    return len(urls)


def make_dataloader(
    source: str | Sequence[str], batch_size: int = 4, num_workers: int = 2, *, rejected: bool = False,
    sessions: bool = False, split: str | None = None, **kwargs: Any,
) -> torch.utils.data.DataLoader:
    """DataLoader whose batches are {input_image: BxCxRxR, edited_image: ..., edit_prompt: [str]} (with
    `tokenizer=`: {original_pixel_values, edited_pixel_values, input_ids}); with `sessions`, a batch is a
    list of `batch_size` sessions (each a list of turn samples: module doc). A worker reads whole shards,
    so workers beyond this node's shard count would get nothing: they are not started (a log line says
    so and how to get more shards); `split` as `instruct_pix2pix_dataset`'s."""
    urls = shard_urls(source, rejected=rejected, split=split)
    shards = node_shards(urls)
    if num_workers > max(shards, 1):
        log.warning("make_dataloader: %d shard(s) for this node, so %d DataLoader worker(s) instead of %d (each "
                    "worker reads whole shards; more, smaller shards: --set shard.samples_per_shard=N)",
                    shards, max(shards, 1), num_workers)
        num_workers = max(shards, 1)
    ds = instruct_pix2pix_dataset(urls, sessions=sessions, **kwargs)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, persistent_workers=False,
        collate_fn=list if sessions else None,
    )
