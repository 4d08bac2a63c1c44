"""`editgen shards OUT`: the published dataset's shard URLs, so a client reads exactly it, never a glob.

One URL per line (default; `webdataset.WebDataset(urls)`, `ray.data.read_webdataset(urls)`,
`datasets.load_dataset("webdataset", data_files=urls)`), `--brace` one webdataset brace pattern
(`.../edits-{000000..000004}.tar`), `--json` an object with both and the counts; `--rejected` the
rejected candidates (shard.export_rejected) instead, `--eval` the held-out eval split
(shard.eval_fraction). URLs are absolute: local paths, or the store's
URL (s3://bucket/...). They name the current generation as OUT/manifest.json lists it; a rerun that
re-shards publishes a new generation, so ask again after a run.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
from typing import Any

from editgen.output.manifest import entries, manifest_url, read_manifest
from editgen.pipeline.errors import InputError
from editgen.pipeline.freshness import refuse_stale
from editgen.pipeline.storage import Storage, parse_storage_options

_NUMBERED = re.compile(r"(.*-)(\d+)(\.tar)")


def brace_pattern(urls: list[str]) -> str:
    """One webdataset (braceexpand) pattern that expands to exactly `urls`, in order."""
    if len(urls) == 1:
        return urls[0]
    found = [_NUMBERED.fullmatch(u) for u in urls]
    if all(found):
        heads = {(m.group(1), m.group(3), len(m.group(2))) for m in found if m}
        numbers = [int(m.group(2)) for m in found if m]
        if len(heads) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            head, tail, width = heads.pop()
            return f"{head}{{{numbers[0]:0{width}d}..{numbers[-1]:0{width}d}}}{tail}"
    folder = posixpath.commonpath(urls) if all("://" not in u for u in urls) else ""
    if folder and all(u.startswith(folder + "/") for u in urls):
        return f"{folder}/{{{','.join(u[len(folder) + 1:] for u in urls)}}}"
    return "{" + ",".join(urls) + "}"


#: Why a set a manifest lacks is absent: what to run to have it.
_ABSENT = {"rejected": "no rejected shards (run with --set shard.export_rejected=true)",
           "eval": "no eval split (run with --set shard.eval_fraction=0.1, say)"}


def published(out: str, rejected: bool, options: dict[str, Any], held_out: bool = False) -> dict[str, Any]:
    """{urls, brace, samples, shards, generation, manifest} of OUT's published kept (train), rejected or
    held-out eval (`held_out`: shard.eval_fraction) set; one InputError line when there is none to read."""
    storage = Storage(out, options)
    split = "rejected" if rejected else "eval" if held_out else "train"
    try:
        manifest = read_manifest(storage)
        part = manifest if split == "train" else manifest.get(split)
        urls = [storage.url(e["name"]) for e in entries(manifest, split=split)] if part is not None else []
    except FileNotFoundError:
        raise InputError(f"{manifest_url(storage)}: missing (has the shard stage run?)") from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(f"{manifest_url(storage)}: not an editgen manifest ({type(exc).__name__}: {exc})") from None
    if part is None:
        raise InputError(f"{out}: {_ABSENT[split]}")
    if not urls:
        raise InputError(f"{out}: the published dataset has no {'' if split == 'train' else split + ' '}samples")
    return {"urls": urls, "brace": brace_pattern(urls), "samples": part.get("samples"), "shards": len(urls),
            "generation": manifest.get("generation"), "manifest": manifest_url(storage),
            "set": "kept" if split == "train" else split}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="editgen output directory or URL (reads OUT/manifest.json)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--brace", action="store_true",
                      help="one webdataset brace pattern, e.g. OUT/shards/gen-x/edits-{000000..000004}.tar")
    form.add_argument("--json", action="store_true",
                      help="a JSON object: urls, brace, samples, shards, generation, manifest")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rejected", action="store_true",
                       help="the rejected candidates' shards (written with shard.export_rejected)")
    which.add_argument("--eval", action="store_true",
                       help="the held-out eval split's shards (written with shard.eval_fraction)")


def main(args: argparse.Namespace) -> int:
    options = parse_storage_options(getattr(args, "storage_option", None))
    refuse_stale(Storage(args.out, options), args.out, "shards", through="shard")  # never stale shards' URLs
    found = published(args.out, args.rejected, options, args.eval)
    if args.json:
        print(json.dumps(found, indent=1))
    elif args.brace:
        print(found["brace"])
    else:
        print("\n".join(found["urls"]))
    return 0
