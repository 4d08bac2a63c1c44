"""`editgen export-hf OUT DEST`: the shards as a Hugging Face dataset folder (output.export_hf): DEST/data/
<split>-NNNNN-of-NNNNN.parquet and DEST/README.md, so `datasets.load_dataset(DEST)` gives every split."""

from __future__ import annotations

import argparse

from editgen.output.export_hf import export_hf
from editgen.pipeline.freshness import refuse_stale
from editgen.pipeline.storage import Storage, parse_storage_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory (reads OUT/manifest.json)")
    parser.add_argument("dest", metavar="DEST", help="dataset folder to write (new, empty or an earlier export)")
    parser.add_argument("--rows-per-file", type=int, default=1000, help="rows per parquet file (default 1000)")
    parser.add_argument("--split", default="train", help="split name of the kept samples (default train)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rejected", action="store_true",
                       help="write only the `rejected` split (default: kept samples, and rejected ones too when "
                       "the run published them with shard.export_rejected)")
    which.add_argument("--no-rejected", dest="rejected", action="store_false",
                       help="write only the kept samples' split")
    parser.set_defaults(rejected=None)


def main(args: argparse.Namespace) -> int:
    options = parse_storage_options(getattr(args, "storage_option", None))
    refuse_stale(Storage(args.out, options), args.out, "export-hf", through="shard")  # never stale shards
    done = export_hf(args.out, args.dest, args.rows_per_file, args.split, args.rejected, options)
    for split, rows in done.items():
        print(f"{split}: {rows} rows in {args.dest}/data/{split}-*.parquet (files: {args.dest}/export-{split}.json)")
    print(f"load it: datasets.load_dataset({args.dest!r}) (card: {args.dest}/README.md)")
    return 0
