"""The judge's rubric (prompts/judge_rubric.txt), the names of its scores, and the images as it sees them
(docs/judge.md). The request itself (two images and the instruction as chat messages, the answer's
schema) is built by llm/vlm_request.py.

Images are re-encoded as PNG at most `judge.image_side` pixels a side: the judge sees what the sample
shows, at a size a 7B VLM's context holds.
"""

from __future__ import annotations

import io
from pathlib import Path

from editgen.pipeline.settings.judge import SCORES

__all__ = ["RUBRIC_FILE", "SCORES", "load_rubric", "shrink"]

RUBRIC_FILE = Path(__file__).with_name("judge_rubric.txt")


def load_rubric(path: str | None = None) -> str:
    """The rubric text (the system message). OSError / ValueError name a missing or empty file."""
    where = Path(path) if path else RUBRIC_FILE
    text = where.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{where}: the judge rubric is empty")
    return text


def shrink(image: bytes, side: int) -> bytes:
    """The image as PNG bytes at most `side` pixels a side (never enlarged): what the judge is sent.
    ValueError for bytes that are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as im:
            pic = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a decodable image ({exc})") from None
    pic.thumbnail((side, side))
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()
