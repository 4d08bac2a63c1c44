"""One InstructPix2Pix training step's loss (Brooks et al. 2023, sec. 3.2; diffusers' example trainer
follows the same recipe).

The edited image's VAE latent (sampled, times the VAE's scaling factor) is noised at a uniform timestep;
the UNet reads it concatenated with the input image's latent (the posterior's mode, unscaled: what
`StableDiffusionInstructPix2PixPipeline` feeds it at inference) and the instruction's text embedding, and
is trained to predict the noise (or v, or the sample: the scheduler's `prediction_type`) by MSE.
Conditioning dropout, so the model learns the unconditional predictions classifier-free guidance needs:
per sample one draw u ~ U[0,1) and, for dropout p, u < p drops the text alone, p <= u < 2p both text and
image, 2p <= u < 3p the image alone (p each, as in the paper). A dropped text is the empty prompt's
embedding, a dropped image an all-zero latent.

Every random draw (flip, VAE sample, noise, timestep, dropout) comes from the step's own generator,
seeded by (seed, step), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: InstructPix2Pix's conditioning dropout (text alone, image alone, both: this probability each).
CONDITIONING_DROPOUT = 0.05


@dataclass
class Frozen:
    """What a step reads but does not train: the VAE, the text encoder, the empty prompt, the noise schedule."""

    vae: Any
    text_encoder: Any
    null_text: torch.Tensor  # 1 x tokens x width: the empty prompt's embedding
    noise_scheduler: Any  # DDPMScheduler with the base model's schedule and prediction type

    @property
    def device(self) -> torch.device:
        return self.null_text.device


def step_generator(seed: int, step: int) -> torch.Generator:
    """The one RNG of training step `step` (0-based)."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def dropout_masks(n: int, p: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop text, drop image) booleans per sample: p text alone, p both, p image alone."""
    u = torch.rand(n, generator=gen)
    return u < 2 * p, (u >= p) & (u < 3 * p)


def _flip(batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random horizontal flip, the same for a sample's two images (they stay pixel-aligned)."""
    x0, x1 = batch["original_pixel_values"], batch["edited_pixel_values"]
    flip = (torch.rand(x0.shape[0], generator=gen) < 0.5)[:, None, None, None]
    return torch.where(flip, x0.flip(-1), x0), torch.where(flip, x1.flip(-1), x1)


def _target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    if kind == "sample":
        return latents
    raise ValueError(f"the base model's scheduler has prediction_type {kind!r} (epsilon, v_prediction, sample)")


@torch.no_grad()
def unet_inputs(frozen: Frozen, batch: dict[str, torch.Tensor], gen: torch.Generator,
                p: float = CONDITIONING_DROPOUT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(UNet input: noisy latent + image latent, timesteps, text embeddings, target) for one batch."""
    dev, vae = frozen.device, frozen.vae
    original, edited = (x.to(dev) for x in _flip(batch, gen))
    latents = vae.encode(edited).latent_dist.sample(generator=gen) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen).to(dev)
    n = latents.shape[0]
    t = torch.randint(0, frozen.noise_scheduler.config.num_train_timesteps, (n,), generator=gen).to(dev)
    noisy = frozen.noise_scheduler.add_noise(latents, noise, t)
    text = frozen.text_encoder(batch["input_ids"].to(dev))[0]
    image = vae.encode(original).latent_dist.mode()
    drop_text, drop_image = (m.to(dev) for m in dropout_masks(n, p, gen))
    text = torch.where(drop_text[:, None, None], frozen.null_text.to(text.dtype), text)
    image = image * (~drop_image).to(image.dtype)[:, None, None, None]
    return torch.cat([noisy, image], dim=1), t, text, _target(frozen.noise_scheduler, latents, noise, t)


def loss(unet: Any, frozen: Frozen, batch: dict[str, torch.Tensor], gen: torch.Generator,
         p: float = CONDITIONING_DROPOUT) -> torch.Tensor:
    """The step's MSE between the UNet's prediction and its target."""
    x, t, text, target = unet_inputs(frozen, batch, gen, p)
    pred = unet(x, t, text).sample
    return F.mse_loss(pred.float(), target.float())


def empty_prompt(tokenizer: Any, text_encoder: Any, device: torch.device | str) -> torch.Tensor:
    """The empty prompt's text embedding (1 x tokens x width), padded as training prompts are."""
    ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return text_encoder(ids)[0]
