"""Config of the render stage (Prompt-to-Prompt pairs). Owned by the render stage."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings.base import Resources, Strict


class RenderConfig(Strict):
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1, batch_size=8))
