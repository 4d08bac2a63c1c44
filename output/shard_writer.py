"""Deterministic WebDataset shards: OUT/shards/gen-<G>/edits-NNNNNN.tar (kept), OUT/shards/gen-<G>/
eval-NNNNNN.tar (kept pairs held out, with shard.eval_fraction: output/eval_split.py), OUT/rejected/gen-<G>/
rejected-NNNNNN.tar (with shard.export_rejected) and OUT/manifest.json (the layout: output/manifest.py).

Same inputs and config give byte-identical shards: samples keep their upstream order, tar headers
carry a fixed mtime/uid/gid/uname/mode, JSON is written with sorted keys, and nothing records the time
or host. The manifest also says what each set's samples hold (members, the JSON's fields and their types,
joined over every sample: output/features.py), which the card declares. Each tar is assembled in memory
and published through pipeline.storage.Storage (temp name + rename locally, one PUT on object stores), so
readers never see half a shard.

Publication is by generation: a dataset's tars go into their own folder `gen-<G>` (G from the shard
config and upstream fingerprint, so an identical rerun lands in the same place), the manifest, which
lists exactly those tars, is written last (one atomic write), and only then are other generations
(and a manifest of the earlier layout, OUT/shards/manifest.json) removed. Until the new manifest
exists, readers (the loader, validate, export) see the previous complete dataset; a re-shard killed
half-way never mixes two datasets.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from editgen.filters.pairs.masks import MaskGeometry, mask_geometry
from editgen.output.compute_report import compute_report
from editgen.output.eval_split import EVAL_PREFIX, EVAL_SAMPLES_METRIC, EVAL_SECTION, EVAL_SHARDS_METRIC, in_eval
from editgen.output.features import FEATURES, SplitSchema, tar_schema, to_manifest
from editgen.output.inverse import INVERSE_METRIC, forward_row, has_inverse, inverse_key, inverse_row
from editgen.output.keys import sample_key
from editgen.output.manifest import (
    GEN_PREFIX,
    LEGACY_MANIFEST,
    MANIFEST,
    MANIFEST_FORMAT,
    REJECTED_DIR,
    SHARDS_DIR,
    SPLITS,
    entries,
)
from editgen.output.sessions import MANIFEST_SECTION as SESSIONS_SECTION
from editgen.output.sessions import SessionChains, SessionGap, session_metrics
from editgen.pipeline.faults import fault_delay_s
from editgen.pipeline.records import GlobalSummary, read_verified
from editgen.pipeline.redact import redact_text, redact_url
from editgen.pipeline.storage import Storage, parquet_file

REJECTED_PREFIX = "rejected"
#: 2000-01-01T00:00:00Z: any fixed value makes tars reproducible; 0 upsets some extractors.
TAR_MTIME = 946_684_800
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
#: Image columns -> member suffix stem; `mask` (always PNG) is in every sample: see `sample_members`.
IMAGE_MEMBERS = (("input_image", "input"), ("edited_image", "edited"))
REQUIRED_JSON = ("id", "candidate", "instruction", "caption", "edited_caption", "seed")


def image_ext(data: bytes, declared: str | None) -> str:
    """File extension from the bytes (authoritative) or the declared image_format."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    return "png" if (declared or "png") == "png" else "jpg"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


#: Columns that say where a sample came from (or why fetching it failed): published without credentials.
LOCATOR_COLUMNS = ("url", "source", "fetch_error")


def sample_metadata(row: dict[str, Any], mask: MaskGeometry | None = None) -> dict[str, Any]:
    """Every non-binary column (captions, seed, scores, model ids, url, source, row id, status...),
    with `params` (the engine's record as JSON text) expanded into an object, and what `mask` (the
    geometry of the sample's mask.png) says: `mask_rle`, `mask_bbox`, `mask_area`, and from the
    record's mask description `mask_words` / `mask_kind` (null where it has none)."""
    meta = {k: v for k, v in row.items() if not isinstance(v, bytes | bytearray)}
    meta["mask"] = "region" if row.get("mask") else "whole_image"  # what mask.png is (sample_members)
    for col in LOCATOR_COLUMNS:  # ingest already redacts them; a shard never trusts that alone
        if isinstance(meta.get(col), str):
            meta[col] = redact_url(meta[col]) if col != "fetch_error" else redact_text(meta[col], known=False)
    params = meta.get("params")
    if isinstance(params, str):
        try:
            meta["params"] = json.loads(params)
        except ValueError:
            pass
    if mask is not None:
        meta.update(mask_fields(mask, meta.get("params")))
    return _jsonable(meta)


def mask_fields(mask: MaskGeometry, params: object) -> dict[str, Any]:
    """The sample JSON's mask fields: geometry from the mask image itself (so they always describe the
    mask.png beside them: filters.pairs.masks gives the conventions), words and kind from the record's
    mask description (engines.record.CandidateRecord.mask) where it has them."""
    described = params.get("mask") if isinstance(params, dict) else None
    described = described if isinstance(described, dict) else {}
    words = described.get("words")
    ok_words = isinstance(words, list) and all(isinstance(w, str) for w in words)
    kind = described.get("kind")
    return {"mask_rle": mask.rle, "mask_bbox": mask.bbox, "mask_area": mask.area,
            "mask_words": words if ok_words else None, "mask_kind": kind if isinstance(kind, str) else None}


class BadMask(ValueError):
    """A row's mask does not decode: the sample is dropped as `bad_mask`."""

    reason = "bad_mask"


@functools.lru_cache(maxsize=8)
def whole_image_mask(width: int, height: int) -> bytes:
    """An all-white mask PNG (255 = may be edited): the mask of a sample whose edit had no region."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def _whole_image_geometry(width: int, height: int) -> MaskGeometry:
    import numpy as np

    return mask_geometry(np.ones((height, width), dtype=bool))


def _mask(row: dict[str, Any]) -> tuple[bytes, MaskGeometry]:
    """The row's edit-region mask, or the whole-image mask at the input image's size, and its geometry."""
    if row.get("mask"):
        data = bytes(row["mask"])
        try:
            return data, mask_geometry(data)
        except ValueError:
            raise BadMask("mask does not decode") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(row["input_image"])) as img:  # reads the header only
            return whole_image_mask(*img.size), _whole_image_geometry(*img.size)
    except (UnidentifiedImageError, OSError, ValueError):
        raise ValueError("input_image does not decode") from None


def sample_members(row: dict[str, Any], key: str | None = None,
                   images: Sequence[tuple[str, bytes]] = ()) -> tuple[str, list[tuple[str, bytes]]]:
    """(key, [(member name, bytes)]) for one candidate row (`key`: the row's own, `<id>-cNNNN`, unless given:
    an inverse pair's, output.inverse); `images`: further (stem, bytes) image members (a session's first
    input: output.sessions); raises ValueError on a missing image.

    Every sample of a dataset has the same members (readers that build one schema per dataset, such as
    Ray Data's read_webdataset, fail on a member only some samples have): `mask.png` is the edit region
    where the renderer gave one (LocalBlend) and an all-white mask (the whole image) elsewhere, as the
    JSON's `mask` field says; `reconstruction` is there for every sample of a real-image run and none
    of a synthetic one (p2p.real gives every candidate one)."""
    key = key or sample_key(str(row["id"]), int(row["candidate"]))
    members: list[tuple[str, bytes]] = []
    for col, stem in IMAGE_MEMBERS:
        data = row.get(col)
        if not data:
            raise ValueError(f"missing {col}")
        members.append((f"{key}.{stem}.{image_ext(data, row.get('image_format'))}", bytes(data)))
    mask, geometry = _mask(row)
    members.append((f"{key}.mask.png", mask))
    recon = row.get("reconstruction")
    if recon:  # real-image pairs: the photograph re-rendered from its inversion (p2p.real)
        members.append((f"{key}.reconstruction.{image_ext(recon, row.get('image_format'))}", bytes(recon)))
    members += [(f"{key}.{stem}.{image_ext(data, row.get('image_format'))}", data) for stem, data in images]
    members.append((f"{key}.txt", str(row.get("instruction") or "").encode("utf-8")))
    meta = json.dumps(sample_metadata(row, geometry), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    members.append((f"{key}.json", meta.encode("utf-8")))
    return key, members


def members_size(members: list[tuple[str, bytes]]) -> int:
    """Bytes these members occupy in a tar (header block + data padded to blocks)."""
    return sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for _, data in members)


def tar_size(payload: int) -> int:
    """Final tar size for `payload` member bytes: two zero blocks, padded to a record."""
    return -(-(payload + 2 * BLOCK) // RECORD) * RECORD


def build_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A reproducible tar: fixed header fields, members in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = TAR_MTIME
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str


class ShardSetWriter:
    """Cuts a stream of samples into numbered shards (by count and size) and writes them in parallel.

    Shard boundaries depend only on the sample sequence and the limits (sizes are computed exactly,
    before writing), so parallel writing cannot change the output. Consecutive samples of one `group` (a
    session's turns: output.sessions) are never cut apart: a tar holding one may pass the limits.
    `schema` is what the written tars' samples hold (output.features), joined in tar order.
    """

    def __init__(
        self,
        storage: Storage,
        prefix: str = "edits",
        samples_per_shard: int = 1000,
        max_shard_bytes: int = 1_000_000_000,
        workers: int = 2,
        subdir: str = SHARDS_DIR,
    ) -> None:
        self.storage, self.prefix, self.subdir = storage, prefix, subdir
        self.samples_per_shard, self.max_shard_bytes = samples_per_shard, max_shard_bytes
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="shard")
        self._inflight: list[Future[tuple[ShardInfo, SplitSchema]]] = []
        self.shards: list[ShardInfo] = []
        self.schema = SplitSchema()
        self._members: list[tuple[str, bytes]] = []
        self._count = 0
        self._payload = 0
        self._keys: set[str] = set()
        self._group: str | None = None

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def has_key(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str, members: list[tuple[str, bytes]], group: str | None = None) -> None:
        size = members_size(members)
        full = self._count >= self.samples_per_shard or (
            self._count and tar_size(self._payload + size) > self.max_shard_bytes
        )
        if full and (group is None or group != self._group):
            self._flush()
        self._group = group
        self._keys.add(key)
        self._members.extend(members)
        self._count += 1
        self._payload += size

    def _flush(self) -> None:
        if not self._count:
            return
        index = len(self.shards) + len(self._inflight)
        members, count = self._members, self._count
        self._members, self._count, self._payload = [], 0, 0
        while len(self._inflight) >= self.workers:  # bound memory: at most `workers` shards pending
            self._done()
        self._inflight.append(self._pool.submit(self._write, self.name(index), members, count))

    def _done(self) -> None:
        """The oldest pending shard's result, taken in tar order (so the joined schema's order is fixed)."""
        info, schema = self._inflight.pop(0).result()
        self.shards.append(info)
        self.schema = self.schema.join(schema)

    def _write(self, name: str, members: list[tuple[str, bytes]], count: int) -> tuple[ShardInfo, SplitSchema]:
        data = build_tar(members)
        delay = fault_delay_s("shard")  # test hook (docs/faults.md): lets a test kill the driver mid-stage
        if delay:
            time.sleep(delay)
        self.storage.write_bytes(data, self.subdir, name)
        return ShardInfo(name, count, len(data), hashlib.sha256(data).hexdigest()), tar_schema(members)

    def close(self, flush: bool = True) -> list[ShardInfo]:
        """Write the last shard (not when `flush` is False: the row stream failed, and a short tar must
        not land on a published one's name) and wait for every write."""
        try:
            if flush:
                self._flush()
            while self._inflight:
                self._done()
        finally:
            self._pool.shutdown(wait=True)
        return self.shards


def iter_rows(storage: Storage, parts: Iterable[tuple[str, str, str | None]], batch_rows: int = 256) -> Iterator[dict]:
    """Rows of finished partitions (directory, file, sha256 from its record) in file order. Each file is
    read once and checked against its sha256 before a row of it is used (pipeline.errors.DamagedInput
    names a damaged one); its rows are then decoded a record batch at a time from those bytes, so memory
    holds one partition's encoded bytes, not its decoded rows."""

    for directory, fname, sha256 in parts:
        data = read_verified(storage, directory, fname, sha256, "shard")
        for batch in parquet_file(data).iter_batches(batch_size=batch_rows):
            yield from pa.Table.from_batches([batch]).to_pylist()


def generation_name(config_hash: str, upstream_key: str, prefix: str) -> str:
    """Folder of one dataset generation: a pure function of what it is built from."""
    digest = hashlib.sha256(f"{config_hash}\n{upstream_key}\n{prefix}".encode()).hexdigest()
    return f"{GEN_PREFIX}{digest[:12]}"


def _set_summary(writer: ShardSetWriter) -> dict[str, Any]:
    """A closed set's manifest section. Entries name each tar relative to OUT (`shards/gen-<G>/edits-NNNNNN.tar`);
    `features`: what the set's samples hold (output.features; none for a set without samples)."""
    shards, folder = writer.shards, writer.subdir
    summary = {
        "samples": sum(s.samples for s in shards),
        "bytes": sum(s.bytes for s in shards),
        "shards": [{**asdict(s), "name": f"{folder}/{s.name}"} for s in shards],
    }
    return {**summary, FEATURES: to_manifest(writer.schema)} if summary["samples"] else summary


def _collect_model_edits(row: dict[str, Any], found: dict[str, Any]) -> None:
    """The render model's closed-form edits (docs/model_edits.md) each sample was drawn with, by checksum:
    applied in the actor (``model_edits``) or baked into an ``edit-model`` folder (``model_edits_in_model``)."""
    text = row.get("params")
    if not text or ("model_edits" not in text):
        return
    params = json.loads(text)
    for key in ("model_edits", "model_edits_in_model"):
        if params.get(key):
            found.setdefault(f"{key}:{params[key].get('checksum', '')}", {"applied": key, **params[key]})


def _add_sample(writer: ShardSetWriter, row: dict[str, Any], key: str | None = None,
                images: Sequence[tuple[str, bytes]] = (), group: str | None = None) -> str:
    """The row's sample into `writer`; returns its key, or the drop reason's name prefixed with '!'."""
    try:
        key, members = sample_members(row, key, images)
    except ValueError as exc:  # BadMask: bad_mask
        return "!" + getattr(exc, "reason", "missing_image")
    if writer.has_key(key):
        return "!duplicate_key"
    writer.add(key, members, group)
    return key


@dataclass
class Writers:
    """Where each row's sample goes: the kept (train) tars, the eval tars (shard.eval_fraction:
    output.eval_split) or the rejected tars (shard.export_rejected; None: rejected rows are not written)."""

    kept: ShardSetWriter
    rejected: ShardSetWriter | None = None
    eval: ShardSetWriter | None = None
    eval_fraction: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def for_row(self, row: dict[str, Any], is_kept: bool) -> ShardSetWriter | None:
        if not is_kept:
            return self.rejected
        return self.eval if self.eval is not None and in_eval(row, self.eval_fraction) else self.kept

    def count_inverse(self, writer: ShardSetWriter) -> None:
        """An inverse sample published (`inverse`: every split; `eval_inverse`: those in eval)."""
        for name in ("inverse", "eval_inverse") if writer is self.eval else ("inverse",):
            self.counts[name] = self.counts.get(name, 0) + 1

    def close(self, complete: bool) -> tuple[list[ShardInfo], list[ShardInfo], list[ShardInfo]]:
        """(kept, rejected, eval) shards, every writer closed even when one fails."""
        try:
            kept = self.kept.close(complete)
        finally:
            try:
                rejected = self.rejected.close(complete) if self.rejected else []
            finally:
                held_out = self.eval.close(complete) if self.eval else []
        return kept, rejected, held_out


def _add_inverse(writers: Writers, writer: ShardSetWriter, row: dict[str, Any], key: str, chains: SessionChains,
                 dropped: dict[str, int]) -> None:
    """A kept row's reversed sample right after its forward one (output.inverse), in its session's tar."""
    try:
        inv_row = inverse_row(row, key)
        inv = _add_sample(writer, inv_row, inverse_key(key), chains.own_first_input(inv_row), chains.group(row))
    except ValueError:
        inv = "!no_inverse_instruction"
    if inv.startswith("!"):
        dropped[f"inverse_{inv[1:]}"] = dropped.get(f"inverse_{inv[1:]}", 0) + 1
    else:
        writers.count_inverse(writer)


def _add_rows(rows: Iterable[dict[str, Any]], writers: Writers, dropped: dict[str, int],
              model_edits: dict[str, Any], chains: SessionChains) -> int:
    """Every row to its writer (kept or eval, or rejected when exported), each session turn linked to its
    chain (`chains`: output.sessions), and each kept row of an inverse dataset reversed right after it, in
    the same split (output.inverse; `writers.counts` counts them); returns the kept rows seen."""
    rows_in = 0
    for row in rows:
        is_kept = row.get("status", "kept") == "kept"
        writer = writers.for_row(row, is_kept)
        if writer is None:
            continue
        rows_in += int(is_kept)
        _collect_model_edits(row, model_edits)
        reversed_too = is_kept and has_inverse(row)
        try:
            sample, images = chains.prepare(forward_row(row) if reversed_too else row, is_kept)
            key = _add_sample(writer, sample, None, images, chains.group(row))
        except SessionGap as exc:
            key = "!" + exc.reason
        if key.startswith("!"):
            if is_kept:
                dropped[key[1:]] = dropped.get(key[1:], 0) + 1
            continue
        if is_kept:
            chains.published(row)
        if reversed_too:
            _add_inverse(writers, writer, row, key, chains, dropped)
    return rows_in


def _add_sections(manifest: dict[str, Any], model_edits: dict[str, Any], counts: Mapping[str, int],
                  render_metrics: Mapping[str, float] | None, extra: Mapping[str, Any]) -> int:
    """The manifest's optional sections: model edits; forward and inverse sample counts of each split (only
    with inverse pairs: a dataset without them keeps its manifest as it was); compute per kept (forward)
    sample of both splits; the caller's (a None value: left out). Returns the inverse samples of both splits."""
    if model_edits:
        manifest["model_edits"] = [model_edits[k] for k in sorted(model_edits)]
    n_inverse, eval_inverse = counts.get("inverse", 0), counts.get("eval_inverse", 0)
    held_out = manifest.get(EVAL_SECTION)
    if n_inverse:
        train_inverse = n_inverse - eval_inverse
        manifest["forward_samples"], manifest[INVERSE_METRIC] = manifest["samples"] - train_inverse, train_inverse
        if held_out is not None:
            held_out["forward_samples"], held_out[INVERSE_METRIC] = held_out["samples"] - eval_inverse, eval_inverse
    published = manifest["samples"] + (held_out["samples"] if held_out is not None else 0)
    report = compute_report(render_metrics, published - n_inverse, n_inverse) if render_metrics else None
    if report is not None:
        manifest["compute"] = report
    for name, value in extra.items():
        if value is not None:
            manifest[name] = value
    return n_inverse


def write_dataset(
    storage: Storage,
    rows: Iterable[dict[str, Any]],
    *,
    prefix: str = "edits",
    samples_per_shard: int = 1000,
    max_shard_bytes: int = 1_000_000_000,
    export_rejected: bool = False,
    eval_fraction: float = 0.0,
    workers: int = 2,
    config_hash: str = "",
    upstream_key: str = "",
    render_metrics: Mapping[str, float] | None = None,
    sections: Callable[[GlobalSummary], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write kept rows (and, optionally, rejected ones) as shards + manifest; returns a stage summary.
    ``eval_fraction`` holds kept pairs out in eval tars (output.eval_split); ``render_metrics`` (render's summed
    metrics) give compute per kept sample; ``sections``, called once every row is written with the rows in,
    out and dropped so far, further manifest sections (the funnel by edit type, counted as rows streamed; the
    survival funnel, which ends with this stage's own line). Rows out: the samples of both splits."""
    limits: dict[str, Any] = {"samples_per_shard": samples_per_shard, "max_shard_bytes": max_shard_bytes,
                              "workers": workers}
    dropped, gen = {}, generation_name(config_hash, upstream_key, prefix)
    kept_dir, rejected_dir = f"{SHARDS_DIR}/{gen}", f"{REJECTED_DIR}/{gen}"
    writers = Writers(ShardSetWriter(storage, prefix, subdir=kept_dir, **limits),
                      ShardSetWriter(storage, REJECTED_PREFIX, subdir=rejected_dir, **limits) if export_rejected
                      else None,
                      ShardSetWriter(storage, EVAL_PREFIX, subdir=kept_dir, **limits) if eval_fraction > 0 else None,
                      eval_fraction)
    model_edits: dict[str, Any] = {}
    chains, complete = SessionChains(), False
    try:
        rows_in = _add_rows(rows, writers, dropped, model_edits, chains)
        complete = True
    finally:  # a failed row stream (a damaged partition) writes no short last tar
        kept_shards, rejected_shards, eval_shards = writers.close(complete)
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "config_hash": config_hash, "upstream_key": upstream_key,
                                "prefix": prefix, "generation": gen, **_set_summary(writers.kept)}
    if writers.rejected is not None:
        manifest["rejected"] = _set_summary(writers.rejected)
    if writers.eval is not None:
        manifest[EVAL_SECTION] = _set_summary(writers.eval)
    published = manifest["samples"] + sum(s.samples for s in eval_shards)
    so_far: GlobalSummary = {"rows_in": rows_in, "rows_out": published, "dropped": dict(sorted(dropped.items()))}
    extra = {**(sections(so_far) if sections is not None else {}), SESSIONS_SECTION: chains.summary()}
    n_inverse = _add_sections(manifest, model_edits, writers.counts, render_metrics, extra)
    text = json.dumps(manifest, sort_keys=True, indent=1) + "\n"
    storage.write_text(text, MANIFEST)  # the publication point
    remove_other_generations(storage, gen, {e["name"] for split in SPLITS for e in entries(manifest, split=split)})
    return {
        "rows_in": rows_in,
        "rows_out": published,
        "dropped": dict(sorted(dropped.items())),
        "shards": len(kept_shards),
        "bytes": manifest["bytes"],
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "metrics": {**_split_metrics(manifest, rejected_shards, eval_shards),
                    **({INVERSE_METRIC: float(n_inverse)} if n_inverse else {}),
                    **session_metrics(manifest.get(SESSIONS_SECTION))},
    }


def _split_metrics(manifest: Mapping[str, Any], rejected: list[ShardInfo],
                   held_out: list[ShardInfo]) -> dict[str, float]:
    """The record's counts of the rejected tars and, with an eval split, of the eval tars."""
    found = {"rejected_samples": float(sum(s.samples for s in rejected)), "rejected_shards": float(len(rejected))}
    if EVAL_SECTION in manifest:
        found.update({EVAL_SAMPLES_METRIC: float(manifest[EVAL_SECTION]["samples"]),
                      EVAL_SHARDS_METRIC: float(len(held_out))})
    return found


def remove_other_generations(storage: Storage, keep: str, listed: set[str]) -> None:
    """After OUT/manifest.json names `keep` and its tars (`listed`): the earlier layout's manifest (first,
    so no reader follows it to tars about to go), earlier generations, tars of the pre-generation layout,
    files in `keep`'s folders that it does not list (an earlier layout's rejected tars) and temp files of
    killed writers go, so a glob over OUT/shards sees exactly the published tars (kept and eval)."""
    storage.remove(*LEGACY_MANIFEST)
    for folder in (SHARDS_DIR, REJECTED_DIR):
        storage.clean_temp(folder)
        for name in storage.listdir(folder):
            if name != keep and (name.startswith(GEN_PREFIX) or name.endswith(".tar")):
                storage.remove(folder, name)
        for name in storage.listdir(folder, keep):
            if f"{folder}/{keep}/{name}" not in listed:
                storage.remove(folder, keep, name)
