"""Ingest: read captions, clean them, drop bad rows with a reason, dedup, and partition.

The driver plans from metadata only (stages.ingest_plan): each worker reads its own rows from the source,
cleans and filters them (OUT/ingest/_pre/) and writes their dedup keys in buckets (OUT/ingest/_keys/).
Finalize then resolves duplicates per bucket on the cluster (stages.ingest_dedup: first occurrence in
global input order wins among rows that passed every other filter) and publishes OUT/ingest/part-*,
rewriting only partitions whose rows or drops changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from filters.caption_filters import check_captions, load_blocklist
from filters.lang import LanguageGuess
from filters.text_clean import caption_key, clean_caption, url_key
from pipeline.errors import InputError
from pipeline.inputs import discover
from pipeline.records import (
    DONE_DIR,
    check_partitions,
    combined_key,
    read_records,
    remove_partitions_from,
)
from pipeline.settings.ingest import IngestConfig
from pipeline.stage import (
    PartitionSpec,
    PlanContext,
    Stage,
    with_status,
)
from pipeline.storage import Storage
from stages import ingest_dedup as dd
from stages.ingest_plan import FileMeta, Segment, describe, pack, pack_sample, read_segment, save_scans

#: The columns a worker reads from the source (pipeline.inputs.RAW_SCHEMA), in a fixed order.
RAW_COLUMNS = ("source", "source_row", "text", "url", "raw_error")
log = logging.getLogger("editgen")

PRE = "_pre"
INPUT_FILE = "_input.json"
STATE = "state.json"
#: Original text is kept for tracing, but a 1 MB caption must not bloat every partition.
RAW_KEEP_CHARS = 2048
#: Publish tasks handle this many partitions each (a task per partition costs more than the work).
PUBLISH_CHUNK = 32


def row_id(source: str, row: int) -> str:
    """Stable id of a source row: the same file and row give the same id in every run."""
    return hashlib.blake2b(f"{source}\x00{row}".encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class IngestWork:
    """A partition's payload: the segments its worker reads, and the dedup bucket count."""

    segments: tuple[Segment, ...]
    buckets: int


class IngestStage(Stage):
    name = "ingest"
    version = "2"  # 2: <script>/<style> elements are removed with their content
    work_subdir = PRE
    #: Directories whose completion state `--from ingest` forgets.
    state_dirs = (PRE, dd.DEDUP_DIR)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._files: list[FileMeta] | None = None
        self._terms: tuple[str, ...] = ()
        self._out: Storage | None = None
        self._replace = False
        self._keys_to: tuple[Storage, int, int] | None = None
        self._planned_buckets = 1

    @property
    def settings(self) -> IngestConfig:
        return self.config.ingest

    def bind(self, storage: Storage, replace: bool) -> None:
        """OUT, read-only until preflight passed: for cached scans and the input-identity check."""
        self._out, self._replace = storage, replace

    # ---- driver ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """Check every input from metadata (plus one cached scan per text file) before OUT is touched."""
        s = self.settings
        found = discover(s.input, s.format)
        with ThreadPoolExecutor(max_workers=16) as pool:
            files = list(pool.map(lambda f: _describe(f, s, self._out), found))
        if sum(f.rows for f in files) == 0:
            raise InputError(f"{', '.join(f.url for f in files)}: input is empty (0 rows)")
        if s.blocklist:
            try:
                load_blocklist(s.blocklist)
            except OSError as exc:
                raise InputError(f"{s.blocklist}: cannot read blocklist ({exc.strerror})") from None
        if self._out is not None:
            self._check_same_input(self._out, files)
        self._files = files

    def _check_same_input(self, storage: Storage, files: list[FileMeta]) -> None:
        """A different input on an existing OUT would silently replace the dataset: refuse it."""
        try:
            old = json.loads(storage.read_text(self.name, INPUT_FILE))
        except (FileNotFoundError, ValueError):
            return
        if old.get("files") != [f.url for f in files] and not self._replace:
            raise InputError(
                f"{storage.root}: was built from --input {' '.join(old.get('input', []))} "
                f"({len(old.get('files', []))} files); --input {' '.join(self.settings.input)} is a different "
                "input (use --from ingest to replace it, or another --out)"
            )

    def _record_input(self, storage: Storage, files: list[FileMeta]) -> None:
        """OUT/ingest/_input.json: which files this OUT is built from (rewritten only when that changes)."""
        text = json.dumps({"input": self.settings.input, "files": [f.url for f in files]}, indent=1)
        try:
            old = json.loads(storage.read_text(self.name, INPUT_FILE))
            if old.get("files") == [f.url for f in files]:
                return
        except (FileNotFoundError, ValueError):
            pass
        storage.write_text(text, self.name, INPUT_FILE)

    def plan(self, ctx: PlanContext) -> list[PartitionSpec]:
        """Partitions of rows_per_partition rows (segments of files), keyed by file identity + rows."""
        if self._files is None:
            self.preflight()
        files = self._files
        assert files is not None
        s = self.settings
        save_scans(ctx.storage, files, s.text_column, s.url_column)
        self._record_input(ctx.storage, files)
        total = sum(f.rows for f in files)
        if s.limit is not None and s.limit < total:
            parts = pack_sample(files, s.rows_per_partition, s.limit, s.seed)
        else:
            parts = pack(files, s.rows_per_partition)
        buckets = dd.auto_buckets(s.dedup_buckets, min(total, s.limit or total))
        self._planned_buckets = buckets
        return [PartitionSpec(pid=i, input_key=p.key(), rows_in=p.rows,
                              payload=IngestWork(tuple(p.segments), buckets))
                for i, p in enumerate(parts)]

    def finalize(self, ctx: PlanContext, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Resolve duplicates on the cluster (skipped when no partition changed) and publish."""
        storage = ctx.storage
        h = records[0]["stage_hash"] if records else ""
        n = len(records)
        remove_partitions_from(storage, self.name, n)
        self._remove_keys_from(storage, n)
        digests = self._dedup(storage, records)
        specs = [PartitionSpec(pid=r["partition"], input_key=dd.final_key(r["sha256"], digests.get(r["partition"], "")),
                               rows_in=r.get("rows_in", 0)) for r in records]
        stale = check_partitions(storage, self.name, specs, h)  # one listing, one bulk record read
        published = {r["partition"]: r for r in read_records(storage, self.name)}
        final = [published[r["partition"]] for r in records if r["partition"] not in stale]
        todo = [r for r in records if r["partition"] in stale]
        if todo:
            log.info("ingest: publishing %d/%d partitions after dedup", len(todo), n)
            final += self._remote_publish(storage, todo, digests)
        return sorted(final, key=lambda x: x["partition"])

    def _dedup_settings(self) -> str:
        return f"captions={self.settings.dedup_captions},urls={self.settings.dedup_urls}"

    def _dedup(self, storage: Storage, records: list[dict[str, Any]]) -> dict[int, str]:
        """Per-partition drop digests; recomputed only when some pre-dedup partition changed."""
        s = self.settings
        key = combined_key([r["sha256"] for r in records] + [self._dedup_settings()])
        try:
            state = json.loads(storage.read_text(self.name, dd.DEDUP_DIR, DONE_DIR, STATE))
            if state.get("key") == key:
                return {int(k): v for k, v in state["digests"].items()}
        except (FileNotFoundError, ValueError, KeyError):
            pass
        digests: dict[int, str] = {}
        if records and (s.dedup_captions or s.dedup_urls):
            digests = self._remote_dedup(storage, [r["partition"] for r in records])
        elif storage.exists(self.name, dd.DEDUP_DIR, dd.DROPS_FILE):
            storage.remove(self.name, dd.DEDUP_DIR, dd.DROPS_FILE)
        storage.write_text(json.dumps({"key": key, "digests": {str(k): v for k, v in digests.items()}}),
                           self.name, dd.DEDUP_DIR, DONE_DIR, STATE)
        return digests

    def _remote_dedup(self, storage: Storage, pids: list[int]) -> dict[int, str]:
        import ray

        from pipeline.ray_runtime import ensure_ray, remote_task

        ensure_ray(self.config.ray)
        s = self.settings
        buckets = self._planned_buckets
        task = remote_task(dd.bucket_conflicts)
        refs = [task.remote(storage.root, storage.storage_options, pids, b, buckets, s.dedup_captions,
                            s.dedup_urls) for b in range(buckets)]
        resolve = remote_task(dd.resolve)
        digests = ray.get(resolve.remote(storage.root, storage.storage_options, *refs))
        log.info("ingest: dedup over %d buckets: %d partitions with duplicates", buckets, len(digests))
        return digests

    def _remote_publish(self, storage: Storage, todo: list[dict[str, Any]],
                        digests: dict[int, str]) -> list[dict[str, Any]]:
        import ray

        from pipeline.ray_runtime import ensure_ray, remote_task

        ensure_ray(self.config.ray)
        task = remote_task(dd.publish)
        refs = []
        for i in range(0, len(todo), PUBLISH_CHUNK):
            chunk = todo[i:i + PUBLISH_CHUNK]
            mine = {r["partition"]: digests[r["partition"]] for r in chunk if r["partition"] in digests}
            refs.append(task.remote(storage.root, storage.storage_options, chunk, mine))
        return [rec for part in ray.get(refs) for rec in part]

    def _remove_keys_from(self, storage: Storage, n: int) -> None:
        for fname in storage.listdir(self.name, dd.KEYS_DIR):
            if fname.startswith("part-") and int(fname[5:10]) >= n:
                storage.remove(self.name, dd.KEYS_DIR, fname)

    # ---- worker ---------------------------------------------------------------------------
    def setup(self) -> None:
        s = self.settings
        self._terms = tuple(load_blocklist(s.blocklist, s.extra_blocked_terms))

    def load_input(self, spec: PartitionSpec, storage: Storage, upstream_dir: str | None) -> pa.Table:
        """This partition's rows, read from the source by the worker itself."""
        s = self.settings
        work: IngestWork = spec.payload
        tables = [read_segment(seg, s.text_column, s.url_column) for seg in work.segments]
        self._keys_to = (storage, spec.pid, work.buckets)
        return pa.concat_tables(tables).combine_chunks()

    def content_key(self, table: pa.Table) -> str | None:
        """The raw rows' fingerprint: a source file rewritten with one row changed moves every partition
        key of that file (its mtime/ETag), but only the partitions whose rows changed are recomputed."""
        digest = hashlib.sha256()
        for col in RAW_COLUMNS:
            digest.update(json.dumps(table[col].to_pylist(), ensure_ascii=False).encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def can_reuse(self, storage: Storage, pid: int) -> bool:
        """Only while the partition's dedup keys (read by the bucket pass) are still there."""
        return storage.exists(self.name, dd.KEYS_DIR, dd.keys_name(pid))

    def process_partition(self, table: pa.Table) -> pa.Table:
        """Clean and filter; then write the kept rows' dedup keys, bucketed, beside the partition."""
        out = super().process_partition(table)
        if self._keys_to is not None:
            storage, pid, buckets = self._keys_to
            self._keys_to = None
            s = self.settings
            batches = dd.bucket_keys(out["caption_key"].to_pylist(), out["url_key"].to_pylist(),
                                     out["drop_reason"].to_pylist(), buckets, s.dedup_captions, s.dedup_urls)
            storage.write_bytes(dd.keys_file_bytes(batches), self.name, dd.KEYS_DIR, dd.keys_name(pid))
        return out

    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Clean every caption, then filter the batch in one call (language id is batched)."""
        s = self.settings
        if not self._terms:
            self.setup()
        texts, errors = batch["text"].to_pylist(), batch["raw_error"].to_pylist()
        captions, reasons, todo = [], [], []
        for i, (text, err) in enumerate(zip(texts, errors, strict=True)):
            if err:
                captions.append("")
                reasons.append(err)
            elif text is not None and len(text) > 20 * s.max_chars:
                captions.append("")
                reasons.append("too_long")
            else:
                captions.append(clean_caption(text))
                reasons.append(None)
                todo.append(i)
        checked = check_captions(
            [captions[i] for i in todo], min_words=s.min_words, max_words=s.max_words, min_chars=s.min_chars,
            max_chars=s.max_chars, languages=tuple(s.languages), min_language_confidence=s.min_language_confidence,
            blocklist=self._terms, drop_junk=s.drop_junk,
        )
        guesses: list[LanguageGuess | None] = [None] * len(texts)
        for i, (reason, guess) in zip(todo, checked, strict=True):
            reasons[i], guesses[i] = reason, guess
        out = pa.table({
            "id": pa.array([row_id(src, row) for src, row in zip(batch["source"].to_pylist(),
                                                                   batch["source_row"].to_pylist(), strict=True)],
                           pa.string()),
            "source": batch["source"],
            "source_row": batch["source_row"],
            "url": batch["url"],
            "caption": pa.array(captions, pa.string()),
            "caption_raw": pa.array([t[:RAW_KEEP_CHARS] if t else t for t in texts], pa.string()),
            "language": pa.array([g.lang if g else None for g in guesses], pa.string()),
            "language_confidence": pa.array([round(g.confidence, 4) if g else None for g in guesses], pa.float32()),
            "caption_key": pa.array([caption_key(c) for c in captions], pa.string()),
            "url_key": pa.array([url_key(u) for u in batch["url"].to_pylist()], pa.string()),
        })
        return with_status(out, reasons)


def _describe(f: Any, s: IngestConfig, out: Storage | None) -> FileMeta:
    try:
        return describe(f, s.text_column, s.url_column, out)
    except FileNotFoundError:
        raise InputError(f"{f.url}: no such file") from None
    except PermissionError:
        raise InputError(f"{f.url}: permission denied") from None
