"""Evaluate an InstructPix2Pix model as its paper did: the CLIP direction vs image similarity curve over
image guidance 1.0..2.2 (text guidance 7.5), and MagicBrush's L1, CLIP-I, DINO and CLIP-T where the eval
set has target images, with every model and library version in the report (docs/evaluate.md).

`editgen evaluate MODEL --data EVAL --out REPORT`: MODEL is a diffusers StableDiffusionInstructPix2PixPipeline
folder or hub id (what `editgen train-probe` writes); EVAL is an editgen OUT (its held-out split,
shard.eval_fraction), WebDataset tars or a parquet file; REPORT gets curve.json, curve.png and metrics.json.
"""

from __future__ import annotations

import argparse
import sys

from editgen.evaluation.report import table
from editgen.evaluation.run import DEFAULT_CLIP, DEFAULT_DINO, NO_DINO, EvalOptions, evaluate
from editgen.evaluation.sweep import DEFAULT_GRID, parse_grid
from editgen.pipeline.storage import parse_storage_options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="diffusers InstructPix2Pix folder or hub id")
    parser.add_argument("--data", action="append", required=True, metavar="EVAL",
                        help="an editgen OUT (its held-out eval split), WebDataset tars (file, folder, brace "
                        "pattern; repeatable) or a parquet file (docs/evaluate.md)")
    parser.add_argument("--out", required=True, metavar="REPORT", help="report directory (created)")
    parser.add_argument("--image-guidance", default=DEFAULT_GRID, metavar="GRID",
                        help=f"START:STOP:STEP or a comma list (default {DEFAULT_GRID}: InstructPix2Pix's 1.0:2.2:0.2 "
                        "and the default 1.5)")
    parser.add_argument("--steps", type=_positive, default=20, help="denoising steps (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each sample's is derived from it and its key")
    parser.add_argument("--resolution", type=_positive, default=None,
                        help="shorter side of the model's input (default: each input's own size)")
    parser.add_argument("--limit", type=_positive, default=None, metavar="N", help="the first N samples")
    parser.add_argument("--clip-model", default=None,
                        help=f"open_clip model (default: an OUT's filter.clip_model, else {DEFAULT_CLIP[0]})")
    parser.add_argument("--clip-pretrained", default=None,
                        help="open_clip pretrained tag or .safetensors file (default: the OUT's, else "
                        f"{DEFAULT_CLIP[1]})")
    parser.add_argument("--dino-model", default=None,
                        help=f"DINOv2 hub id, folder or tiny-dino; {NO_DINO} = no DINO (default: an OUT's "
                        f"filter.dino_model, tiny-dino with the tiny CLIP, else {DEFAULT_DINO})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="torch CPU threads (default: torch's; on a busy machine 1 is often fastest)")


def main(args: argparse.Namespace) -> int:
    grid = parse_grid(args.image_guidance)
    opts = EvalOptions(model=args.model, data=tuple(args.data), report=args.out, grid=tuple(grid), steps=args.steps,
                       seed=args.seed, resolution=args.resolution, limit=args.limit, clip_model=args.clip_model,
                       clip_pretrained=args.clip_pretrained, dino_model=args.dino_model, device=args.device,
                       threads=args.threads,
                       storage_options=parse_storage_options(getattr(args, "storage_option", None)))
    curve, metrics = evaluate(opts, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(curve, metrics))
    print(f"report: {args.out} (curve.json, metrics.json{', curve.png' if curve['plot'] else ''})")
    return 0
