"""Config of the filter stage (CLIP scoring and selection). Owned by the filter stage.

Defaults reproduce InstructPix2Pix's released data: ViT-L/14 (OpenAI weights), thresholds
sim_image >= 0.75, sim_direction >= 0.2, sim_0 >= 0.2, sim_1 >= 0.2, top 4 per pair by direction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
    top_k: int | None = Field(4, ge=1, description="kept candidates per pair, by sim_direction; null = all")
    cache_scores: bool = Field(
        True, description="reuse OUT/filter/_scores when only thresholds/top_k change"
    )
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1, batch_size=64))
