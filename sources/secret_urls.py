"""The real URL of a row whose credentials ingest left out of OUT.

Ingest publishes every `url` redacted (pipeline.redact: no userinfo, `***` for secret parameter values),
because every file under OUT may be shared. The input is the one place the credentials live, so the fetch
stage reads them back from it: for each row whose stored URL lost something, the same input row (its
`source` file and `source_row`) is read again, the way ingest read it, and checked against the stored
URL. Rows without credentials, nearly all of them, cost nothing.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from editgen.pipeline.errors import InputError
from editgen.pipeline.redact import has_redaction, redact_url
from editgen.pipeline.settings.ingest import IngestConfig
from editgen.pipeline.storage import Storage
from editgen.sources.inputs import InputFile, discover
from editgen.sources.plan import describe, read_segment, segment


def real_urls(table: pa.Table, settings: IngestConfig, cache: Storage | None = None) -> list[str | None]:
    """Each row's URL to download: the stored one, or for a redacted one the input row's URL. `cache`
    (OUT) holds ingest's text scans, so a text input is not scanned again."""
    urls: list[str | None] = table.column("url").to_pylist()
    todo = [i for i, u in enumerate(urls) if isinstance(u, str) and has_redaction(u)]
    if not todo:
        return urls
    sources, rows = table.column("source").to_pylist(), table.column("source_row").to_pylist()
    by_source: dict[str, list[int]] = defaultdict(list)
    for i in todo:
        by_source[sources[i]].append(i)
    files = {f.name: f for f in discover(settings.input, settings.format)}
    for name, idx in by_source.items():
        f = files.get(name)
        if f is None:
            raise InputError(f"{name}: rows of this input file have URLs with credentials, which OUT does not "
                             "keep, and ingest.input no longer names it: run with the input ingest read")
        read = _read_urls(f, settings, cache, [rows[i] for i in idx])
        for i in idx:
            real = read[rows[i]]
            if real is None or redact_url(real) != urls[i]:
                raise InputError(f"{redact_url(f.url)}: row {rows[i]} changed since ingest read it (its URL "
                                 "holds credentials, which are read from the input): rerun from ingest")
            urls[i] = real
    return urls


def _read_urls(f: InputFile, settings: IngestConfig, cache: Storage | None, wanted: list[int]) -> dict[int, str | None]:
    """{row: url} for the wanted rows of one input file, reading only the span that covers them."""
    meta = describe(f, settings.text_column, settings.url_column, cache)
    lo, hi = min(wanted), max(wanted)
    if hi >= meta.rows:
        raise InputError(f"{redact_url(f.url)}: has {meta.rows} rows now, ingest read row {hi}: rerun from ingest")
    table = read_segment(segment(meta, lo, hi - lo + 1), settings.text_column, settings.url_column)
    return {lo + k: u for k, u in enumerate(table.column("url").to_pylist())}
