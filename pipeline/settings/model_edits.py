"""What a closed-form model edit says, as typed, validated records (config, CLI and JSON share them).

The kinds follow TIME (Orgad et al., 2023) and Unified Concept Editing (Gandikota et al., 2024):
``time`` makes an under-specified prompt behave like a specific one, ``erase`` maps a concept onto a
neutral anchor, ``debias`` maps a concept onto a weighted mix of attribute prompts. ``forget`` is gradient based:
Forget-Me-Not's attention re-steering (Zhang et al., 2023), for concepts a closed form handles badly.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from editgen.pipeline.settings.base import StrictTypes


class _Edit(StrictTypes):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # a NaN weight or λ solves to NaN


class TimeEdit(_Edit):
    """Source prompt's tokens take the projections of the aligned destination tokens."""

    kind: Literal["time"] = "time"
    source: str = Field(min_length=1, description="under-specified prompt, e.g. 'a pack of roses'")
    destination: str = Field(min_length=1, description="specific prompt containing the source, e.g. "
                             "'a pack of blue roses'")


class EraseEdit(_Edit):
    """The concept's tokens take the anchor's projections (an empty anchor: the empty prompt's)."""

    kind: Literal["erase"] = "erase"
    concept: str = Field(min_length=1)
    anchor: str = ""


class DebiasEdit(_Edit):
    """The concept's tokens take a weighted mix of the attribute prompts' projections."""

    kind: Literal["debias"] = "debias"
    concept: str = Field(min_length=1, description="e.g. 'a doctor'")
    attributes: list[str] = Field(min_length=1, description="e.g. ['a male doctor', 'a female doctor']")
    weights: list[float] | None = Field(None, description="one per attribute, >= 0; default equal shares")

    @model_validator(mode="after")
    def _weights(self) -> DebiasEdit:
        if any(not a.strip() for a in self.attributes):
            raise ValueError("debias attributes must not be empty")
        if self.weights is not None:
            if len(self.weights) != len(self.attributes):
                raise ValueError(f"debias of {self.concept!r}: {len(self.weights)} weights for "
                                 f"{len(self.attributes)} attributes")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"debias of {self.concept!r}: weights must be >= 0 and not all 0")
        return self

    def shares(self) -> list[float]:
        """Weights normalised to sum to 1 (equal shares by default)."""
        w = self.weights or [1.0] * len(self.attributes)
        return [x / sum(w) for x in w]


class ForgetEdit(_Edit):
    """Forget-Me-Not: optimise the cross-attention K/V projections so the concept's tokens get no attention,
    over images the model draws of the concept. Deterministic (seeded, fixed threads) so it reproduces."""

    kind: Literal["forget"] = "forget"
    concept: str = Field(min_length=1, description="prompt of the concept to forget, e.g. 'a cat'")
    steps: int = Field(35, ge=1, le=10_000, description="Adam steps")
    lr: float = Field(2e-5, gt=0, le=1.0, description="Adam learning rate (on the raw K/V weights)")
    images: int = Field(4, ge=1, le=64, description="images of the concept the model draws first")
    image_steps: int = Field(20, ge=1, le=200, description="sampler steps per concept image")
    size: int | None = Field(None, ge=8, le=2048, description="concept image side (default: the model's)")
    keep: float = Field(0.0, ge=0, le=1e6, description="weight of a drift penalty (0: plain Forget-Me-Not) "
                        "on the projections of the concept prompt's other tokens and of render.model_edit_preserve")
    seed: int = Field(0, ge=0, description="seeds the concept images, timesteps and noise")
    threads: int = Field(1, ge=1, le=256, description="CPU threads of the optimisation (fixed: float sums "
                         "depend on it, and the edited weights must reproduce)")

    @field_validator("concept")
    @classmethod
    def _concept(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the concept to forget must not be empty")
        return value


ClosedFormEdit = TimeEdit | EraseEdit | DebiasEdit
ModelEdit = Annotated[TimeEdit | EraseEdit | DebiasEdit | ForgetEdit, Field(discriminator="kind")]


class EditSet(_Edit):
    """Everything one edit set needs: the edits, λ, and the prompts the closed form must not move."""

    edits: list[ModelEdit] = Field(default_factory=list)
    lam: float = Field(0.1, gt=0, description="λ: pull towards the old weights")
    preserve: list[str] = Field(default_factory=list)

    def describe(self) -> dict[str, object]:
        """JSON-ready form recorded in params, manifests and the edit-model folder."""
        return {
            "edits": [e.model_dump(exclude_none=True) for e in self.edits],
            "lambda": self.lam,
            "preserve": list(self.preserve),
        }

    def closed_form(self) -> list[ClosedFormEdit]:
        """The edits solved jointly in closed form (applied first; forget edits follow in order)."""
        return [e for e in self.edits if not isinstance(e, ForgetEdit)]

    def forgets(self) -> list[ForgetEdit]:
        return [e for e in self.edits if isinstance(e, ForgetEdit)]


#: Where `editgen run` keeps the report of its model edits (OUT/model_edits/REPORT.json + report.html): one
#: name for the writer (cli/edit_model.py), `editgen status`, export-hf and the dataset card.
RUN_REPORT_DIR = "model_edits"
REPORT_JSON = "REPORT.json"
REPORT_HTML = "report.html"


class EditReportConfig(_Edit):
    """What the report of a model edit renders and when it flags a preserved prompt as moved too far.

    The defaults are starting points for real models (not calibrated here: no hub). A prompt is flagged
    when any of its numbers crosses its bound."""

    neutral: bool = Field(True, description="also render the bundled neutral prompts (prompts/model_edit_neutral.txt)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="one image per prompt and seed")
    steps: int = Field(20, ge=1, le=200, description="sampler steps per image")
    guidance: float = Field(7.5, ge=0, le=50)
    size: int | None = Field(None, ge=8, le=2048, description="image side (default: the model's)")
    min_clip_image: float = Field(0.85, ge=-1, le=1, description="flag below: CLIP image similarity before/after")
    min_ssim: float = Field(0.5, ge=-1, le=1, description="flag below: SSIM before/after")
    max_pixel_change: float = Field(0.15, ge=0, le=1, description="flag above: mean |before - after| in [0, 1]")
