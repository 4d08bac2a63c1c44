"""Config of the judge stage (an open vision-language model scores every pair the filter kept). Owned by the
judge stage (stages/judge.py, docs/judge.md).

The judge sees the input image, the edited image and the instruction and answers, from the rubric in
prompts/, three integer scores 0-10 with a one-sentence reason each: instruction following, preservation
of what the instruction does not touch, and visual quality. Off by default (`enabled: false`: the stage is
not in the graph and nothing changes); the sd15/sdxl profiles turn it on.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from editgen.pipeline.settings.base import Resources, Seed, Strict
from editgen.pipeline.settings.instruct import OpenAISettings, VllmSettings

Score = Annotated[int, Field(ge=0, le=10)]
Weight = Annotated[float, Field(ge=0, le=1e6)]
#: The judge's three scores (column `judge_<name>`, reason `judge_<name>_reason`), in rubric order.
SCORES = ("instruction", "preservation", "quality")
#: What the combined score may weigh: the judge's scores (0-10, scaled to 0-1) and the filter's CLIP scores.
WEIGHABLE = (*SCORES, "sim_direction", "sim_image")


def _vlm_engine() -> VllmSettings:
    """vLLM for a VLM judge: two images per request, a context that holds them."""
    return VllmSettings(max_model_len=8192, engine_kwargs={"limit_mm_per_prompt": {"image": 2}})


class JudgeConfig(Strict):
    enabled: bool = Field(False, description="run the judge stage after filter (docs/judge.md)")
    backend: Literal["vllm", "openai"] = "vllm"
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="hub id or local path (served name for openai)")
    seed: Seed = Field(0, description="with the sample key, seeds each request (retries get new seeds)")
    temperature: float = Field(0.0, ge=0, le=2, description="0: the judge's most likely answer")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(384, ge=32, le=100_000, description="generated tokens per answer")
    max_attempts: int = Field(3, ge=1, le=100, description="tries per pair when an answer is malformed")
    max_reason_chars: int = Field(240, ge=16, le=10_000, description="JSON-schema maxLength of each reason")
    rubric_file: str | None = Field(None, description="default: prompts/judge_rubric.txt")
    image_side: int = Field(512, ge=32, le=4096, description="images are sent at most this many pixels a side")
    min_instruction: Score = Field(6, description="judge_instruction below this: judge_below_instruction")
    min_preservation: Score = Field(5, description="judge_preservation below this: judge_below_preservation")
    min_quality: Score = Field(5, description="judge_quality below this: judge_below_quality")
    weights: dict[str, Weight] = Field(
        default_factory=lambda: {"instruction": 1.0, "preservation": 1.0, "quality": 1.0},
        description="the combined score `judge_score` = sum(w x score) / sum(w), the judge's scores scaled to "
        f"0-1; keys from {', '.join(WEIGHABLE)}",
    )
    top_k: int | None = Field(None, ge=1, description="after the thresholds, keep the best k candidates per pair "
                              "(per chain in a session) by `judge_score`; None: every passing one")
    vllm: VllmSettings = Field(default_factory=_vlm_engine)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1, batch_size=64))

    @model_validator(mode="after")
    def _known_weights(self) -> JudgeConfig:
        unknown = sorted(set(self.weights) - set(WEIGHABLE))
        if unknown:
            raise ValueError(f"weights: unknown score {unknown[0]!r} (known: {', '.join(WEIGHABLE)})")
        if not any(self.weights.values()):
            raise ValueError("weights: at least one weight must be > 0")
        return self
