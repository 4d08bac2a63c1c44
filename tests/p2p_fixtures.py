"""Shared pieces of the Prompt-to-Prompt tests: tiny pipelines, one torch thread, plain generations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from models.tiny_sd import build_tiny_sd
from p2p.generate import P2PPipeline, initial_noise, load_pipeline


def one_thread() -> Iterator[None]:
    """Body of a module-scoped fixture: 2 shared cores make OpenMP spinning far slower than 1 thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_pipeline(
    tmp_path_factory: Any, variant: str = "sd", scheduler: str = "ddim", text_width: int = 32
) -> P2PPipeline:
    suffix = "" if text_width == 32 else f"-w{text_width}"
    path = build_tiny_sd(tmp_path_factory.getbasetemp() / f"tiny-{variant}{suffix}", variant, text_width=text_width)
    return load_pipeline(path, "cpu", "float32", scheduler)


def plain_generation(
    p2p: P2PPipeline, prompts: list[str], *, steps: int, size: int, seed: int, output_type: str = "latent"
) -> Any:
    """A plain diffusers pipeline call (default attention processors) from our seeded shared noise."""
    z, _ = initial_noise(seed, (1, 4, size // 8, size // 8))
    return p2p.pipe(
        prompts,
        latents=z.expand(len(prompts), -1, -1, -1),
        num_inference_steps=steps,
        guidance_scale=7.5,
        height=size,
        width=size,
        output_type=output_type,
    ).images
