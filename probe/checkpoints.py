"""Resumable probe training: accelerate's `save_state` under MODEL/checkpoints/step-N, found again by a rerun.

A checkpoint is written to a hidden temporary folder (UNet weights as safetensors, AdamW state, RNG
states: accelerate loads them back with `weights_only=True`, never an arbitrary pickle), then
`state.json` (the step, the data stream's position, the loss curve so far), then renamed into place: a
`step-N` folder is complete or absent, so a run killed mid-save resumes from the one before. The two
newest are kept. `run.json` beside them records what the run trains with (the shard generation, base model, seed,
batch size, learning rate, resolution, dropout): a rerun that differs in any of these is refused rather than
resumed into a mixture (only --steps may change: more steps go on from the latest checkpoint).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editgen.pipeline.errors import InputError
from editgen.probe.data import Position

CHECKPOINTS = "checkpoints"
RUN = "run.json"
STATE = "state.json"
KEEP = 2
_STEP_DIR = re.compile(r"step-(\d+)")


@dataclass
class TrainState:
    """What a checkpoint adds to accelerate's state: how far training got."""

    step: int = 0
    position: Position = field(default_factory=Position)
    losses: list[float] = field(default_factory=list)
    samples_seen: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.position.epoch, "batch": self.position.batch,
                "losses": self.losses, "samples_seen": self.samples_seen}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(int(data["step"]), Position(int(data["epoch"]), int(data["batch"])),
                   [float(x) for x in data["losses"]], int(data["samples_seen"]))


def latest(model_dir: Path) -> tuple[Path, TrainState] | None:
    """The newest complete checkpoint (its folder and state), or None."""
    found = []
    root = model_dir / CHECKPOINTS
    for child in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.fullmatch(child.name)
        if m and (child / STATE).is_file():
            found.append((int(m[1]), child))
    if not found:
        return None
    _, path = max(found)
    try:
        return path, TrainState.from_json(json.loads((path / STATE).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path / STATE}: unreadable checkpoint state ({exc}); delete {path} to resume "
                         "from the one before") from None


def check_run(model_dir: Path, identity: dict[str, Any]) -> None:
    """Record what this run trains with, or refuse a MODEL whose checkpoints came from another run."""
    path = model_dir / CHECKPOINTS / RUN
    if path.is_file() and latest(model_dir) is not None:  # without a checkpoint there is nothing to mix
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable ({exc})") from None
        changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if changed:
            k = changed[0]
            raise InputError(f"{model_dir}: its checkpoints were trained with {k}={before.get(k)!r}, not "
                             f"{identity.get(k)!r}; rerun with the same settings to resume, or use another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN}.tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save(accelerator: Any, model_dir: Path, state: TrainState) -> Path:
    """accelerate's state + ours at step N, complete or not at all; older ones beyond KEEP removed."""
    root = model_dir / CHECKPOINTS
    final, tmp = root / f"step-{state.step}", root / f".step-{state.step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp), safe_serialization=True)
    (tmp / STATE).write_text(json.dumps(state.to_json()) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    steps = sorted(int(m[1]) for c in root.iterdir() if (m := _STEP_DIR.fullmatch(c.name)))
    for old in steps[:-KEEP]:
        shutil.rmtree(root / f"step-{old}", ignore_errors=True)
    return final
