"""Judge requests for a vision-language model: an input image, its edited image and the instruction.

One request shape serves both backends: vLLM's offline `LLM.chat` (llm/vllm_backend.py) and any
OpenAI-compatible server (llm/openai_backend.py) take chat messages whose user turn carries the two
images as `image_url` parts (data URIs) and render them with the model family's own chat template, so
the same code asks Qwen2.5-VL on a GPU and the tiny Idefics3 on a CPU (tiny/vlm.py). `processor_prompt`
renders the same turn with a processor's template for `LLM.generate` (decoded images, no base64).
Torch-free: PIL is imported only where images are decoded. Image bytes stay out of every repr, so a
logged request never carries them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from editgen.llm.base import LLMRequest
from editgen.prompts.judge import SCORES

#: The three criteria of the issue's rubric, in the order the model answers them.
CRITERIA = SCORES
#: Leading bytes of the formats every judge backend accepts (vLLM decodes with PIL, servers by MIME type).
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"))


class BadImage(ValueError):
    """An image the judge cannot send: empty, or not PNG/JPEG/WebP/GIF (the row is dropped, named)."""


class ChatTemplater(Protocol):
    """A tokenizer or processor: anything with transformers' `apply_chat_template`."""

    def apply_chat_template(self, conversation: list[dict[str, Any]], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class JudgeInput:
    """One candidate to judge. The images are encoded files (PNG, JPEG, ...), never shown by repr."""

    row_id: str
    instruction: str
    input_image: bytes = field(repr=False)
    edited_image: bytes = field(repr=False)
    seed: int = 0


def image_mime(data: bytes, what: str = "image") -> str:
    """MIME type from the file's leading bytes; BadImage (naming `what`) when it is none of the known ones."""
    if not data:
        raise BadImage(f"{what}: empty")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    raise BadImage(f"{what}: not a PNG, JPEG, WebP or GIF file (starts with {data[:8]!r})")


def data_uri(data: bytes, what: str = "image") -> str:
    """`data:<mime>;base64,...`: how both vLLM and OpenAI-compatible servers take an inline image."""
    return f"data:{image_mime(data, what)};base64,{base64.b64encode(data).decode('ascii')}"


def _user_parts(inp: JudgeInput, image: Callable[[bytes, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The user turn: each image announced by a line of text, then the instruction (images first, as the
    VLM families' own examples do)."""
    return [
        {"type": "text", "text": "Input image:"},
        image(inp.input_image, f"{inp.row_id}: input image"),
        {"type": "text", "text": "Edited image:"},
        image(inp.edited_image, f"{inp.row_id}: edited image"),
        {"type": "text", "text": f"Instruction: {inp.instruction}\nScore the edit. Answer with the JSON object only."},
    ]


def _url_part(data: bytes, what: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_uri(data, what)}}


def judge_messages(inp: JudgeInput, rubric: str) -> list[dict[str, Any]]:
    """OpenAI-style chat messages: the rubric as the system turn, the two images and the instruction."""
    return [{"role": "system", "content": rubric}, {"role": "user", "content": _user_parts(inp, _url_part)}]


def judge_request(inp: JudgeInput, rubric: str) -> LLMRequest:
    """The messages as an `LLMRequest`, so the instruct stage's vLLM and OpenAI backends send it unchanged."""
    return LLMRequest(row_id=inp.row_id, caption=inp.instruction, messages=judge_messages(inp, rubric), seed=inp.seed)


def decode_image(data: bytes, what: str = "image") -> Any:
    """A PIL RGB image from encoded bytes; BadImage when PIL cannot read it."""
    image_mime(data, what)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadImage(f"{what}: unreadable ({exc})") from None


def processor_prompt(templater: ChatTemplater, inp: JudgeInput, rubric: str) -> dict[str, Any]:
    """`LLM.generate`'s input: the prompt from the model's own chat template (`{"type": "image"}` parts) and
    the two decoded images as `multi_modal_data`, in prompt order."""
    images: list[Any] = []

    def image(data: bytes, what: str) -> dict[str, Any]:
        images.append(decode_image(data, what))
        return {"type": "image"}

    messages = [{"role": "system", "content": [{"type": "text", "text": rubric}]},
                {"role": "user", "content": _user_parts(inp, image)}]
    prompt = templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "multi_modal_data": {"image": images}}


def judge_schema(criteria: Sequence[str] = CRITERIA, max_reason_chars: int = 200) -> dict[str, Any]:
    """JSON schema of one verdict: per criterion `<name>_reason` (one sentence) then `<name>` (integer 0-10).

    The reason comes first so the model justifies before it commits to a number; bounded lengths make a
    weak model close the object well before max_tokens (as in prompts/schema.py).
    """
    properties: dict[str, Any] = {}
    for name in criteria:
        properties[f"{name}_reason"] = {"type": "string", "minLength": 1, "maxLength": max_reason_chars}
        properties[name] = {"type": "integer", "minimum": 0, "maximum": 10}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
