"""The probe's training batches: the train split of OUT's shards through the project's loader
(output/loader.py), in an order that is a function of (seed, epoch) alone.

Resuming must end at the weights an uninterrupted run reaches, so nothing here draws from a global or
time-seeded RNG: each epoch's shard order and its sample shuffle (a bounded buffer, like webdataset's)
come from `random.Random(f"{seed}:{epoch}")`, the loader centre-crops without random draws, and the
random flip is drawn per step by the training step (probe/step.py). A checkpoint records where the
stream stood (`Position`: epoch, batches taken from it), and `batches(start)` replays that epoch up to
there (decoding the skipped samples: at most one epoch's worth) and goes on.

Only the manifest's `shards` are read: the train split (the held-out eval split, `eval-*.tar` with
`shard.eval_fraction`, is listed apart and is never trained on; a tar of that name among them is refused).
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from editgen.output.loader import instruct_pix2pix_dataset
from editgen.output.manifest import entries, read_manifest
from editgen.pipeline.errors import InputError
from editgen.pipeline.redact import redact_text, redact_url
from editgen.pipeline.storage import Storage

#: The held-out split's tar prefix (docs/sessions.md' sibling contract, issue 24): never training data.
EVAL_PREFIX = "eval-"


@dataclass(frozen=True)
class Position:
    """Where the batch stream stands: `batch` batches of epoch `epoch` were taken."""

    epoch: int = 0
    batch: int = 0


@dataclass(frozen=True)
class TrainSplit:
    """The published train split: its tar URLs and what the manifest says of it."""

    urls: list[str]
    samples: int
    generation: str


def train_split(storage: Storage, out: str) -> TrainSplit:
    """OUT's published train tars (manifest order); one line when there is nothing to train on."""
    try:
        manifest = read_manifest(storage)
    except FileNotFoundError:
        raise InputError(f"{redact_url(out)}: no published shards (no manifest.json); run the pipeline through "
                         "the shard stage, then rerun `editgen train-probe`") from None
    except ValueError as exc:
        raise InputError(f"{redact_url(out)}: unreadable manifest ({exc})") from None
    listed = entries(manifest)
    held_out = [e["name"] for e in listed if e["name"].rsplit("/", 1)[-1].startswith(EVAL_PREFIX)]
    if held_out:
        raise InputError(f"{redact_url(out)}: the manifest lists eval tar {held_out[0]} among the train shards; "
                         "the held-out split must not be trained on")
    samples = int(manifest.get("samples", 0))
    if not listed or samples <= 0:
        raise InputError(f"{redact_url(out)}: the published shards hold no samples; nothing to train on")
    return TrainSplit([storage.url(e["name"]) for e in listed], samples, str(manifest.get("generation", "")))


def _shuffled(items: Iterator[dict[str, Any]], rng: random.Random, size: int) -> Iterator[dict[str, Any]]:
    """A bounded-buffer shuffle (at most `size` samples held) drawing only from `rng`."""
    buf: list[dict[str, Any]] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    while buf:
        yield buf.pop(rng.randrange(len(buf)))


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


class BatchStream:
    """Batches {original_pixel_values, edited_pixel_values, input_ids} of the train split, epoch after
    epoch; the last batch of an epoch may be smaller (a batch never spans two epochs)."""

    def __init__(self, urls: Sequence[str], tokenizer: Any, resolution: int, batch_size: int, seed: int,
                 shuffle_buffer: int = 256) -> None:
        self.urls, self.tokenizer = list(urls), tokenizer
        self.resolution, self.batch_size, self.seed, self.buffer = resolution, batch_size, seed, shuffle_buffer

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over every train sample, in the order (seed, epoch) fixes."""
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(self.urls)
        rng.shuffle(order)
        ds = instruct_pix2pix_dataset(order, self.resolution, shuffle_shards=False, shuffle_buffer=0,
                                      center_crop=True, random_flip=False, tokenizer=self.tokenizer)
        batch: list[dict[str, Any]] = []
        for sample in _shuffled(iter(ds), rng, self.buffer):
            batch.append({k: v for k, v in sample.items() if not k.startswith("__")})
            if len(batch) == self.batch_size:
                yield _collate(batch)
                batch = []
        if batch:
            yield _collate(batch)

    def batches(self, start: Position = Position()) -> Iterator[tuple[Position, dict[str, torch.Tensor]]]:
        """(position after the batch, batch) from `start` on, forever; InputError when an epoch is empty."""
        epoch, skip = start.epoch, start.batch
        while True:
            taken = 0
            try:
                for index, batch in enumerate(self.epoch(epoch)):
                    taken += 1
                    if index >= skip:
                        yield Position(epoch, index + 1), batch
            except (OSError, ValueError, KeyError, tarfile.TarError) as exc:  # a damaged published tar
                detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
                raise InputError(f"train shards: an unreadable sample in epoch {epoch} ({redact_text(detail)}); "
                                 "`editgen validate OUT` names the damaged tar") from None
            if taken == 0:
                raise InputError("the train shards yielded no samples (every tar empty or unreadable)")
            epoch, skip = epoch + 1, 0
