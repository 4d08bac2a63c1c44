"""Export editgen shards to Hugging Face `datasets` parquet (columns input_image, edit_prompt,
edited_image) — the layout diffusers' train_instruct_pix2pix.py loads with `--dataset_name DIR`.

Written with pyarrow alone (the `datasets` package is optional): images use the `datasets` Image feature
storage layout, a struct {bytes, path}, and the schema carries the `huggingface` features metadata so
`datasets.load_dataset("parquet", ...)` decodes them as images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from output.manifest import MANIFEST, manifest_problem, manifest_url, parse_manifest, read_manifest_text
from pipeline.errors import InputError
from pipeline.redact import redact_url
from pipeline.storage import TMP_MARK, Storage

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


class _Hashing:
    """A file read front to back (tarfile's stream mode), hashing every byte it hands out."""

    def __init__(self, f: Any) -> None:
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def iter_shard_samples(storage: Storage, entries: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Samples (webdataset's grouping of tar members by key) from manifest entries (tars named relative to
    OUT), in order; each tar is hashed as it streams and checked against the manifest's sha256 at its end,
    before anything is published (the export's marker is written last), so a damaged shard fails the
    export in one line."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    for entry in entries:
        name = entry["name"]
        with storage.open(name) as f:
            src = _Hashing(f)
            yield from group_by_keys({**d, "__url__": name} for d in tar_file_iterator(src))
            while src.read(1 << 20):  # the end-of-archive blocks tarfile leaves unread
                pass
        if src.h.hexdigest() != entry["sha256"]:
            raise InputError(f"{storage.url(name)}: sha256 does not match the manifest (damaged); "
                             "nothing exported (`editgen run --set run.verify_checksums=full` rewrites it)")


def _row(sample: dict[str, Any]) -> dict[str, Any]:
    key = sample["__key__"]

    def image(stem: str) -> dict[str, Any]:
        for ext in ("png", "jpg"):
            if f"{stem}.{ext}" in sample:
                return {"bytes": sample[f"{stem}.{ext}"], "path": f"{key}.{stem}.{ext}"}
        raise KeyError(f"{key}: no {stem} image")

    return {"input_image": image("input"), "edit_prompt": sample["txt"].decode("utf-8"),
            "edited_image": image("edited")}


def _source(src: Storage, rejected: bool) -> tuple[dict[str, Any], str]:
    """(shard set to export, fingerprint of the published manifest); a set with nothing in it is an error
    rather than an empty export."""
    try:
        text, where = read_manifest_text(src)
    except FileNotFoundError:
        raise InputError(f"{manifest_url(src)}: missing (has the shard stage run?)") from None
    except ValueError:  # not UTF-8
        text, where = "", (MANIFEST,)
    try:
        manifest = parse_manifest(text, where)
        why = manifest_problem(manifest)
    except ValueError:
        why = "not JSON"
    if why is not None:
        raise InputError(f"{manifest_url(src)}: not an editgen manifest ({why})")
    if rejected and "rejected" not in manifest:
        raise InputError(f"{src.root}: no rejected shards (run with --set shard.export_rejected=true)")
    shards = manifest.get("rejected", {}) if rejected else manifest
    if not int(shards.get("samples", 0)):
        what = "rejected samples" if rejected else "samples"
        raise InputError(f"{src.root}: the published dataset has no {what}; nothing to export")
    return shards, hashlib.sha256(text.encode()).hexdigest()


def export_hf(
    out: str, dest: str, rows_per_file: int = 1000, split: str = "train", rejected: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Write DEST/data/<split>-<tag>-NNNNN-of-NNNNN.parquet from OUT's published shards, then
    DEST/export-<split>.json (the marker naming exactly those files), then remove the split's other files.

    Nothing half-done is ever the export: on local disks the new `data` folder is assembled beside DEST
    and swapped in by rename; on object stores the new files have names of their own (the tag), the
    marker is written last, and only then do the previous files go. Returns rows written.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", split) or rows_per_file < 1:
        raise InputError(f"--split {split!r} / --rows-per-file {rows_per_file}: expected a split name of "
                         "letters, digits and _ and at least 1 row per file")
    src, dst = Storage(out, storage_options or {}), Storage(dest, storage_options or {})
    shards, source_sha = _source(src, rejected)
    entries = shards.get("shards", [])
    n_files = max(1, -(-int(shards["samples"]) // rows_per_file))
    tag = hashlib.sha256(f"{source_sha}\n{rows_per_file}\n{rejected}".encode()).hexdigest()[:8]
    stage = Storage(dst.path(f"{TMP_MARK}export-{uuid.uuid4().hex[:8]}")) if dst.local else dst
    files, written, buf = [], 0, []
    for sample in iter_shard_samples(src, entries):
        buf.append(_row(sample))
        if len(buf) >= rows_per_file:
            files.append(_write_part(stage, buf, split, tag, len(files), n_files))
            written, buf = written + len(buf), []
    if buf:
        files.append(_write_part(stage, buf, split, tag, len(files), n_files))
        written += len(buf)
    if dst.local:
        _swap_local(dst, stage, split)
    marker = {"split": split, "files": [f"data/{f}" for f in files], "rows": written, "rejected": rejected,
              "source": redact_url(manifest_url(src)), "source_manifest_sha256": source_sha}
    dst.write_text(json.dumps(marker, sort_keys=True, indent=1) + "\n", f"export-{split}.json")
    for name in dst.listdir("data"):
        if name.startswith(f"{split}-") and name not in files:
            dst.remove("data", name)
    return written


def _write_part(storage: Storage, rows: list[dict[str, Any]], split: str, tag: str, i: int, n: int) -> str:
    name = f"{split}-{tag}-{i:05d}-of-{n:05d}.parquet"
    storage.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), "data", name)
    return name


def _swap_local(dst: Storage, stage: Storage, split: str) -> None:
    """Local disks: the other splits' files join the staged folder (hard links), then two renames
    replace DEST/data; a reader sees the old set or the new one (or, for an instant, none), never both."""
    live, staged = dst.path("data"), stage.path("data")
    os.makedirs(staged, exist_ok=True)
    if os.path.isdir(live):
        for name in os.listdir(live):
            if not name.startswith(f"{split}-") and not os.path.exists(os.path.join(staged, name)):
                os.link(os.path.join(live, name), os.path.join(staged, name))
        old = dst.path(f"{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
        os.rename(live, old)
        os.rename(staged, live)
        shutil.rmtree(old)
    else:
        os.rename(staged, live)
    shutil.rmtree(stage.root_path, ignore_errors=True)
    for name in os.listdir(dst.root_path):  # staging folders of killed exports
        if name.startswith(f"{TMP_MARK}export-") or name.startswith(f"{TMP_MARK}old-"):
            shutil.rmtree(os.path.join(dst.root_path, name), ignore_errors=True)
