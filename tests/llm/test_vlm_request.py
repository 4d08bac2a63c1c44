"""Judge requests without an engine: image checks, the two-image messages, repr without image bytes, the
processor-rendered prompt (the tiny VLM's real tokenizer and chat template) and the verdict schema."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from editgen.llm.vlm_request import (
    BadImage,
    JudgeInput,
    decode_image,
    image_mime,
    judge_messages,
    judge_request,
    judge_schema,
    processor_prompt,
)


def encoded(fmt: str, size: tuple[int, int] = (20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                      ("GIF", "image/gif")])
def test_known_formats_are_recognised(fmt: str, mime: str) -> None:
    assert image_mime(encoded(fmt)) == mime


@pytest.mark.parametrize(
    "data,why", [(b"", "empty"), (b"<html>502</html>", "not a PNG"), (b"RIFF1234WAVE", "not a PNG")]
)
def test_unknown_bytes_are_rejected_naming_the_row_and_image(data: bytes, why: str) -> None:
    good = encoded("PNG")
    with pytest.raises(BadImage, match=f"^row-7: edited image: {why}"):
        judge_request(JudgeInput("row-7", "add snow", good, data), "rubric")
    with pytest.raises(BadImage, match=f"^row-7: input image: {why}"):
        judge_request(JudgeInput("row-7", "add snow", data, good), "rubric")


def test_truncated_image_is_rejected_when_decoded() -> None:
    with pytest.raises(BadImage, match="^x: unreadable"):
        decode_image(encoded("PNG")[:40], "x")


def test_messages_carry_both_images_in_order_and_the_instruction() -> None:
    a, b = encoded("PNG"), encoded("JPEG")
    system, user = judge_messages(JudgeInput("r", "make it snow", a, b, seed=3), "THE RUBRIC")
    assert system == {"role": "system", "content": "THE RUBRIC"}
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    urls = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    assert urls[0].startswith("data:image/png;base64,") and urls[1].startswith("data:image/jpeg;base64,")
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [a, b]
    assert "Instruction: make it snow" in user["content"][-1]["text"]


def test_no_image_bytes_in_repr() -> None:
    inp = JudgeInput("r", "make it snow", encoded("PNG"), encoded("PNG"), seed=3)
    req = judge_request(inp, "rubric")
    assert req.row_id == "r" and req.seed == 3 and req.caption == "make it snow"
    for text in (repr(inp), repr(req), str(req)):
        assert "base64" not in text and "PNG" not in text and "\\x89" not in text


def test_processor_prompt_renders_two_images_with_the_model_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from editgen.tiny.llm import build_tokenizer
    from editgen.tiny.vlm import CHAT_TEMPLATE, VISION_TOKENS

    build_tokenizer(tmp_path, special_tokens=VISION_TOKENS, chat_template=CHAT_TEMPLATE)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    inp = JudgeInput("r", "add snow", encoded("PNG", (30, 10)), encoded("JPEG", (8, 16)))
    out = processor_prompt(tok, inp, "THE RUBRIC")
    prompt = out["prompt"]
    head = "<|im_start|>System: THE RUBRIC<end_of_utterance>\nUser: Input image:<image>Edited image:<image>"
    assert prompt.startswith(head)
    assert prompt.count("<image>") == 2 and prompt.endswith("Assistant:")
    assert [(im.mode, im.size) for im in out["multi_modal_data"]["image"]] == [("RGB", (30, 10)), ("RGB", (8, 16))]


def test_verdict_schema_bounds_scores_and_reasons() -> None:
    schema = judge_schema(("instruction_following", "preservation"), max_reason_chars=10)
    assert list(schema["properties"]) == ["instruction_following_reason", "instruction_following",
                                          "preservation_reason", "preservation"]
    good = {"instruction_following_reason": "ok", "instruction_following": 10,
            "preservation_reason": "fine", "preservation": 0}
    jsonschema.validate(good, schema)
    for bad in ({**good, "preservation": 11}, {**good, "instruction_following": -1}, {**good, "preservation": 5.5},
                {**good, "preservation_reason": ""}, {**good, "preservation_reason": "x" * 11},
                {**good, "extra": 1}, {k: v for k, v in good.items() if k != "preservation"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
