"""`editgen export-hf OUT DEST`: kept samples as Hugging Face `datasets` parquet (output.export_hf)."""

from __future__ import annotations

import argparse

from output.export_hf import export_hf
from pipeline.storage import parse_storage_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory (reads OUT/shards)")
    parser.add_argument("dest", metavar="DEST", help="directory for the datasets parquet files")
    parser.add_argument("--rows-per-file", type=int, default=1000)
    parser.add_argument("--split", default="train")
    parser.add_argument("--rejected", action="store_true", help="export the rejected candidates instead")


def main(args: argparse.Namespace) -> int:
    options = parse_storage_options(getattr(args, "storage_option", None))
    n = export_hf(args.out, args.dest, args.rows_per_file, args.split, args.rejected, options)
    print(f"wrote {n} rows to {args.dest}/data (file list: {args.dest}/export-{args.split}.json)")
    return 0
