"""Fetch stage: download each kept row's image (its LAION URL) for real-image editing.

In the graph only when a chosen edit engine needs a fetched photograph (`render.source=real`;
engines.base.needs_of) (ingest -> fetch -> instruct -> render -> ...); otherwise
absent, and every other stage's hash is what it was without it. Per worker one HTTP session and
`fetch.threads` download threads; per row: download (sources.http), then decode, upright, RGB, resize
to render.width x render.height and encode (sources.image). Every input row is kept with its image or
dropped with a named fetch_* reason; the input columns pass through. A partition whose URLs mostly
cannot be connected to at all means the network, not the hosts, is down: it fails (retried, then the
stage fails, resumable) instead of completing with every row dropped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from editgen.engines.base import needs_of
from editgen.filters.captions import dedup as dd
from editgen.filters.images import neardup as nd
from editgen.pipeline.records import GlobalSummary, PartitionRecord, combined_key
from editgen.pipeline.redact import redact_text
from editgen.pipeline.settings.base import Resources
from editgen.pipeline.settings.fetch import FetchConfig
from editgen.pipeline.stage import Partition, PartitionSpec, PlanContext, Stage, Step, with_status
from editgen.sources.budget import DecodeBudget
from editgen.sources.exclude import ExcludeSet, load_exclude
from editgen.sources.http import BAD_URL, Download, Fetcher
from editgen.sources.image import Prepared, prepare_image
from editgen.sources.phash import to_hex
from editgen.sources.secret_urls import real_urls

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig

log = logging.getLogger("editgen")

PRE = "_pre"

OUTPUT_FIELDS = [
    pa.field("image", pa.binary()),
    pa.field("fetch_format", pa.string()),
    pa.field("image_width", pa.int64()),
    pa.field("image_height", pa.int64()),
    pa.field("original_width", pa.int64()),
    pa.field("original_height", pa.int64()),
    pa.field("image_sha256", pa.string()),
    pa.field("image_phash", pa.string()),
    pa.field("http_status", pa.int64()),
    pa.field("fetch_error", pa.string()),
]


class SystemicFetchError(RuntimeError):
    """Most URLs of a partition could not be connected to: the network (DNS, a proxy, a firewall) is
    down, not the hosts. The partition fails instead of dropping every row as fetch_connection_error."""


@dataclass
class Fetched:
    """One row's outcome: the download and, when it gave a body, the prepared image."""

    download: Download
    image: Prepared | None = None

    @property
    def reason(self) -> str | None:
        return self.download.reason or (self.image.reason if self.image else None)


def check_unreachable(max_fraction: float, results: list[Fetched]) -> None:
    """More unreachable URLs than `fetch.max_failed_fraction` of those tried (bad URLs are not tried)
    is systemic: raise. HTTP answers (404, 500, ...) and timeouts after a connection never count."""
    tried = [r for r in results if r.download.reason != BAD_URL]
    down = [r.download for r in tried if r.download.unreachable]
    if down and len(down) > max_fraction * len(tried):
        raise SystemicFetchError(
            f"{len(down)} of {len(tried)} URLs could not be connected to (fetch.max_failed_fraction="
            f"{max_fraction:g}): is the network down? first: {redact_text(f'{down[0].url}: {down[0].error}')}"
        )


def _error_text(error: str | None) -> str | None:
    """A download error as published: HTTP libraries echo the URL, credentials included."""
    return redact_text(error, known=False) if error else error


class FetchStage(Stage[FetchConfig]):
    name = "fetch"
    # 2: web image formats only, decoded-bytes budget, PNG text cap (issue 19); 3: pHash column, run-wide
    # near-duplicate and benchmark image removal (issue 24)
    version = "3"
    active_when = "render.source=real (an edit engine needs each row's photograph)"
    input_columns = ("url",)
    output_columns = tuple(f.name for f in OUTPUT_FIELDS)

    def __init__(self, config: EditgenConfig) -> None:
        super().__init__(config)
        self.fetcher: Fetcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.budget: DecodeBudget | None = None
        self._benchmark: ExcludeSet | None = None

    @classmethod
    def active(cls, config: EditgenConfig) -> bool:
        """In the graph when the render engines need each row's photograph (engines.base.EngineNeeds)."""
        return needs_of(config.render).real_image

    @classmethod
    def config_reads(cls, config: EditgenConfig) -> tuple[str, ...]:
        """The stored image is resized to the render size."""
        return ("render.height", "render.width")

    def resources(self) -> Resources:
        return self.settings.resources.model_copy(update={"num_gpus": 0.0})

    # ---- steps: fetch -> near-duplicate / benchmark images (global) -> publish ------------------
    def image_checks(self) -> tuple[int | None, int | None]:
        """(near-duplicate distance, benchmark distance): None where that check is off."""
        ingest = self.config.ingest
        return self.settings.near_dup_distance, ingest.exclude_distance if ingest.exclude else None

    def steps(self) -> tuple[Step, ...]:
        """One map step, or with an image check on (filters.images.neardup): fetch into _pre, resolve the
        drops over the whole run, publish. Ingest's dedup pattern: no process holds more than a bucket."""
        if self.image_checks() == (None, None):
            return super().steps()
        return (
            Step("", subdir=PRE, plan=self.plan, load=self.load_input, process=self.process_partition),
            Step("dedup", "global", subdir=dd.DEDUP_DIR, run=self.image_dedup, input_key=self.image_dedup_key,
                 valid=lambda ctx, rec: not rec.get("digests") or ctx.storage.exists(self.name, dd.DEDUP_DIR,
                                                                                    dd.DROPS_FILE)),
            Step("publish", plan=self.plan_publish, load=self.load_pre, process=self.publish, actors=False),
        )

    def preflight(self) -> None:
        """The benchmark files (`ingest.exclude`) are read and checked here, before OUT is touched."""
        self.benchmark()

    def benchmark(self) -> ExcludeSet:
        if self._benchmark is None:
            self._benchmark = load_exclude(self.config.ingest.exclude)
        return self._benchmark

    def image_dedup_key(self, ctx: PlanContext) -> str:
        """The fetched partitions' checksums and the benchmark files' content."""
        return combined_key([*(r["sha256"] for r in ctx.steps[""]), self.benchmark().digest])

    def image_dedup(self, ctx: PlanContext) -> GlobalSummary:
        """Close pHash pairs per bucket of band keys on the cluster, resolved in one task: drop digests."""
        near, bench_d = self.image_checks()
        records: list[PartitionRecord] = ctx.steps[""]
        storage = ctx.storage
        bench = self.benchmark().hash_array() if bench_d is not None else np.empty(0, np.uint64)
        rows = sum(r.get("rows_out", 0) for r in records)
        buckets = dd.auto_buckets(0, rows)
        pids, shas = [r["partition"] for r in records], {r["partition"]: r["sha256"] for r in records}
        limit = max(d for d in (near, bench_d) if d is not None)
        calls = [(storage.root, storage.storage_options, self.name, f"{self.name}/{PRE}", pids, shas, bench, limit,
                  b, buckets) for b in range(buckets)]
        digests = ctx.tasks.map_reduce(nd.bucket_pairs, calls, nd.resolve,
                                       (storage.root, storage.storage_options, self.name, near, bench_d))
        log.info("fetch: image near-duplicates over %d buckets: %d partitions with drops", buckets, len(digests))
        return {"rows_in": rows, "rows_out": rows, "digests": {str(k): v for k, v in sorted(digests.items())}}

    def plan_publish(self, ctx: PlanContext) -> list[PartitionSpec]:
        """One partition per fetched partition, keyed by its checksum and its drop digest (dedup.publish_specs)."""
        return dd.publish_specs(ctx)

    def load_pre(self, part: Partition, upstream_dir: str | None) -> pa.Table:
        """The whole fetched partition, dropped rows included (they keep their reasons)."""
        assert upstream_dir is not None
        return part.read_upstream(upstream_dir)

    def publish(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        assert part is not None
        drops = dd.read_drops(part.storage, part.spec.pid, self.name, part.spec.payload) if part.spec.payload else {}
        return nd.apply_drops(table, part.spec.pid, drops)

    @property
    def size(self) -> tuple[int, int]:
        return self.config.render.width, self.config.render.height

    # ---- worker side -----------------------------------------------------------------------
    def setup(self) -> None:
        """One HTTP session, thread pool and decoded-bytes budget per worker, shared by its partitions."""
        self.fetcher = Fetcher(self.settings)
        self.pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="fetch")
        self.budget = DecodeBudget(self.settings.decode_memory_bytes)

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.fetcher is not None:
            self.fetcher.close()
            self.fetcher = None

    def fetch_one(self, url: Any) -> Fetched:
        assert self.fetcher is not None
        done = Fetched(self.fetcher.fetch(url))
        if done.download.reason is None and done.download.data is not None:
            done.image = prepare_image(done.download.data, self.settings, self.size, self.budget)
            done.download.data = None  # the stored image replaces the body
        return done

    def process_partition(self, table: pa.Table, part: Partition | None = None) -> pa.Table:
        if self.pool is None:
            self.setup()
        assert self.pool is not None
        t0 = time.perf_counter()
        urls = real_urls(table, self.config.ingest, part.storage if part is not None else None)
        step = self.resources().batch_size
        results: list[Fetched] = []
        for i in range(0, len(urls), step):
            results += list(self.pool.map(self.fetch_one, urls[i:i + step]))
            self.progress(min(len(urls), i + step))
        check_unreachable(self.settings.max_failed_fraction, results)
        self._count(results, time.perf_counter() - t0)
        out = self._output(table, results)
        if part is not None and self.image_checks() != (None, None):  # read by the run-wide image step
            part.storage.write_bytes(nd.hash_file_bytes(out), self.name, nd.HASHES_DIR, nd.hashes_name(part.spec.pid))
        return out

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return self.process_partition(batch)

    def _count(self, results: list[Fetched], seconds: float) -> None:
        add = {
            "fetch_seconds": seconds,
            "requests": sum(r.download.attempts for r in results),
            "retries": sum(max(0, r.download.attempts - 1) for r in results),
            "bytes_downloaded": sum(r.download.nbytes for r in results),
            "bytes_stored": sum(len(r.image.data) for r in results if r.image and r.image.data),
        }
        for key, value in add.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + float(value)

    def _output(self, table: pa.Table, results: list[Fetched]) -> pa.Table:
        fmt = self.settings.encode_format
        images = [r.image if r.image else Prepared() for r in results]
        data = [im.data if r.reason is None else None for r, im in zip(results, images, strict=True)]
        cols: dict[str, list[Any]] = {
            "image": data,
            "fetch_format": [fmt if d is not None else None for d in data],
            "image_width": [im.width if d is not None else None for im, d in zip(images, data, strict=True)],
            "image_height": [im.height if d is not None else None for im, d in zip(images, data, strict=True)],
            "original_width": [im.original_width for im in images],
            "original_height": [im.original_height for im in images],
            "image_sha256": [hashlib.sha256(d).hexdigest() if d is not None else None for d in data],
            "image_phash": [to_hex(im.phash) if d is not None and im.phash is not None else None
                            for im, d in zip(images, data, strict=True)],
            "http_status": [r.download.status for r in results],
            "fetch_error": [_error_text(r.download.error or (r.image.error if r.image else None)) for r in results],
        }
        for f in OUTPUT_FIELDS:
            if f.name in table.column_names:
                table = table.drop_columns([f.name])
            table = table.append_column(f, pa.array(cols[f.name], type=f.type))
        return with_status(table, [r.reason for r in results])
