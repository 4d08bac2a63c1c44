"""Which diffusion model a hand-run tool (`editgen pair`, `editgen edit-model`) loads, per profile."""

from __future__ import annotations

import argparse
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"model": None, "variant": "sd", "size": 64, "steps": 10},
    "tiny-sdxl": {"model": None, "variant": "sdxl", "size": 64, "steps": 10},
    "sd15": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "size": 512, "steps": 50},
    "sdxl": {"model": "stabilityai/stable-diffusion-xl-base-1.0", "size": 1024, "steps": 50},
}


def resolve_model(args: argparse.Namespace) -> tuple[str, str | None]:
    """Model id/path and, for tiny profiles, the variant (built under ``$EDITGEN_CACHE`` if needed)."""
    prof = PROFILES[args.profile]
    if args.model:
        return args.model, None
    if prof["model"] is not None:
        return prof["model"], None
    from tiny.sd import build_tiny_sd

    return str(build_tiny_sd(variant=prof["variant"])), prof["variant"]


def quiet_libraries() -> None:
    """Keep stderr for our own one-line errors: no hub progress bars or library chatter."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
