"""Random-weight models built from the real architectures' configs, for `make gpu-proof` (no model hub).

Speed and exactness do not depend on the weights, only on the shapes: Stable Diffusion 1.5 (UNet from
``p2p.compute.SD15_UNET_CONFIG``, its CLIP ViT-L/14 text encoder and its VAE, with the real CLIP
tokenizer), open_clip's ViT-L/14 (``pretrained=None``) and Qwen2.5-0.5B's decoder (for vLLM). On CPU the
tiny pipelines and the tiny CLIP (tiny/) stand in, so the same code runs in CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from editgen.pipeline.cache import cache_dir

if TYPE_CHECKING:  # the vLLM child (bench/gpu_proof_vllm.py) runs where diffusers may be missing
    from editgen.p2p.generate import P2PPipeline

#: stable-diffusion-v1-5's text_encoder/config.json (CLIP ViT-L/14's text tower), token ids as tiny/'s.
SD15_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
}
#: stable-diffusion-v1-5's vae/config.json.
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
#: stable-diffusion-v1-5's scheduler/scheduler_config.json (PNDM there; the render loop builds its own).
SD15_SCHEDULER: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                  "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
#: Qwen/Qwen2.5-0.5B-Instruct's config.json (the architecture; weights random).
QWEN25_05B_CONFIG: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1e6,
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": True, "use_sliding_window": False,
    "bos_token_id": 151643, "eos_token_id": 151645,
}
SD15_NAME = "random:stable-diffusion-v1-5-architecture"


def sd15_pipeline(device: torch.device, dtype: torch.dtype, seed: int = 0) -> P2PPipeline:
    """A P2P pipeline of SD 1.5's architecture with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editgen.p2p import compute
    from editgen.p2p.generate import P2PPipeline
    from editgen.tiny.clip_tokenizer import write_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(cache_dir() / "gpu-proof-tokenizer")))
    torch.manual_seed(seed)
    unet = compute.sd15_unet(device, dtype)
    with torch.device(device):
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    pipe = StableDiffusionPipeline(vae=vae.to(dtype), text_encoder=text.to(dtype), tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.eval().requires_grad_(False)
    return P2PPipeline(pipe, SD15_NAME, torch.device(device), dtype, "ddim")


def tiny_pipeline(device: torch.device, dtype: torch.dtype) -> P2PPipeline:
    """The tiny random SD pipeline (tiny/sd.py), the CPU stand-in."""
    from editgen.p2p.generate import load_pipeline
    from editgen.tiny.sd import build_tiny_sd

    return load_pipeline(str(build_tiny_sd(cache_dir() / "tiny-sd", "sd")), device, dtype, "ddim")


def clip_model(device: torch.device, gpu: bool) -> tuple[Any, str, int]:
    """(image tower's model, its name, image side): ViT-L/14 random on a GPU, the tiny CLIP on CPU."""
    import open_clip

    if gpu:
        model = open_clip.create_model("ViT-L-14", pretrained=None, precision="fp16", device=device)
        return model.eval(), "ViT-L-14 (random)", 224
    from editgen.tiny.clip import TINY_CLIP_CFG, TINY_CLIP_NAME, register_tiny_clip

    register_tiny_clip()
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None, device=device)
    return model.eval(), f"{TINY_CLIP_NAME} (random)", int(TINY_CLIP_CFG["vision_cfg"]["image_size"])


def write_qwen(folder: Path) -> Path:
    """A Qwen2.5-0.5B-architecture checkpoint with random weights (bf16 safetensors), written once."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B_CONFIG, torch_dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder
