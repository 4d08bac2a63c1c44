"""Config of the ingest stage: where captions come from and which rows survive."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from editgen.pipeline.settings.base import Resources, Seed, Strict

#: Languages langid may answer (restricting the label set removes rare-language false positives).
LANGID_LANGUAGES = (
    "en de fr es it pt nl sv da no fi pl cs sk hu ro hr sl et lv lt tr id ms vi tl "
    "ru uk bg el he ar fa hi bn ta th zh ja ko ca eu gl af sw"
).split()


class IngestConfig(Strict):
    input: list[str] = Field(default_factory=list, description="paths, globs, directories or fsspec URLs")
    format: Literal["auto", "parquet", "jsonl", "csv", "tsv", "txt"] = "auto"
    text_column: str = Field("TEXT", min_length=1)
    url_column: str | None = Field("URL", min_length=1)
    limit: int | None = Field(None, ge=1, description="seeded deterministic sample of N input rows")
    seed: Seed = 0
    rows_per_partition: int = Field(1000, ge=1, le=10_000_000)
    min_words: int = Field(2, ge=0, le=10_000)
    max_words: int = Field(60, ge=1, le=10_000)
    min_chars: int = Field(8, ge=0, le=100_000)
    max_chars: int = Field(400, ge=1, le=100_000)
    languages: list[str] = Field(default_factory=lambda: ["en"], description="kept languages; [] = any")
    min_language_confidence: float = Field(
        0.5, ge=0, le=1, description="drop as not_english only when langid is at least this sure"
    )
    blocklist: str | None = Field(None, description="blocklist file; default: the bundled NSFW list")
    extra_blocked_terms: list[str] = Field(default_factory=list)
    drop_junk: bool = True
    dedup_captions: bool = True
    dedup_urls: bool = True
    dedup_buckets: int = Field(
        0, ge=0, le=65_536, description="hash buckets for global dedup (one task each); 0 = one per 500k rows. "
        "Never changes results, so it is not part of the stage hash"
    )
    exclude: list[str] = Field(
        default_factory=list, description="benchmark files (.parquet / .jsonl, paths or fsspec URLs) whose "
        "captions, URLs and images must not be in the data: matching rows are dropped as benchmark_caption / "
        "benchmark_url, and with render.source=real fetched images within exclude_distance of a benchmark "
        "image as benchmark_image. Columns by name: docs/decontamination.md. Their content keys the steps "
        "that use them: an edited file recomputes them",
    )
    exclude_distance: int = Field(
        6, ge=0, le=32, description="pHash Hamming distance (of 64 bits) within which a fetched image counts as "
        "a benchmark image (0 = the same hash only)",
    )
    canary: list[str] = Field(
        default_factory=list, description="strings (a benchmark's canary, e.g. MagicBrush's) whose presence in a "
        "row's raw caption drops it as benchmark_canary (case-sensitive substring)",
    )
    resources: Resources = Field(default_factory=lambda: Resources(concurrency=2, batch_size=2048))

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        """An unknown code would silently drop every row as not_english."""
        unknown = [code for code in value if code not in LANGID_LANGUAGES]
        if unknown:
            raise ValueError(f"unknown language code {unknown[0]!r} (known: {', '.join(sorted(LANGID_LANGUAGES))})")
        return value

    @field_validator("canary")
    @classmethod
    def _no_empty_canary(cls, value: list[str]) -> list[str]:
        """An empty string is in every caption: it would drop them all."""
        if any(not c.strip() for c in value):
            raise ValueError("an empty canary string would match every row")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> IngestConfig:
        for lo, hi in (("min_words", "max_words"), ("min_chars", "max_chars")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}: {getattr(self, lo)} is above {hi} ({getattr(self, hi)})")
        return self
