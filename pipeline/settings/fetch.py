"""Config of the fetch stage: download each kept row's image (LAION URL), only with render.source=real.

The HTTP behaviour follows img2dataset's (user agent naming the tool, X-Robots-Tag opt-outs, retries),
the image handling its resizer's (min size, decompression-bomb guard, center_crop / border / keep_ratio
to the render size). See docs/fetch.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from editgen.pipeline.settings.base import Resources, Strict

#: Who we are, in every request: site owners can see a research tool and block it by name.
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (compatible; editgen/1.0; research dataset tool: instruction-based image-editing "
    "training data; honours X-Robots-Tag noai/noimageai)"
)
#: img2dataset's defaults: sites that say any of these (for every crawler, or for ours) are skipped.
DEFAULT_DISALLOWED = ["noai", "noimageai", "noindex", "noimageindex"]
#: Pillow refuses images above twice its MAX_IMAGE_PIXELS (89,478,485) whatever we allow.
PILLOW_PIXEL_LIMIT = 2 * 89_478_485
Directive = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)]
Channel = Annotated[int, Field(ge=0, le=255)]


class FetchConfig(Strict):
    threads: int = Field(16, ge=1, le=512, description="concurrent downloads per worker")
    timeout: float = Field(10.0, gt=0, le=300, description="seconds per connect and per read (as requests)")
    max_seconds: float = Field(60.0, gt=0, le=3600, description="whole download of one attempt, seconds "
                               "(a server dripping bytes cannot hold a thread)")
    retries: int = Field(2, ge=0, le=10, description="retries after connection errors, timeouts, 5xx and 429 "
                         "(never other 4xx)")
    backoff: float = Field(0.5, ge=0, le=60, description="retry k waits backoff * 2**k * a jitter in [0.5, 1.5) "
                           "drawn from the URL (deterministic)")
    user_agent: str = Field(DEFAULT_USER_AGENT, min_length=1, max_length=512, pattern=r"^[\x20-\x7e]+$")
    robots_name: str = Field("editgen", pattern=r"^[a-z0-9_.-]+$", max_length=64,
                                  description="our name in `X-Robots-Tag: <name>: noai` directives")
    disallowed_header_directives: list[Directive] = Field(
        default_factory=lambda: list(DEFAULT_DISALLOWED),
        description="X-Robots-Tag directives that opt an image out (case-insensitive)",
    )
    max_redirects: int = Field(5, ge=0, le=30)
    block_private_addresses: bool = Field(
        True, description="refuse URLs (and redirects) to loopback, private and link-local addresses: a "
        "caption list must not make the crawler probe the cluster's own network (tests turn it off)",
    )
    max_bytes: int = Field(20_000_000, ge=1024, le=2**31, description="bytes downloaded at most; past it the "
                           "row is fetch_too_large")
    max_pixels: int = Field(89_478_485, ge=1, le=PILLOW_PIXEL_LIMIT,
                            description="decompression-bomb guard: width * height above this is fetch_too_large")
    decode_memory_bytes: int = Field(
        2**30, ge=2**20, le=2**40, description="decoded-pixel bytes a worker's threads may hold at once: each "
        "decode reserves its peak, estimated from the header (size, mode, format), and waits for it; an image "
        "that alone needs more is fetch_too_large (docs/fetch.md)",
    )
    min_side: int = Field(64, ge=1, le=4096, description="shorter side of the original below this: fetch_too_small")
    resize_mode: Literal["center_crop", "border", "keep_ratio"] = Field(
        "center_crop", description="to render.width x render.height: center_crop fills and crops, border fits "
        "and pads with border_color, keep_ratio fits inside with each side rounded down to a multiple of 8",
    )
    border_color: tuple[Channel, Channel, Channel] = Field((255, 255, 255), description="RGB of border's padding")
    encode_format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(95, ge=1, le=100, description="jpeg / webp quality")
    max_failed_fraction: float = Field(
        0.95, ge=0, le=1, description="a partition where more of its URLs than this fraction fail to connect "
        "(refused, DNS, connect timeout: the network is down, not the hosts) fails, resumably, instead of "
        "dropping them all; 404s and other answers never count; 1 = never",
    )
    near_dup_distance: int | None = Field(
        6, ge=0, le=32, description="a fetched image whose perceptual hash (64-bit pHash) is within this many "
        "bits of an earlier kept image's, anywhere in the run, is dropped as near_duplicate_image (resized or "
        "re-encoded copies); 0 = identical hashes only; null = no near-duplicate removal (docs/decontamination.md)",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(num_cpus=1, concurrency=0, batch_size=256),
        description="CPU only; concurrency 0 = as many workers as the cluster fits",
    )

    @model_validator(mode="after")
    def _cpu_only(self) -> FetchConfig:
        if self.resources.num_gpus:
            raise ValueError(f"resources: fetch runs on CPUs only (num_gpus must be 0, "
                             f"got {self.resources.num_gpus:g})")
        return self
