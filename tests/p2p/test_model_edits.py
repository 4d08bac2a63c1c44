"""Closed-form model edits (TIME, erase, debias, preservation) on the tiny SD and SDXL models."""

from __future__ import annotations

import pytest
import torch

from editgen.p2p.model_edit.solve import apply_edits, closed_form, cross_projections
from editgen.p2p.model_edit.targets import EditError, build_rows, embed
from editgen.pipeline.settings.model_edits import DebiasEdit, EditSet, EraseEdit, TimeEdit
from tests.support import one_thread, tiny_pipeline

#: Worst-layer reduction asserted at λ = 0.1 (the issue's 90%). The SD variant here has a 64-wide text
#: encoder: the `tiny` profile's 32-wide random encoder gives nearly collinear token embeddings (smallest
#: Gram eigenvalue ~3 λ) and reaches only 0.84-0.875; at 64 (as tiny SDXL's concatenated 2 x 32) SD
#: measures 0.97 and SDXL 0.94. docs/model_edits.md.
MIN_REDUCTION = 0.90
DOCTOR = TimeEdit(source="a photo of a doctor", destination="a photo of a female doctor")
ROSES = TimeEdit(source="a pack of roses", destination="a pack of blue roses")
PRESERVE = ["a photo of a cat", "a red car on a street"]

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def pipe(request, tmp_path_factory):
    return tiny_pipeline(tmp_path_factory, request.param, text_width=64 if request.param == "sd" else 32)


@pytest.fixture
def fresh(pipe):
    """The module's pipeline, its cross-attention weights restored after the test edits them."""
    saved = {n: layer.weight.detach().clone() for n, layer in cross_projections(pipe.pipe.unet)}
    yield pipe
    with torch.no_grad():
        for n, layer in cross_projections(pipe.pipe.unet):
            layer.weight.copy_(saved[n])


def _olds(p2p) -> dict[str, torch.Tensor]:
    return {n: layer.weight.detach().double().clone() for n, layer in cross_projections(p2p.pipe.unet)}


def _reduction(p2p, olds, rows) -> float:
    """Worst layer's 1 - ‖W c − W_old c*‖ / ‖W_old c − W_old c*‖ over the edit's source tokens."""
    worst = 1.0
    for n, layer in cross_projections(p2p.pipe.unet):
        w0, w1 = olds[n], layer.weight.detach().double()
        goal = rows.targets @ w0.T
        before = (rows.keys @ w0.T - goal).norm()
        worst = min(worst, float(1 - (rows.keys @ w1.T - goal).norm() / before))
    return worst


def test_solve_satisfies_the_normal_equations(pipe):
    rows = build_rows(pipe, EditSet(edits=[DOCTOR, ROSES], preserve=PRESERVE))
    _, layer = next(cross_projections(pipe.pipe.unet))
    w_old = layer.weight.detach().double()
    v = rows.targets @ w_old.T
    for lam in (0.1, 3.0):
        w = closed_form(w_old, rows.keys, v, lam)
        c = rows.keys
        lhs = w @ (lam * torch.eye(c.shape[1], dtype=torch.float64) + c.T @ c)
        rhs = lam * w_old + v.T @ c
        assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * float(rhs.abs().max()))


def test_huge_lambda_leaves_the_weights_unchanged(fresh):
    before = _olds(fresh)
    apply_edits(fresh, EditSet(edits=[DOCTOR], lam=1e16))  # change ~ ‖c‖²/λ: below float32 rounding
    for n, layer in cross_projections(fresh.pipe.unet):
        assert torch.equal(layer.weight.detach().double(), before[n])


def test_time_moves_source_tokens_onto_the_destination(fresh):
    olds = _olds(fresh)
    rows = build_rows(fresh, EditSet(edits=[DOCTOR]))
    report = apply_edits(fresh, EditSet(edits=[DOCTOR], lam=0.1))
    assert report.layers == len(olds) and report.rows == rows.keys.shape[0]
    assert _reduction(fresh, olds, rows) >= MIN_REDUCTION


def test_smaller_lambda_fits_tighter(pipe):
    rows = build_rows(pipe, EditSet(edits=[ROSES]))
    _, layer = next(cross_projections(pipe.pipe.unet))
    w0 = layer.weight.detach().double()
    goal = rows.targets @ w0.T
    err = [float((rows.keys @ closed_form(w0, rows.keys, goal, lam).T - goal).norm()) for lam in (1.0, 0.1, 1e-4)]
    before = float((rows.keys @ w0.T - goal).norm())
    assert err[0] > err[1] > err[2] and err[2] < 0.01 * before


def _length(p2p, prompt: str) -> int:
    return len(p2p.tokenizer(prompt)["input_ids"])


def _moved(p2p, olds, prompts) -> float:
    """Largest relative move ‖(W − W_old) c‖ / ‖W_old c‖ of any layer over the prompts' tokens."""
    c = torch.cat([embed(p2p, p)[: _length(p2p, p)] for p in prompts])  # BOS..EOS: what is preserved
    worst = 0.0
    for n, layer in cross_projections(p2p.pipe.unet):
        w0, w1 = olds[n], layer.weight.detach().double()
        worst = max(worst, float((c @ (w1 - w0).T).norm() / (c @ w0.T).norm()))
    return worst


def test_preserved_prompts_move_less_than_the_bound(fresh):
    olds = _olds(fresh)
    apply_edits(fresh, EditSet(edits=[DOCTOR, ROSES]))
    free = _moved(fresh, olds, PRESERVE)
    with torch.no_grad():
        for n, layer in cross_projections(fresh.pipe.unet):
            layer.weight.copy_(olds[n].float())
    apply_edits(fresh, EditSet(edits=[DOCTOR, ROSES], preserve=PRESERVE))
    kept = _moved(fresh, olds, PRESERVE)
    # stated bound: preserved tokens move < 5% (measured 3.3% SD, 3.2% SDXL; 15% / 25% unpreserved)
    assert kept < 0.05 and kept < free / 4, (kept, free)


def test_several_edits_equal_the_joint_closed_form(fresh):
    edits = EditSet(edits=[DOCTOR, ROSES, EraseEdit(concept="a painting by van gogh", anchor="a painting")],
                    lam=0.1, preserve=PRESERVE[:1])
    parts = [build_rows(fresh, EditSet(edits=[e])) for e in edits.edits]
    keep = embed(fresh, PRESERVE[0])[: _length(fresh, PRESERVE[0])]
    c = torch.cat([p.keys for p in parts] + [keep])
    t = torch.cat([p.targets for p in parts] + [keep])
    olds = _olds(fresh)
    apply_edits(fresh, edits)
    eye = torch.eye(c.shape[1], dtype=torch.float64)
    for n, layer in cross_projections(fresh.pipe.unet):
        w0 = olds[n]
        direct = torch.linalg.solve(0.1 * eye + c.T @ c, (0.1 * w0 + (t @ w0.T).T @ c).T).T  # A symmetric
        assert torch.allclose(layer.weight.detach().double(), direct, atol=1e-6, rtol=1e-5)


def test_erase_maps_the_concept_onto_the_anchor(fresh):
    edit = EraseEdit(concept="a painting by van gogh", anchor="a painting")
    rows = build_rows(fresh, EditSet(edits=[edit]))
    anchor = embed(fresh, "a painting")
    # "by van gogh" has no partner in the anchor: it and EOS take the anchor's EOS
    assert torch.equal(rows.targets[-4:], anchor[3:4].expand(4, -1))
    olds = _olds(fresh)
    apply_edits(fresh, EditSet(edits=[edit]))
    assert _reduction(fresh, olds, rows) >= MIN_REDUCTION


def test_debias_targets_are_the_weighted_mix(pipe):
    edit = DebiasEdit(concept="a doctor", attributes=["a male doctor", "a female doctor"], weights=[3, 1])
    rows = build_rows(pipe, EditSet(edits=[edit]))
    male, female = embed(pipe, "a male doctor"), embed(pipe, "a female doctor")
    # rows: BOS, a, doctor, EOS; "doctor" sits at 3 in both attributes (after male/female), EOS at 4
    assert torch.allclose(rows.targets[2], 0.75 * male[3] + 0.25 * female[3])
    assert torch.allclose(rows.targets[3], 0.75 * male[4] + 0.25 * female[4])


def test_unalignable_and_bad_edits_say_why(pipe):
    with pytest.raises(EditError, match="'roses' missing from the destination"):
        build_rows(pipe, EditSet(edits=[TimeEdit(source="a pack of roses", destination="a pack of tulips")]))
    with pytest.raises(EditError, match="changes nothing"):
        build_rows(pipe, EditSet(edits=[TimeEdit(source="a cat", destination="a cat")]))
    with pytest.raises(EditError, match="longer than"):
        build_rows(pipe, EditSet(edits=[EraseEdit(concept="cat " * 90)]))
