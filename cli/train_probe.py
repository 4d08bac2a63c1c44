"""Fine-tune InstructPix2Pix on OUT's train split from the run's own render model: a probe of what the data teaches.

`editgen train-probe OUT --steps N --out MODEL` widens the render model's UNet as InstructPix2Pix did
(4 zero-initialised input channels for the input image's latent), trains it with InstructPix2Pix's
conditioning dropout on the published train shards (never the held-out eval split), checkpoints under
MODEL/checkpoints (rerun the same command to resume), and writes MODEL as a diffusers
StableDiffusionInstructPix2PixPipeline folder with MODEL/probe.json (docs/probe.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from editgen.pipeline.config import out_config
from editgen.pipeline.errors import InputError, OutputError, UserError
from editgen.pipeline.freshness import refuse_stale
from editgen.pipeline.redact import redact_url
from editgen.pipeline.storage import Storage, parse_storage_options
from editgen.probe.checkpoints import CHECKPOINTS
from editgen.probe.data import train_split
from editgen.probe.train import PROBE_FILE, ProbeSettings, train_probe

COMMAND = "train-probe"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _resolution(text: str) -> int:
    value = _positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8 (the VAE downsamples by 8), got {text!r}")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a learning rate in (0, 1), got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory or URL (its published shards)")
    parser.add_argument("--out", dest="model", required=True, metavar="MODEL",
                        help="local folder for the trained pipeline, probe.json and checkpoints")
    parser.add_argument("--steps", type=_positive_int, required=True, help="optimizer steps to train to")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="samples per step (default 4)")
    parser.add_argument("--lr", type=_learning_rate, default=1e-4, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--resolution", type=_resolution, default=None,
                        help="training image side, a multiple of 8 (default: the run's render size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order and every draw (default 0)")
    parser.add_argument("--checkpoint-every", type=_positive_int, default=500, metavar="N",
                        help="save resumable state every N steps (and at the last; default 500)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                        help="accelerate's mixed precision on a GPU (always off on the CPU; default no)")


def _model_dir(model: str) -> Path:
    """MODEL: a local folder that is absent, empty, or an earlier train-probe's (never another folder)."""
    path = Path(model)
    if "://" in model:
        raise OutputError(f"{model}: --out must be a local folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: --out is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not ((path / CHECKPOINTS).is_dir() or (path / PROBE_FILE).is_file()):
        raise OutputError(f"{path}: --out is a folder holding something other than a probe; use a new folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(args: argparse.Namespace) -> int:
    storage = Storage(args.out, parse_storage_options(getattr(args, "storage_option", None)))
    if not storage.exists():
        raise UserError(f"{redact_url(args.out)}: no such output directory")
    split = train_split(storage, args.out)
    refuse_stale(storage, args.out, COMMAND)
    model_dir = _model_dir(args.model)
    settings = ProbeSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, resolution=args.resolution,
                             seed=args.seed, checkpoint_every=args.checkpoint_every,
                             mixed_precision=args.mixed_precision)
    logger, progress = logging.getLogger("editgen"), logging.StreamHandler(sys.stderr)
    level = logger.level
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)  # the loss every 10 steps, the checkpoint resumed from
    try:
        record = train_probe(args.out, split, out_config(storage), model_dir, settings)
    except ValueError as exc:  # a scheduler or model the probe cannot train
        raise InputError(f"{redact_url(args.out)}: {exc}") from None
    finally:
        logger.removeHandler(progress)
        logger.setLevel(level)
    print(f"train-probe: {record['steps']} steps on {record['train_samples']} samples of {redact_url(args.out)} "
          f"(final loss {record['loss'][-1]:.4f}) -> {model_dir} (StableDiffusionInstructPix2PixPipeline, "
          f"{PROBE_FILE})")
    return 0
