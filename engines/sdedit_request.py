"""What one SDEdit candidate renders, read from its record (`editgen.sdedit/1`), and its UNet row-steps.

Torch-free at import: the engine (engines/sdedit.py) and its renderer (engines/sdedit_render.py) both read records
through it; docs/engines/sdedit.md has the record's keys and the row-steps formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from editgen.engines.record import CandidateRecord

GENERATED, REAL = "generated", "real"


@dataclass(frozen=True)
class SDEditRequest:
    """What one SDEdit candidate renders: read from (and only from) its record."""

    source_prompt: str
    edit_prompt: str
    seed: int  # the CPU generator of the edit's noise (its 2nd draw) and of a stochastic sampler's noise
    steps: int
    scheduler: str
    guidance: float  # CFG scale of the denoising under edit_prompt
    strength: float  # t0: int(steps x t0) of the schedule's last steps are re-run
    height: int
    width: int
    negative_prompt: str | None
    source: Mapping[str, Any]  # {kind: generated, seed, guidance, shared_by} | {kind: real, pixels_sha256}

    @classmethod
    def of(cls, record: CandidateRecord) -> SDEditRequest:
        """The request a record stands for (KeyError / ValueError name what is missing or wrong)."""
        p = record.params
        if not isinstance(p.get("source"), Mapping):
            raise ValueError(f"sdedit record source: expected an object, got {p.get('source')!r}")
        source = dict(p["source"])
        if source.get("kind") not in (GENERATED, REAL):
            raise ValueError(f"sdedit record source kind {source.get('kind')!r}: expected generated or real")
        strength = float(p["strength"])
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"sdedit record strength {strength}: expected 0 <= strength <= 1")
        return cls(str(p["source_prompt"]), str(p["edit_prompt"]), int(record.seed), int(p["steps"]),
                   str(p["scheduler"]), float(p["guidance"]), strength, int(p["height"]), int(p["width"]),
                   p.get("negative_prompt"), source)

    @property
    def generated(self) -> bool:
        return self.source["kind"] == GENERATED

    def denoise_steps(self) -> int:
        """Steps of the schedule re-run under the edited caption: diffusers' img2img `int(steps x strength)`."""
        return min(int(self.steps * self.strength), self.steps)

    def row_steps(self) -> float:
        """UNet row-steps of this candidate (docs/engines/sdedit.md): its share of a generated source's rows plus
        the partial schedule's."""
        from editgen.p2p.compute import unet_evals

        evals = unet_evals(self.scheduler, self.steps)
        n = self.denoise_steps()
        edit = 0 if n == 0 else evals - (self.steps - n)
        total = float(halves(self.guidance) * edit)
        if self.generated:
            total += halves(float(self.source["guidance"])) * evals / int(self.source.get("shared_by", 1))
        return total


def halves(guidance: float) -> int:
    """Rows per prompt per UNet evaluation: 2 with classifier-free guidance (a scale above 1), else 1."""
    return 2 if guidance > 1.0 else 1
