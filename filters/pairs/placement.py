"""Where a scoring model runs and in what precision: one rule for every scorer (CLIP, DINOv2).

`auto` means the GPU when there is one, else the CPU; half precision on a GPU, fp32 on a CPU (CPU
kernels in fp16 are slow and some are missing). A spec names `device` and `precision`; both scorers
resolve them the same way, so a filter config moves all its models together.
"""

from __future__ import annotations


class Placement:
    """A mixin for a scorer's spec dataclass that has `device` and `precision` fields."""

    device: str
    precision: str

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "fp16" if self.resolved_device().startswith("cuda") else "fp32"
