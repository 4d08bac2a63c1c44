"""`editgen train-probe`'s loop: fine-tune InstructPix2Pix from the run's render model on its train split.

Single process through accelerate's `Accelerator` (the GPU when there is one, else the CPU with mixed
precision off); the UNet alone trains (AdamW, gradient norm clipped at 1, constant learning rate), the VAE
and text encoder stay frozen. Every `checkpoint_every` steps, and at the last step, the state goes to
MODEL/checkpoints (probe/checkpoints.py); a rerun of the same command resumes from the newest and ends at
the weights an uninterrupted run reaches (the data order and every draw are functions of seed and step:
probe/data.py, probe/step.py). At the end MODEL is a diffusers `StableDiffusionInstructPix2PixPipeline`
folder (safetensors) and MODEL/probe.json says what was trained on what (written last: its presence means
the folder is whole).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from editgen.pipeline.config import EditgenConfig
from editgen.pipeline.errors import InputError
from editgen.pipeline.redact import redact_url
from editgen.probe.base import BaseModel, default_resolution, load_base
from editgen.probe.checkpoints import TrainState, check_run, latest, save
from editgen.probe.data import BatchStream, TrainSplit
from editgen.probe.step import CONDITIONING_DROPOUT, Frozen, empty_prompt, loss, step_generator

log = logging.getLogger("editgen")
PROBE_FILE = "probe.json"
PROBE_FORMAT = "editgen-probe/1"


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe trains (the CLI's flags)."""

    steps: int
    batch_size: int = 4
    lr: float = 1e-4
    resolution: int | None = None  # None: the run's render size
    seed: int = 0
    checkpoint_every: int = 500
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    conditioning_dropout: float = CONDITIONING_DROPOUT
    shuffle_buffer: int = 256


@dataclass
class Trainer:
    """The prepared pieces of one training run."""

    accelerator: Any
    unet: Any
    optimizer: Any
    frozen: Frozen
    stream: BatchStream


def _accelerator(settings: ProbeSettings) -> Any:
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    return Accelerator(cpu=not cuda, mixed_precision=settings.mixed_precision if cuda else "no")


def prepare(base: BaseModel, split: TrainSplit, settings: ProbeSettings, resolution: int) -> Trainer:
    """The accelerator, the trainable UNet and its AdamW, the frozen parts on the device, the batch stream."""
    from diffusers import DDPMScheduler

    accelerator = _accelerator(settings)
    dev = accelerator.device
    base.vae.to(dev).requires_grad_(False).eval()
    base.text_encoder.to(dev).requires_grad_(False).eval()
    base.unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(base.unet.parameters(), lr=settings.lr, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)
    unet, optimizer = accelerator.prepare(base.unet, optimizer)
    frozen = Frozen(base.vae, base.text_encoder, empty_prompt(base.tokenizer, base.text_encoder, dev),
                    DDPMScheduler.from_config(base.scheduler.config))
    stream = BatchStream(split.urls, base.tokenizer, resolution, settings.batch_size, settings.seed,
                         settings.shuffle_buffer)
    return Trainer(accelerator, unet, optimizer, frozen, stream)


def resume(trainer: Trainer, model_dir: Path, steps: int) -> TrainState:
    """The newest checkpoint's state loaded into the trainer, or a fresh start."""
    found = latest(model_dir)
    if found is None:
        return TrainState()
    path, state = found
    if state.step > steps:
        raise InputError(f"{model_dir}: its newest checkpoint is at step {state.step}, past --steps {steps}; "
                         "ask for at least as many steps, or use another --out")
    trainer.accelerator.load_state(str(path))
    log.info("train-probe: resuming from %s (step %d)", path, state.step)
    return state


def run_steps(trainer: Trainer, state: TrainState, settings: ProbeSettings, model_dir: Path) -> TrainState:
    """Train from `state.step` to `settings.steps`, checkpointing every `checkpoint_every` and at the end."""
    acc, unet, opt = trainer.accelerator, trainer.unet, trainer.optimizer
    batches = trainer.stream.batches(state.position)
    while state.step < settings.steps:
        position, batch = next(batches)
        gen = step_generator(settings.seed, state.step)
        with acc.autocast():
            value = loss(unet, trainer.frozen, batch, gen, settings.conditioning_dropout)
        acc.backward(value)
        acc.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step, state.position = state.step + 1, position
        state.losses.append(float(value.detach()))
        state.samples_seen += int(batch["input_ids"].shape[0])
        if state.step % settings.checkpoint_every == 0 or state.step == settings.steps:
            save(acc, model_dir, state)
        if state.step % 10 == 0 or state.step == settings.steps:
            log.info("train-probe: step %d/%d loss %.4f", state.step, settings.steps, state.losses[-1])
    return state


def write_pipeline(trainer: Trainer, base: BaseModel, model_dir: Path) -> None:
    """MODEL as a diffusers StableDiffusionInstructPix2PixPipeline folder (safetensors)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    unet = trainer.accelerator.unwrap_model(trainer.unet).eval()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(model_dir), safe_serialization=True)


def versions() -> dict[str, str]:
    """The library versions the probe was trained with."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("editgen", "torch", "diffusers", "transformers", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


def probe_record(out: str, split: TrainSplit, base: BaseModel, settings: ProbeSettings, resolution: int,
                 state: TrainState, device: str) -> dict[str, Any]:
    """MODEL/probe.json: what was trained, on what, how, and the loss per step."""
    return {"format": PROBE_FORMAT, "data": redact_url(out), "generation": split.generation,
            "train_samples": split.samples, "train_shards": len(split.urls), "base_model": base.model,
            "base_model_path": base.path, "model_edits": base.model_edits, "steps": state.step,
            "samples_seen": state.samples_seen, "epochs": round(state.samples_seen / split.samples, 4),
            "settings": {**asdict(settings), "resolution": resolution}, "device": device,
            "versions": versions(), "loss": state.losses}


def identity(split: TrainSplit, cfg: EditgenConfig, settings: ProbeSettings, resolution: int) -> dict[str, Any]:
    """What a checkpoint's run trained with (all but --steps, --checkpoint-every and precision). The data is
    its shard generation (a function of the config and input: OUT spelt another way, or moved, is the same)."""
    return {"generation": split.generation, "train_samples": split.samples, "base_model": cfg.render.model,
            "model_edits": cfg.render.model_dump(mode="json", include={"model_edits", "model_edit_lambda",
                                                                       "model_edit_preserve"}),
            "seed": settings.seed, "batch_size": settings.batch_size, "lr": settings.lr,
            "resolution": resolution, "conditioning_dropout": settings.conditioning_dropout,
            "shuffle_buffer": settings.shuffle_buffer}


def train_probe(out: str, split: TrainSplit, cfg: EditgenConfig, model_dir: Path,
                settings: ProbeSettings) -> dict[str, Any]:
    """Train (or resume) the probe into `model_dir`; returns probe.json's content."""
    resolution = settings.resolution or default_resolution(cfg)
    check_run(model_dir, identity(split, cfg, settings, resolution))
    base = load_base(cfg)
    trainer = prepare(base, split, settings, resolution)
    state = run_steps(trainer, resume(trainer, model_dir, settings.steps), settings, model_dir)
    (model_dir / PROBE_FILE).unlink(missing_ok=True)
    write_pipeline(trainer, base, model_dir)
    record = probe_record(out, split, base, settings, resolution, state, str(trainer.accelerator.device))
    tmp = model_dir / f".{PROBE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, model_dir / PROBE_FILE)
    return record
