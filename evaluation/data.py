"""The eval set: an OUT's held-out split, WebDataset tars, or a parquet file, read into `EvalSample`s.

Formats (docs/evaluate.md):
- an editgen OUT: the tars its manifest's "eval" section lists (`shard.eval_fraction`); there the
  `edited` image IS the target (the pair the model should reproduce);
- WebDataset tars (a file, a folder of them, or a brace pattern): `<key>.input.<ext>`, the instruction as
  `<key>.txt` or `"instruction"` in `<key>.json`, optional `<key>.target.<ext>` (else `<key>.edited.<ext>`:
  in editgen's own shards the edited image is the reference edit),
  optional `<key>.mask.png`, captions as `input_caption` (or `caption`) and `edited_caption` in the JSON;
- parquet: columns input_image (bytes), instruction (str), optional target_image, mask (bytes),
  input_caption, edited_caption (str) and key (str); an image may also be a {"bytes": ...} struct
  (the Hugging Face `Image` feature).
Every sample is checked here (its images decode, its instruction is text): a bad one is one InputError
line naming the file and key, never a silently smaller eval set.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from editgen.filters.pairs.clip_score import decode_image
from editgen.output.manifest import MANIFEST, manifest_problem, read_manifest
from editgen.pipeline.errors import InputError
from editgen.pipeline.redact import redact_url
from editgen.pipeline.storage import Storage, open_filesystem

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
#: The manifest section of the held-out split (docs/issue 24 contract: written by the shard stage).
EVAL_SECTION = "eval"
#: A folder holding this is an editgen OUT (read through its manifest, never by a directory scan).
OUT_CONFIG = "config.yaml"
#: One tar member or parquet cell above this is refused (an eval image is a few MB at most).
MAX_MEMBER_BYTES = 64 << 20
#: Parquet rows decoded at a time; file bytes hashed at a time.
PARQUET_BATCH = 64
CHUNK = 8 << 20
#: WebDataset's key rule: the basename up to its first dot.
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass(frozen=True)
class EvalSample:
    """One edit to evaluate: the input, the instruction, and what it is measured against where given."""

    key: str
    input_image: bytes
    instruction: str
    target_image: bytes | None = None
    mask: bytes | None = None
    input_caption: str | None = None
    edited_caption: str | None = None


def _check(sample: EvalSample, where: str) -> EvalSample:
    """Every image decodes and the instruction is non-empty text, else one line naming where and the key."""
    if not sample.instruction.strip():
        raise InputError(f"{where}: sample {sample.key!r}: empty instruction; expected the edit instruction text")
    for name in ("input_image", "target_image", "mask"):
        data = getattr(sample, name)
        if data is not None and decode_image(data) is None:
            raise InputError(f"{where}: sample {sample.key!r}: {name} does not decode as an image")
    return sample


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _from_members(key: str, members: dict[str, bytes], where: str) -> EvalSample:
    """A WebDataset sample (member suffix -> bytes) as an EvalSample."""
    def image(stem: str) -> bytes | None:
        return next((members[f"{stem}.{e}"] for e in IMAGE_EXTS if f"{stem}.{e}" in members), None)

    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InputError(f"{where}: sample {key!r}: {key}.json is not JSON") from None
        meta = meta if isinstance(meta, dict) else {}
    inp = image("input")
    if inp is None:
        raise InputError(f"{where}: sample {key!r}: no {key}.input.<png|jpg|webp> member")
    try:
        instruction = members["txt"].decode("utf-8") if "txt" in members else meta.get("instruction")
    except UnicodeDecodeError:
        raise InputError(f"{where}: sample {key!r}: {key}.txt is not UTF-8 text") from None
    if not isinstance(instruction, str):
        raise InputError(f"{where}: sample {key!r}: no instruction ({key}.txt or \"instruction\" in {key}.json)")
    target = image("target")
    target = image("edited") if target is None else target
    captions = _text(meta.get("input_caption") or meta.get("caption")), _text(meta.get("edited_caption"))
    return _check(EvalSample(key, inp, instruction.strip(), target, members.get("mask.png"), *captions), where)


def _tar_samples(f: IO[bytes], where: str) -> Iterator[EvalSample]:
    """Samples in tar order (a sample's members are consecutive, as WebDataset writes them), streamed: one
    sample's members in memory at a time."""
    key, members = None, {}
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                m = _KEY.match(info.name)
                if not info.isfile() or m is None or posixpath.basename(info.name).startswith("__"):
                    continue
                if info.size > MAX_MEMBER_BYTES:
                    raise InputError(f"{where}: member {info.name} is {info.size} bytes (limit {MAX_MEMBER_BYTES})")
                if m[1] != key and key is not None:
                    yield _from_members(key, members, where)
                    members = {}
                key = m[1]
                if m[2] in members:
                    raise InputError(f"{where}: sample key {key!r} appears twice (member {info.name}); keys seed "
                                     "each sample's generator and must be unique")
                members[m[2]] = tar.extractfile(info).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"{where}: not a readable tar ({exc})") from None
    if key is not None:
        yield _from_members(key, members, where)


def _cell(value: Any, column: str, where: str) -> bytes | None:
    if isinstance(value, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if value is None or isinstance(value, bytes):
        return value
    raise InputError(f"{where}: column {column} holds {type(value).__name__}; expected image bytes")


def _parquet_samples(f: IO[bytes], where: str) -> Iterator[EvalSample]:
    """Rows of a parquet file as samples, read in batches; a missing required column or a null cell is one
    line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{where}: not a readable parquet file ({exc})") from None
    missing = [c for c in ("input_image", "instruction") if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"{where}: no column {', '.join(missing)}; expected input_image (bytes), instruction (str), "
                         "optional target_image, mask, input_caption, edited_caption, key")
    i = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            yield _parquet_row(row, i, where)
            i += 1


def _parquet_row(row: dict[str, Any], i: int, where: str) -> EvalSample:
    at = f"{where}: row {i}"
    inp = _cell(row.get("input_image"), "input_image", at)
    if inp is None or not isinstance(row.get("instruction"), str):
        raise InputError(f"{at}: input_image and instruction must not be null")
    return _check(EvalSample(str(row.get("key") or f"row-{i:06d}"), inp, row["instruction"].strip(),
                             _cell(row.get("target_image"), "target_image", at), _cell(row.get("mask"), "mask", at),
                             _text(row.get("input_caption")), _text(row.get("edited_caption"))), at)


def _file_sha256(fs: Any, path: str, where: str) -> str:
    """The whole file's sha256, read in chunks (a --limit read may stop early; the checksum never does)."""
    h = hashlib.sha256()
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise InputError(f"{where}: cannot read ({type(exc).__name__})") from None
    return h.hexdigest()
def out_eval_urls(storage: Storage, where: str) -> tuple[list[str], dict[str, Any]]:
    """An OUT's held-out tars (manifest "eval" section) and what the report says of them; no split is one
    line saying how to get one."""
    try:
        manifest = read_manifest(storage)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{where}: no readable {MANIFEST} ({type(exc).__name__}); "
                         "run the pipeline through shard") from None
    why = manifest_problem(manifest)
    if why is not None:
        raise InputError(f"{where}: {MANIFEST} is not an editgen manifest ({why})")
    section = manifest.get(EVAL_SECTION)
    shards = section.get("shards") if isinstance(section, dict) else None
    if isinstance(shards, list) and not shards:
        raise InputError(f"{where}: its eval split is empty (no sample was held out); raise shard.eval_fraction "
                         "and rerun, or pass --data TARS|PARQUET")
    if not isinstance(shards, list) or not shards or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                             for e in shards):
        raise InputError(f"{where}: no held-out eval split in its manifest; set shard.eval_fraction (e.g. `editgen "
                         "run --out OUT --set shard.eval_fraction=0.1`) and rerun, or pass --data TARS|PARQUET")
    source = {"kind": "editgen-eval-split", "out": where, "generation": manifest.get("generation"),
              "eval_samples": section.get("samples")}
    return [storage.url(e["name"]) for e in shards], source


def _expand(data: list[str], options: dict[str, Any]) -> tuple[list[str], str, dict[str, Any]]:
    """(file URLs, kind, source) for the --data values: one OUT, or tars / parquet files / folders of them."""
    import webdataset as wds

    if len(data) == 1:
        storage = Storage(data[0], options)
        if any(storage.exists(*p) for p in ((MANIFEST,), ("shards", MANIFEST), (OUT_CONFIG,))):
            urls, source = out_eval_urls(storage, redact_url(data[0]))
            return urls, "tar", source
    urls: list[str] = []
    for item in data:
        fs, path = open_filesystem(item, options)
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith((".tar", ".parquet")))
            urls += [item.rstrip("/") + p[len(path.rstrip("/")):] for p in found]
        else:
            urls += list(wds.shardlists.expand_urls(item))
    kinds = {"parquet" if u.endswith(".parquet") else "tar" for u in urls}
    if not urls or len(kinds) > 1:
        what = "no .tar or .parquet file" if not urls else "both tars and parquet files"
        raise InputError(f"{', '.join(redact_url(d) for d in data)}: {what}; expected an editgen OUT, "
                         "WebDataset tars or parquet files (docs/evaluate.md)")
    kind = kinds.pop()
    return urls, kind, {"kind": "webdataset" if kind == "tar" else "parquet"}


class EvalReader:
    """--data resolved at construction (a bad EVAL fails before any model loads), then its samples streamed
    in file order, the first `limit` only; `summary()` is the report's data section (each file read and its
    sha256, the counts)."""

    def __init__(self, data: list[str], limit: int | None, options: dict[str, Any]) -> None:
        self.urls, self.kind, self.origin = _expand(data, options)
        self.data, self.limit, self.options = data, limit, options
        self.read: list[dict[str, Any]] = []
        self.counts = {"samples": 0, "samples_with_target": 0, "samples_with_captions": 0, "samples_with_mask": 0}

    def __iter__(self) -> Iterator[EvalSample]:
        seen: set[str] = set()
        for url in self.urls:
            if self.limit is not None and self.counts["samples"] >= self.limit:
                break
            where = redact_url(url)
            fs, path = open_filesystem(url, self.options)
            self.read.append({"name": where, "sha256": _file_sha256(fs, path, where)})
            with fs.open(path, "rb") as f:
                for sample in _parquet_samples(f, where) if self.kind == "parquet" else _tar_samples(f, where):
                    if self.limit is not None and self.counts["samples"] >= self.limit:
                        break
                    if sample.key in seen:
                        raise InputError(f"{where}: sample key {sample.key!r} appears twice; keys seed each "
                                         "sample's generator and must be unique")
                    seen.add(sample.key)
                    self._count(sample)
                    yield sample
        if not self.counts["samples"]:
            raise InputError(f"{', '.join(redact_url(d) for d in self.data)}: no samples")

    def check(self) -> None:
        """Read (and check) every sample once, holding none: the first bad one is its one line now."""
        for _ in self:
            pass
        self.read.clear()
        self.counts = dict.fromkeys(self.counts, 0)

    def _count(self, sample: EvalSample) -> None:
        self.counts["samples"] += 1
        self.counts["samples_with_target"] += sample.target_image is not None
        self.counts["samples_with_captions"] += sample.input_caption is not None and sample.edited_caption is not None
        self.counts["samples_with_mask"] += sample.mask is not None

    def summary(self) -> dict[str, Any]:
        return {**self.origin, "read": self.read, **self.counts, "limit": self.limit}
