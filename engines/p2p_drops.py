"""Prompt-to-Prompt's refusals before any UNet work, shared by single pairs and sessions (torch-free)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from editgen.engines.base import PairRejected


@contextmanager
def truncation_drops() -> Iterator[None]:
    """An edit whose words lie past the text encoder's 77 tokens would publish identical before/after
    images: the pair is dropped as `render_edit_truncated` before any UNet work."""
    from editgen.p2p.seq_align import TruncatedWord

    try:
        yield
    except TruncatedWord as exc:
        raise PairRejected("render_edit_truncated", str(exc)) from None
