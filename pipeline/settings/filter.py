"""Config of the filter stage (CLIP scoring and selection). Owned by the filter stage.

Defaults reproduce InstructPix2Pix's released data: ViT-L/14 (OpenAI weights), thresholds
sim_image >= 0.75, sim_direction >= 0.2, sim_0 >= 0.2, sim_1 >= 0.2, top 4 per pair by direction.
The consistency metrics (DINOv2 similarity, whole-image SSIM: docs/filters.md) are off unless asked for
(`dino_model`, `ssim`); their bounds follow UltraEdit (0.3 <= dinov2_sim <= 0.9, SSIM bounds off).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from editgen.pipeline.settings.base import Resources, Strict


class OutsideMaskConfig(Strict):
    """How the change outside an edit mask is measured (filters.pairs.outside_mask)."""

    dilation: float = Field(
        0.03, ge=0, le=0.5, description="the mask is grown by this fraction of the image's shorter side (rounded "
        "up to whole pixels; 0.03 = 16 px at 512) before the pixels outside it are compared",
    )


class FilterConfig(Strict):
    clip_model: str = Field(
        "ViT-L-14", description="open_clip model name, 'hf-hub:org/repo', 'local-dir:PATH', or 'tiny-clip'"
    )
    clip_pretrained: str = Field(
        "openai", description="open_clip pretrained tag or local weights file; 'seed:N' for tiny-clip"
    )
    clip_cache_dir: str | None = Field(
        None, description="open_clip download cache and tiny-clip build dir (default ~/.cache/editgen)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto = fp16 on GPU")
    clip_batch_size: int = Field(64, ge=1, description="images per CLIP forward pass")
    min_sim_image: float = Field(0.75, ge=-1, le=1, description="cos(I0, I1): edited image stays close")
    min_sim_direction: float = Field(0.2, ge=-1, le=1, description="cos(I1-I0, T1-T0): edit follows text")
    min_sim_0: float = Field(0.2, ge=-1, le=1, description="cos(I0, T0): input image matches caption")
    min_sim_1: float = Field(0.2, ge=-1, le=1, description="cos(I1, T1): edited image matches caption")
    min_reconstruction_psnr: float | None = Field(
        20.0, ge=0, le=100, description="real-image pairs (render.source=real): PSNR dB of the reconstruction vs "
        "the real image, else poor_inversion; null = no check",
    )
    min_reconstruction_ssim: float | None = Field(None, ge=-1, le=1, description="the same for SSIM")
    outside_mask: OutsideMaskConfig = Field(
        default_factory=OutsideMaskConfig, description="change outside the edit mask (outside_mask_l1 / "
        "outside_mask_ssim columns, null where the mask is the whole image)",
    )
    max_outside_mask_l1: float | None = Field(
        None, ge=0, le=1, description="pairs with an edit mask: mean absolute pixel change (0..1) outside the dilated "
        "mask above this is dropped as changed_outside_mask; null = no check",
    )
    min_outside_mask_ssim: float | None = Field(
        None, ge=-1, le=1, description="the same for SSIM outside the dilated mask (below this: changed_outside_mask)",
    )
    dino_model: str | None = Field(
        None, description="DINOv2 for dinov2_sim = cos of the input and edited images' CLS embeddings: a "
        "transformers hub id (facebook/dinov2-base), a local model folder (safetensors), or 'tiny-dino'; "
        "null = no dinov2_sim column",
    )
    dino_batch_size: int = Field(32, ge=1, description="images per DINOv2 forward pass")
    ssim: bool = Field(False, description="store the whole-image SSIM of the input and edited images (column ssim)")
    min_dinov2: float | None = Field(
        0.3, ge=-1, le=1, description="dinov2_sim below this is dropped as below_dinov2 (UltraEdit: 0.3; the edit "
        "replaced the picture); null = no check; only with dino_model",
    )
    max_dinov2: float | None = Field(
        0.9, ge=-1, le=1, description="dinov2_sim above this is dropped as above_dinov2 (UltraEdit's cap 0.9: nothing "
        "visible was edited); null = no check; only with dino_model",
    )
    min_ssim: float | None = Field(
        None, ge=-1, le=1, description="ssim below this: below_ssim (set: ssim is computed); null = no check",
    )
    max_ssim: float | None = Field(
        None, ge=-1, le=1, description="ssim above this: above_ssim (set: ssim is computed); null = no check",
    )
    top_k: int | None = Field(4, ge=1, description="kept candidates per pair, by sim_direction; null = all")
    cache_scores: bool = Field(
        True, description="reuse OUT/filter/_scores when only thresholds/top_k change"
    )
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1, batch_size=64))

    @property
    def ssim_on(self) -> bool:
        """The whole-image SSIM is computed: asked for, or bounded (a bound on it would else check nothing)."""
        return self.ssim or self.min_ssim is not None or self.max_ssim is not None

    @model_validator(mode="after")
    def _consistency_bounds(self) -> FilterConfig:
        """A minimum above its maximum would keep nothing."""
        for lo, hi, name in ((self.min_dinov2, self.max_dinov2, "dinov2"), (self.min_ssim, self.max_ssim, "ssim")):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_{name} ({lo:g}) is above max_{name} ({hi:g}): no pair could pass")
        return self
