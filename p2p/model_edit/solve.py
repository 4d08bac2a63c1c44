"""The closed form, applied to every cross-attention key and value projection of a UNet.

For each ``W`` in {W_K, W_V} of every ``attn2``::

    W = (λ W_old + Σ_i v*_i c_iᵀ)(λ I + Σ_i c_i c_iᵀ)⁻¹,   v*_i = W_old c*_i

computed as ``W_old + (V* - C W_oldᵀ)ᵀ (λ I_n + C Cᵀ)⁻¹ C`` (the push-through identity): the same
matrix, but the solve is n x n (n = constrained tokens, tens to hundreds) and is shared by every layer,
instead of d x d per layer (d = 2048 for SDXL). Float64 throughout; the result is written back in the
layer's dtype.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from editgen.p2p.model_edit.targets import EditError, Rows, build_rows
from editgen.pipeline.settings.model_edits import EditSet


def closed_form(w_old: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lam: float) -> torch.Tensor:
    """Minimiser of Σ‖W c_i − v_i‖² + λ‖W − W_old‖²_F (float64). ``keys`` (n, d), ``values`` (n, out)."""
    w = w_old.to(torch.float64)
    c = keys.to(w.device, torch.float64)
    v = values.to(w.device, torch.float64)
    gram = c @ c.T + lam * torch.eye(c.shape[0], dtype=torch.float64, device=w.device)
    k = torch.linalg.solve(gram, c)  # (λ I_n + C Cᵀ)⁻¹ C
    return w + (v - c @ w.T).T @ k


def cross_projections(unet: Any) -> Iterator[tuple[str, torch.nn.Linear]]:
    """(name, layer) of every cross-attention key/value projection, in module order."""
    unet = getattr(unet, "_orig_mod", unet)
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            for part in ("to_k", "to_v"):
                yield f"{name}.{part}", getattr(module, part)


def weights_checksum(unet: Any) -> str:
    """sha256 over the names and raw bytes of every cross-attention K/V weight (16 hex digits)."""
    h = hashlib.sha256()
    for name, layer in cross_projections(unet):
        h.update(name.encode())
        h.update(layer.weight.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class EditReport:
    """What an applied edit set did: recorded with every rendered pair and beside an edited model."""

    edits: EditSet
    checksum: str
    layers: int
    rows: int
    seconds: float
    forgets: list[dict[str, object]] = field(default_factory=list)  # ForgetResult.describe() of each

    def describe(self) -> dict[str, object]:
        return {**self.edits.describe(), "checksum": self.checksum, "layers": self.layers, "rows": self.rows}


def apply_rows(unet: Any, rows: Rows, lam: float) -> int:
    """Replace every cross-attention W_K / W_V by the closed form for ``rows``; returns the layer count."""
    n = 0
    with torch.no_grad():
        for _, layer in cross_projections(unet):
            w = layer.weight
            values = rows.targets.to(w.device) @ w.detach().to(torch.float64).T
            layer.weight.copy_(closed_form(w.detach(), rows.keys, values, lam).to(w.dtype))
            n += 1
    return n


def apply_edits(p2p: Any, edits: EditSet) -> EditReport:
    """Edit a loaded :class:`~p2p.generate.P2PPipeline` in place (raises ``EditError`` on a bad edit): the
    closed-form edits in one joint solve first, then each forget edit in order (p2p.model_edit.forget)."""
    from editgen.p2p.model_edit.forget import concept_positions, forget

    t0 = time.perf_counter()
    for edit in edits.forgets():
        try:
            concept_positions(p2p.tokenizer, edit.concept)  # a bad concept fails before any weight moves
        except ValueError as exc:
            raise EditError(str(exc)) from None
    n_rows = 0
    if edits.closed_form():
        rows = build_rows(p2p, edits.model_copy(update={"edits": edits.closed_form()}))
        apply_rows(p2p.pipe.unet, rows, edits.lam)
        n_rows = int(rows.keys.shape[0])
    results = [forget(p2p, edit, list(edits.preserve)).describe() for edit in edits.forgets()]
    layers = sum(1 for _ in cross_projections(p2p.pipe.unet))
    seconds = time.perf_counter() - t0
    return EditReport(edits, weights_checksum(p2p.pipe.unet), layers, n_rows, seconds, results)


def edit_set_from(described: dict[str, Any]) -> EditSet:
    """Inverse of :meth:`EditReport.describe` (extra keys such as the checksum are ignored)."""
    return EditSet(edits=described["edits"], lam=described["lambda"], preserve=described.get("preserve", []))


def reapply(p2p: Any, described: dict[str, Any]) -> EditReport:
    """Redo the edits a record names; a different weight checksum (other device, dtype or library
    versions) is an error rather than a silently different regeneration."""
    report = apply_edits(p2p, edit_set_from(described))
    if described.get("checksum") and report.checksum != described["checksum"]:
        raise ValueError(f"model edits reproduce checksum {report.checksum}, the record says "
                         f"{described['checksum']}: not the same weights")
    return report
