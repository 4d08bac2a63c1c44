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

import pyarrow as pa

from editgen.engines.base import needs_of
from editgen.pipeline.redact import redact_text
from editgen.pipeline.settings.base import Resources
from editgen.pipeline.settings.fetch import FetchConfig
from editgen.pipeline.stage import Partition, Stage, with_status
from editgen.sources.budget import DecodeBudget
from editgen.sources.http import BAD_URL, Download, Fetcher
from editgen.sources.image import Prepared, prepare_image
from editgen.sources.secret_urls import real_urls

if TYPE_CHECKING:
    from editgen.pipeline.config import EditgenConfig

log = logging.getLogger("editgen")

OUTPUT_FIELDS = [
    pa.field("image", pa.binary()),
    pa.field("fetch_format", pa.string()),
    pa.field("image_width", pa.int64()),
    pa.field("image_height", pa.int64()),
    pa.field("original_width", pa.int64()),
    pa.field("original_height", pa.int64()),
    pa.field("image_sha256", pa.string()),
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
    version = "2"  # 2: web image formats only, decoded-bytes budget, PNG text cap (issue 19)
    active_when = "render.source=real (an edit engine needs each row's photograph)"
    input_columns = ("url",)
    output_columns = tuple(f.name for f in OUTPUT_FIELDS)

    def __init__(self, config: EditgenConfig) -> None:
        super().__init__(config)
        self.fetcher: Fetcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.budget: DecodeBudget | None = None

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
        return self._output(table, results)

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
            "http_status": [r.download.status for r in results],
            "fetch_error": [_error_text(r.download.error or (r.image.error if r.image else None)) for r in results],
        }
        for f in OUTPUT_FIELDS:
            if f.name in table.column_names:
                table = table.drop_columns([f.name])
            table = table.append_column(f, pa.array(cols[f.name], type=f.type))
        return with_status(table, [r.reason for r in results])
