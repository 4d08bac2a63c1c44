"""What a closed-form model edit says, as typed, validated records (config, CLI and JSON share them).

The kinds follow TIME (Orgad et al., 2023) and Unified Concept Editing (Gandikota et al., 2024):
``time`` makes an under-specified prompt behave like a specific one, ``erase`` maps a concept onto a
neutral anchor, ``debias`` maps a concept onto a weighted mix of attribute prompts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

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


ModelEdit = Annotated[TimeEdit | EraseEdit | DebiasEdit, Field(discriminator="kind")]


class EditSet(_Edit):
    """Everything one closed-form solve needs: the edits, λ, and the prompts that must not move."""

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
