"""Export editgen shards to Hugging Face `datasets` parquet (columns input_image, edit_prompt,
edited_image) — the layout diffusers' train_instruct_pix2pix.py loads with `--dataset_name DIR`.

Written with pyarrow alone (the `datasets` package is optional): images use the `datasets` Image feature
storage layout, a struct {bytes, path}, and the schema carries the `huggingface` features metadata so
`datasets.load_dataset("parquet", ...)` decodes them as images.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from output.shard_writer import SHARDS_DIR, read_manifest
from pipeline.storage import Storage

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [("input_image", IMAGE_TYPE), ("edit_prompt", pa.string()), ("edited_image", IMAGE_TYPE)]
).with_metadata(
    {
        b"huggingface": json.dumps(
            {
                "info": {
                    "features": {
                        "input_image": {"_type": "Image"},
                        "edit_prompt": {"dtype": "string", "_type": "Value"},
                        "edited_image": {"_type": "Image"},
                    }
                }
            }
        ).encode()
    }
)


def iter_shard_samples(storage: Storage, names: list[str]) -> Iterator[dict[str, Any]]:
    """Samples (webdataset's grouping of tar members by key) from shards, in manifest order."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    for name in names:
        with storage.fs.open(storage.path(SHARDS_DIR, name), "rb") as f:
            yield from group_by_keys({**d, "__url__": name} for d in tar_file_iterator(f))


def _row(sample: dict[str, Any]) -> dict[str, Any]:
    key = sample["__key__"]

    def image(stem: str) -> dict[str, Any]:
        for ext in ("png", "jpg"):
            if f"{stem}.{ext}" in sample:
                return {"bytes": sample[f"{stem}.{ext}"], "path": f"{key}.{stem}.{ext}"}
        raise KeyError(f"{key}: no {stem} image")

    return {"input_image": image("input"), "edit_prompt": sample["txt"].decode("utf-8"),
            "edited_image": image("edited")}


def export_hf(
    out: str, dest: str, rows_per_file: int = 1000, split: str = "train", rejected: bool = False
) -> int:
    """Write DEST/data/<split>-NNNNN-of-NNNNN.parquet from OUT's shards; returns rows written."""
    src, dst = Storage(out), Storage(dest)
    manifest = read_manifest(src)
    shards = (manifest.get("rejected", {}) if rejected else manifest)
    names = [s["name"] for s in shards.get("shards", [])]
    total = int(shards.get("samples", 0))
    n_files = max(1, -(-total // rows_per_file))
    buf: list[dict[str, Any]] = []
    written = files = 0

    def flush() -> None:
        nonlocal written, files, buf
        table = pa.Table.from_pylist(buf, schema=SCHEMA)
        dst.write_table(table, "data", f"{split}-{files:05d}-of-{n_files:05d}.parquet")
        written += len(buf)
        files += 1
        buf = []

    for sample in iter_shard_samples(src, names):
        buf.append(_row(sample))
        if len(buf) >= rows_per_file:
            flush()
    if buf or files == 0:
        flush()
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory (reads OUT/shards)")
    parser.add_argument("dest", metavar="DEST", help="directory for the datasets parquet files")
    parser.add_argument("--rows-per-file", type=int, default=1000)
    parser.add_argument("--split", default="train")
    parser.add_argument("--rejected", action="store_true", help="export the rejected candidates instead")


def main(args: argparse.Namespace) -> int:
    n = export_hf(args.out, args.dest, args.rows_per_file, args.split, args.rejected)
    print(f"wrote {n} rows to {args.dest}/data")
    return 0
