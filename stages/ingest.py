"""Ingest: read captions, clean them, drop bad rows with a reason, dedup, and partition.

Three steps (the runner writes every partition and record): `clean` plans from metadata only
(sources.plan), each worker reads its own rows from the source, cleans and filters them
(OUT/ingest/_pre/) and writes their dedup keys in buckets (OUT/ingest/_keys/); `dedup` resolves
duplicates per bucket on the cluster (filters.captions.dedup: first occurrence in global input order wins
among rows that passed every other filter); `publish` applies the drops to OUT/ingest/part-*, recomputing
only partitions whose rows or drops changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from editgen.filters.captions import dedup as dd
from editgen.filters.captions.blocklist import load_blocklist
from editgen.filters.captions.clean import caption_key, clean_caption, private_url_key
from editgen.filters.captions.lang import LanguageGuess, load_language_model
from editgen.filters.captions.rules import check_captions
from editgen.pipeline.errors import InputError
from editgen.pipeline.records import GlobalSummary, PartitionRecord, combined_key, part_pid
from editgen.pipeline.redact import redact_text, redact_url
from editgen.pipeline.settings.ingest import IngestConfig
from editgen.pipeline.stage import Partition, PartitionSpec, PlanContext, Stage, Step, with_status
from editgen.pipeline.storage import Storage
from editgen.sources.exclude import ExcludeSet, load_exclude
from editgen.sources.inputs import RAW_SCHEMA, discover
from editgen.sources.plan import FileMeta, Segment, describe, pack, pack_sample, read_segment, save_scans

log = logging.getLogger("editgen")

PRE = "_pre"
#: The columns a worker reads from the source, in a fixed order (the fingerprint's).
RAW_COLUMNS = tuple(RAW_SCHEMA.names)
INPUT_FILE = "_input.json"
#: Original text is kept for tracing, but a 1 MB caption must not bloat every partition.
RAW_KEEP_CHARS = 2048


def row_id(source: str, row: int) -> str:
    """Stable id of a source row: the same file and row give the same id in every run."""
    return hashlib.blake2b(f"{source}\x00{row}".encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class IngestWork:
    """A partition's payload: the segments its worker reads, and the dedup bucket count."""

    segments: tuple[Segment, ...]
    buckets: int


def read_input_record(storage: Storage, stage_dir: str) -> dict[str, list[str]] | None:
    """OUT/ingest/_input.json, or None when absent or damaged (not JSON, or not {"input": [str], "files":
    [str]}): damaged bookkeeping is rewritten, never a traceback."""
    try:
        old = json.loads(storage.read_text(stage_dir, INPUT_FILE))
    except (FileNotFoundError, ValueError):
        return None
    lists = [old.get(k, []) for k in ("input", "files")] if isinstance(old, dict) else [None]
    ok = all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists)
    if not ok:
        log.warning("%s/%s: not an input record (damaged); rewriting it", stage_dir, INPUT_FILE)
        return None
    return old


class IngestStage(Stage[IngestConfig]):
    name = "ingest"
    version = "3"  # 2: <script>/<style> elements are removed with their content; 3: url credentials redacted
    output_columns = ("source", "source_row", "url", "caption", "caption_raw", "language", "language_confidence")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._files: list[FileMeta] | None = None
        self._terms: tuple[str, ...] = ()
        self._out: Storage | None = None
        self._replace = False
        self._planned_buckets = 1
        self._exclude: ExcludeSet | None = None

    def steps(self) -> tuple[Step, ...]:
        return (
            Step("", subdir=PRE, plan=self.plan, load=self.load_input, process=self.process_partition,
                 content_key=self.content_key, reusable=self.keys_present),
            Step("dedup", "global", subdir=dd.DEDUP_DIR, run=self.dedup, valid=self.dedup_valid),
            Step("publish", plan=self.plan_publish, load=self.load_pre, process=self.publish, actors=False),
        )

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
        if s.exclude:
            self._exclude = load_exclude(s.exclude)  # every file, images included: checked once, here
        if self._out is not None:
            self._check_same_input(self._out, files)
        self._files = files

    def _check_same_input(self, storage: Storage, files: list[FileMeta]) -> None:
        """A different input on an existing OUT would silently replace the dataset: refuse it."""
        old = read_input_record(storage, self.name)
        if old is None:
            return
        if [redact_url(u) for u in old.get("files", [])] != published_urls(files) and not self._replace:
            raise InputError(
                f"{storage.root}: was built from --input {' '.join(old.get('input', []))} "
                f"({len(old.get('files', []))} files); --input {' '.join(self.settings.input)} is a different "
                "input (use --from ingest to replace it, or another --out)"
            )

    def _record_input(self, storage: Storage, files: list[FileMeta]) -> None:
        """OUT/ingest/_input.json: which files this OUT is built from (rewritten only when that changes),
        without the credentials of any input URL."""
        urls = published_urls(files)
        text = json.dumps({"input": [redact_text(i, known=False) for i in self.settings.input], "files": urls},
                          indent=1)
        old = read_input_record(storage, self.name)
        if old is not None and old.get("files") == urls:
            return
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
        ex = self.exclude_set().digest
        return [PartitionSpec(pid=i, input_key=combined_key([p.key(), ex]) if ex else p.key(), rows_in=p.rows,
                              payload=IngestWork(tuple(p.segments), buckets))
                for i, p in enumerate(parts)]

    def dedup(self, ctx: PlanContext) -> GlobalSummary:
        """Resolve duplicates over every clean partition on the cluster: a drop digest per partition."""
        s, storage = self.settings, ctx.storage
        records: list[PartitionRecord] = ctx.steps[""]
        self._remove_keys_from(storage, len(records))
        digests: dict[int, str] = {}
        if records and (s.dedup_captions or s.dedup_urls):
            pids, buckets = [r["partition"] for r in records], self._planned_buckets
            shas = {r["partition"]: r["sha256"] for r in records}  # a keys file found damaged: rebuilt, verified
            calls = [(storage.root, storage.storage_options, pids, b, buckets, s.dedup_captions, s.dedup_urls, shas)
                     for b in range(buckets)]
            digests = ctx.tasks.map_reduce(dd.bucket_conflicts, calls, dd.resolve,
                                           (storage.root, storage.storage_options))
            log.info("ingest: dedup over %d buckets: %d partitions with duplicates", buckets, len(digests))
        elif storage.exists(self.name, dd.DEDUP_DIR, dd.DROPS_FILE):
            storage.remove(self.name, dd.DEDUP_DIR, dd.DROPS_FILE)
        rows = sum(r.get("rows_out", 0) for r in records)
        return {"rows_in": rows, "rows_out": rows, "digests": {str(k): v for k, v in sorted(digests.items())}}

    def dedup_valid(self, ctx: PlanContext, record: Any) -> bool:
        return not record.get("digests") or ctx.storage.exists(self.name, dd.DEDUP_DIR, dd.DROPS_FILE)

    def plan_publish(self, ctx: PlanContext) -> list[PartitionSpec]:
        """One partition per clean partition, keyed by its checksum and its drop digest (dedup.publish_specs)."""
        return dd.publish_specs(ctx)

    def load_pre(self, part: Partition, upstream_dir: str | None) -> pa.Table:
        """The whole clean partition, dropped rows included (they stay in the output with their reason);
        read verified against its record."""
        assert upstream_dir is not None
        return part.read_upstream(upstream_dir)

    def publish(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        assert part is not None
        drops = dd.read_drops(part.storage, part.spec.pid, self.name, part.spec.payload) if part.spec.payload else {}
        return dd.apply_drops(table, part.spec.pid, drops)

    def _remove_keys_from(self, storage: Storage, n: int) -> None:
        for fname in storage.listdir(self.name, dd.KEYS_DIR):
            pid = part_pid(fname, "arrow")
            if pid is not None and pid >= n:
                storage.remove(self.name, dd.KEYS_DIR, fname)

    # ---- worker ---------------------------------------------------------------------------
    def exclude_set(self) -> ExcludeSet:
        """The benchmark captions and URLs (`ingest.exclude`), read once per process (images not decoded
        on workers: ingest matches captions and URLs; fetch matches images)."""
        if self._exclude is None:
            self._exclude = load_exclude(self.settings.exclude, images=False)
        return self._exclude

    def content_key(self, table: pa.Table) -> str:
        """The raw rows' fingerprint, and the benchmark files' when there are any: an edited benchmark
        file recomputes the partitions (their drops may change) even though their rows did not."""
        ex = self.exclude_set().digest
        return combined_key([raw_rows_key(table), ex]) if ex else raw_rows_key(table)

    def setup(self) -> None:
        s = self.settings
        self._terms = tuple(load_blocklist(s.blocklist, s.extra_blocked_terms))
        self.exclude_set()
        if s.languages:
            load_language_model()

    def load_input(self, part: Partition, upstream_dir: str | None) -> pa.Table:
        """This partition's rows, read from the source by the worker itself."""
        s = self.settings
        work: IngestWork = part.spec.payload
        tables = [read_segment(seg, s.text_column, s.url_column) for seg in work.segments]
        return pa.concat_tables(tables).combine_chunks()

    def keys_present(self, part: Partition) -> bool:
        """An earlier output is kept only while its dedup keys (read by the dedup step) are there."""
        return part.storage.exists(self.name, dd.KEYS_DIR, dd.keys_name(part.spec.pid))

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        """Clean and filter; then write the kept rows' dedup keys, bucketed, beside the partition."""
        out = super().process_partition(table, part)
        if part is not None:
            s, work = self.settings, part.spec.payload
            batches = dd.bucket_keys(out["caption_key"].to_pylist(), out["url_key"].to_pylist(),
                                     out["drop_reason"].to_pylist(), work.buckets, s.dedup_captions, s.dedup_urls)
            part.storage.write_bytes(dd.keys_file_bytes(batches), self.name, dd.KEYS_DIR, dd.keys_name(part.spec.pid))
        return out

    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Clean every caption, then filter the batch in one call (language id is batched)."""
        s = self.settings
        if not self._terms:
            self.setup()
        texts, errors, urls = batch["text"].to_pylist(), batch["raw_error"].to_pylist(), batch["url"].to_pylist()
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
        ckeys, ukeys = [caption_key(c) for c in captions], [private_url_key(u) for u in urls]
        self._benchmark_reasons(texts, ckeys, ukeys, reasons)
        out = pa.table({
            "id": pa.array([row_id(src, row) for src, row in zip(batch["source"].to_pylist(),
                                                                   batch["source_row"].to_pylist(), strict=True)],
                           pa.string()),
            "source": batch["source"],
            "source_row": batch["source_row"],
            "url": pa.array([redact_url(u) if u else u for u in urls], pa.string()),
            "caption": pa.array(captions, pa.string()),
            "caption_raw": pa.array([t[:RAW_KEEP_CHARS] if t else t for t in texts], pa.string()),
            "language": pa.array([g.lang if g else None for g in guesses], pa.string()),
            "language_confidence": pa.array([round(g.confidence, 4) if g else None for g in guesses], pa.float32()),
            "caption_key": pa.array(ckeys, pa.string()),
            "url_key": pa.array(ukeys, pa.string()),
        })
        return with_status(out, reasons)


    def _benchmark_reasons(self, texts: list[str | None], ckeys: list[str], ukeys: list[str | None],
                           reasons: list[str | None]) -> None:
        """Drop rows that would otherwise be kept and hold a canary string (in the raw caption), a
        benchmark caption (same dedup key) or a benchmark URL (same URL key): decontamination."""
        canary, ex = self.settings.canary, self.exclude_set()
        if not (canary or ex.captions or ex.urls):
            return
        for i, (text, ck, uk) in enumerate(zip(texts, ckeys, ukeys, strict=True)):
            if reasons[i] is not None:
                continue
            if canary and text and any(c in text for c in canary):
                reasons[i] = "benchmark_canary"
            elif ck and ck in ex.captions:
                reasons[i] = "benchmark_caption"
            elif uk and uk in ex.urls:
                reasons[i] = "benchmark_url"


def published_urls(files: list[FileMeta]) -> list[str]:
    """The input files' URLs as OUT may show them (no credentials)."""
    return [redact_url(f.url) for f in files]


def raw_rows_key(table: pa.Table) -> str:
    """Fingerprint of the raw rows a worker read: a source file rewritten with one row changed moves every
    partition key of that file (its mtime/ETag), but only partitions whose rows changed are recomputed."""
    digest = hashlib.sha256()
    for col in RAW_COLUMNS:
        digest.update(json.dumps(table[col].to_pylist(), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _describe(f: Any, s: IngestConfig, out: Storage | None) -> FileMeta:
    try:
        return describe(f, s.text_column, s.url_column, out)
    except FileNotFoundError:
        raise InputError(f"{f.url}: no such file") from None
    except PermissionError:
        raise InputError(f"{f.url}: permission denied") from None
