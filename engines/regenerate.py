"""Render one stored candidate again, whichever engine made it, bit for bit on the same device/dtype.

The record names its engine and record version (`format`); the engine renders it from the record alone,
plus the source photograph's bytes for an engine that edits real images (the shard's `input` member or
the fetch partition's `image`). Without a runtime, the model the record names is loaded (memoised).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from editgen.engines.base import EditEngine, RenderedCandidate, engine_class
from editgen.engines.record import CandidateRecord
from editgen.engines.runtime import Runtime
from editgen.pipeline.settings.render import RenderConfig


def engine_for(record: CandidateRecord, runtime: Runtime | None = None, device: str | None = None) -> EditEngine:
    """The engine that renders `record` (its format's name and version), on `runtime` or the record's model."""
    cls = engine_class(record.engine)
    if record.version != cls.version:
        raise ValueError(f"record format {record.format}: this code renders {cls.name} records of version "
                         f"{cls.version}")
    return cls(runtime or Runtime.for_record(record.model, device), RenderConfig())


def regenerate(record: CandidateRecord | Mapping[str, Any], runtime: Runtime | None = None, *,
               device: str | None = None, image: bytes | None = None, image_format: str = "png") -> RenderedCandidate:
    """Re-render one stored record (a CandidateRecord or its stored JSON object); identical bytes to the
    original render on the same device/dtype. `image`: the source photograph, for real-image records."""
    rec = record if isinstance(record, CandidateRecord) else CandidateRecord.from_row(record)
    return engine_for(rec, runtime, device).regenerate(rec, image=image, image_format=image_format)
