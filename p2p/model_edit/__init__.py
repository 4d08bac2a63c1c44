"""Closed-form edits of the render model's cross-attention (TIME, erase, debias); see docs/model_edits.md."""

from p2p.model_edit.solve import EditReport, apply_edits, closed_form, cross_projections, weights_checksum
from p2p.model_edit.spec import DebiasEdit, EditSet, EraseEdit, ModelEdit, TimeEdit
from p2p.model_edit.targets import EditError, align, build_rows, embed

__all__ = [
    "DebiasEdit", "EditError", "EditReport", "EditSet", "EraseEdit", "ModelEdit", "TimeEdit", "align",
    "apply_edits", "build_rows", "closed_form", "cross_projections", "embed", "weights_checksum",
]
