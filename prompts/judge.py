"""The judge's request: the rubric (prompts/judge_rubric.txt), the answer's JSON schema, and one pair's chat
messages with its two images (docs/judge.md).

The messages are OpenAI-style chat content parts (text, then `image_url` data URIs), the format both the
vLLM engine's `chat` and any OpenAI-compatible server take, so the two backends send the same request.
Images are re-encoded as PNG at most `image_side` pixels a side: the judge sees what the sample shows,
at a size a 7B VLM's context holds.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from editgen.prompts.builder import LLMRequest, row_seed

RUBRIC_FILE = Path(__file__).with_name("judge_rubric.txt")
#: The judge's scores, in rubric order: the answer has `<name>` (0-10) and `<name>_reason` for each.
SCORES = ("instruction", "preservation", "quality")


def load_rubric(path: str | None = None) -> str:
    """The rubric text (the system message). OSError / ValueError name a missing or empty file."""
    where = Path(path) if path else RUBRIC_FILE
    text = where.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{where}: the judge rubric is empty")
    return text


def judge_schema(max_reason_chars: int = 240) -> dict[str, Any]:
    """The answer: three integers 0-10, each with a one-sentence reason; nothing else."""
    props: dict[str, Any] = {}
    for name in SCORES:
        props[name] = {"type": "integer", "minimum": 0, "maximum": 10}
        props[f"{name}_reason"] = {"type": "string", "minLength": 1, "maxLength": max_reason_chars}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def data_uri(image: bytes, side: int) -> str:
    """The image as a PNG data URI, shrunk (never enlarged) to at most `side` pixels a side. ValueError for
    bytes that are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as im:
            pic = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a decodable image ({exc})") from None
    pic.thumbnail((side, side))
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def judge_request(key: str, instruction: str, input_image: bytes, edited_image: bytes, *, rubric: str,
                  seed: int, attempt: int = 0, image_side: int = 512) -> LLMRequest:
    """One pair's request: the rubric as the system message, then the original image, the edited image
    and the instruction. Its seed follows from (judge.seed, sample key, attempt)."""
    content = [
        {"type": "text", "text": "ORIGINAL image:"},
        {"type": "image_url", "image_url": {"url": data_uri(input_image, image_side)}},
        {"type": "text", "text": "EDITED image:"},
        {"type": "image_url", "image_url": {"url": data_uri(edited_image, image_side)}},
        {"type": "text", "text": f"INSTRUCTION: {instruction}\nScore the edit as the JSON object."},
    ]
    messages = [{"role": "system", "content": rubric}, {"role": "user", "content": content}]
    return LLMRequest(row_id=key, caption=instruction, messages=messages, seed=row_seed(key, seed, attempt))
