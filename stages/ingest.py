"""Ingest: read captions, clean them, drop bad rows with a reason, dedup, and partition.

Two steps, both resumable: per-partition cleaning and filtering runs on Ray workers (written to
OUT/ingest/_pre/), then a driver-side pass drops duplicate captions and URLs in global input order
(first occurrence wins among rows that passed every other filter) and publishes OUT/ingest/part-*.
Dedup has to see every partition, and only needs two short keys per row, so the driver does it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from filters.caption_filters import check_caption, load_blocklist
from filters.text_clean import caption_key, clean_caption, url_key
from pipeline.errors import InputError
from pipeline.inputs import RAW_SCHEMA, discover, read_input
from pipeline.records import (
    combined_key,
    file_matches,
    read_record,
    record_name,
    remove_partitions_from,
    write_record,
)
from pipeline.stage import (
    DROPPED,
    KEPT,
    PartitionSpec,
    PlanContext,
    Stage,
    count_reasons,
    part_name,
    with_status,
)
from pipeline.storage import Storage

log = logging.getLogger("editgen")

PRE = "_pre"
#: Original text is kept for tracing, but a 1 MB caption must not bloat every partition.
RAW_KEEP_CHARS = 2048


def row_id(source: str, row: int) -> str:
    """Stable id of a source row: the same file and row give the same id in every run."""
    return hashlib.blake2b(f"{source}\x00{row}".encode(), digest_size=8).hexdigest()


def _table_key(table: pa.Table) -> str:
    h = hashlib.sha256()
    for col in ("source", "source_row", "text", "url", "raw_error"):
        for chunk in table[col].chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
        h.update(b"|")
    h.update(str(table.num_rows).encode())
    return h.hexdigest()


class IngestStage(Stage):
    name = "ingest"
    version = "2"  # 2: <script>/<style> elements are removed with their content
    work_subdir = PRE

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._raw: pa.Table | None = None
        self._terms: tuple[str, ...] = ()

    # ---- driver ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """Read and validate all inputs up front: bad input must fail before OUT is touched."""
        s = self.settings
        files = discover(s.input, s.format)
        tables = [read_input(f, s.text_column, s.url_column if f.fmt != "txt" else None) for f in files]
        raw = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
        if raw.num_rows == 0:
            raise InputError(f"{', '.join(f.url for f in files)}: input is empty (0 rows)")
        if s.limit is not None and s.limit < raw.num_rows:
            rng = np.random.default_rng(s.seed)
            idx = np.sort(rng.choice(raw.num_rows, size=s.limit, replace=False))
            raw = raw.take(pa.array(idx))
        self._raw = raw
        if s.blocklist:
            try:
                load_blocklist(s.blocklist)
            except OSError as exc:
                raise InputError(f"{s.blocklist}: cannot read blocklist ({exc.strerror})") from None

    def plan(self, ctx: PlanContext) -> list[PartitionSpec]:
        """Fixed-size slices of the (sampled) input; the slice travels to the worker as the payload
        (Ray moves large arguments through its object store)."""
        if self._raw is None:
            self.preflight()
        raw = self._raw
        assert raw is not None
        size = self.settings.rows_per_partition
        specs = []
        slices = [raw.slice(i, size) for i in range(0, raw.num_rows, size)]
        for pid, part in enumerate(slices):
            part = part.combine_chunks()
            specs.append(PartitionSpec(pid=pid, input_key=_table_key(part), rows_in=part.num_rows, payload=part))
        return specs

    def finalize(self, ctx: PlanContext, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop duplicates in global order and publish the final partitions."""
        storage, h = ctx.storage, records[0]["stage_hash"] if records else ""
        dedup_key = combined_key([r["sha256"] for r in records] + [self._dedup_settings()])
        final = []
        todo = []
        for r in records:
            rec = read_record(storage, self.name, record_name(r["partition"]))
            if (rec and rec.get("stage_hash") == h and rec.get("input_key") == dedup_key
                    and file_matches(storage, self.name, rec, self.config.run.verify_checksums)):
                final.append(rec)
            else:
                todo.append(r)
        if not todo:
            return final
        dup_ids = self._find_duplicates(storage, records)
        for r in todo:
            table = storage.read_table(self.name, PRE, r["file"])
            statuses = table["status"].to_pylist()
            reasons = table["drop_reason"].to_pylist()
            for i, rid in enumerate(table["id"].to_pylist()):
                reason = dup_ids.get(rid)
                if reason and statuses[i] == KEPT:
                    statuses[i], reasons[i] = DROPPED, reason
            out = table.drop_columns(["caption_key", "url_key", "status", "drop_reason"])
            out = with_status(out, reasons)
            sha, nbytes = storage.write_table(out, self.name, part_name(r["partition"]))
            kept, dropped = count_reasons(out)
            rec = {**r, "input_key": dedup_key, "sha256": sha, "bytes": nbytes, "rows_out": kept,
                   "dropped": dropped, "file": part_name(r["partition"])}
            write_record(storage, self.name, rec)
            final.append(rec)
        remove_partitions_from(storage, self.name, len(records))
        return sorted(final, key=lambda x: x["partition"])

    def _dedup_settings(self) -> str:
        return f"captions={self.settings.dedup_captions},urls={self.settings.dedup_urls}"

    def _find_duplicates(self, storage: Storage, records: list[dict[str, Any]]) -> dict[str, str]:
        s = self.settings
        seen_captions: set[str] = set()
        seen_urls: set[str] = set()
        dups: dict[str, str] = {}
        for r in sorted(records, key=lambda x: x["partition"]):
            t = storage.read_table(self.name, PRE, r["file"], columns=["id", "status", "caption_key", "url_key"])
            for rid, status, ck, uk in zip(
                t["id"].to_pylist(), t["status"].to_pylist(), t["caption_key"].to_pylist(),
                t["url_key"].to_pylist(), strict=True,
            ):
                if status != KEPT:
                    continue
                if s.dedup_captions and ck in seen_captions:
                    dups[rid] = "duplicate_caption"
                    continue
                if s.dedup_urls and uk and uk in seen_urls:
                    dups[rid] = "duplicate_url"
                    continue
                seen_captions.add(ck)
                if uk:
                    seen_urls.add(uk)
        return dups

    # ---- worker ---------------------------------------------------------------------------
    def setup(self) -> None:
        s = self.settings
        self._terms = tuple(load_blocklist(s.blocklist, s.extra_blocked_terms))

    def load_input(self, spec: PartitionSpec, storage: Storage, upstream_dir: str | None) -> pa.Table:
        return spec.payload

    def process_batch(self, batch: pa.Table) -> pa.Table:
        s = self.settings
        if not self._terms:
            self.setup()
        langs = tuple(s.languages)
        ids, captions, raws, langs_out, lang_conf, ckeys, ukeys, reasons = [], [], [], [], [], [], [], []
        for source, row, text, url, err in zip(
            batch["source"].to_pylist(), batch["source_row"].to_pylist(), batch["text"].to_pylist(),
            batch["url"].to_pylist(), batch["raw_error"].to_pylist(), strict=True,
        ):
            ids.append(row_id(source, row))
            raws.append(text[:RAW_KEEP_CHARS] if text else text)
            guess = None
            if err:
                caption, reason = "", err
            elif text is not None and len(text) > 20 * s.max_chars:
                caption, reason = "", "too_long"
            else:
                caption = clean_caption(text)
                reason, guess = check_caption(
                    caption, min_words=s.min_words, max_words=s.max_words, min_chars=s.min_chars,
                    max_chars=s.max_chars, languages=langs, min_language_confidence=s.min_language_confidence,
                    blocklist=self._terms, drop_junk=s.drop_junk,
                )
            captions.append(caption)
            langs_out.append(guess.lang if guess else None)
            lang_conf.append(round(guess.confidence, 4) if guess else None)
            ckeys.append(caption_key(caption))
            ukeys.append(url_key(url))
            reasons.append(reason)
        out = pa.table({
            "id": pa.array(ids, pa.string()),
            "source": batch["source"],
            "source_row": batch["source_row"],
            "url": batch["url"],
            "caption": pa.array(captions, pa.string()),
            "caption_raw": pa.array(raws, pa.string()),
            "language": pa.array(langs_out, pa.string()),
            "language_confidence": pa.array(lang_conf, pa.float32()),
            "caption_key": pa.array(ckeys, pa.string()),
            "url_key": pa.array(ukeys, pa.string()),
        })
        return with_status(out, reasons)
