"""Which render settings a hand-run tool (`editgen pair`, `editgen edit-model`) starts from: the
pipeline's own profiles (pipeline/profiles/*.yaml), so a tool and a run of the same profile agree."""

from __future__ import annotations

import argparse

from editgen.p2p.models import quiet_libraries
from editgen.p2p.models import resolve_model as resolve_model_name
from editgen.pipeline.config import build_config, profile_names
from editgen.pipeline.settings.render import RenderConfig

#: --profile choices: the pipeline's own profiles, the names `editgen run --profile` accepts (the tiny SDXL
#: model is `--profile tiny --model tiny-sdxl`).
PROFILE_NAMES = tuple(profile_names())


def profile_render(name: str) -> RenderConfig:
    """The render section of profile ``name``."""
    return build_config(profile=name).render


def resolve_model(args: argparse.Namespace) -> tuple[str, str | None]:
    """Model id/path (``--model`` or the profile's) and, for tiny models, the variant (built if needed)."""
    return resolve_model_name(args.model or profile_render(args.profile).model)


__all__ = ["PROFILE_NAMES", "profile_render", "quiet_libraries", "resolve_model"]
