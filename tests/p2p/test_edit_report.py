"""The model-edit report (p2p/model_edit/report.py): its numbers against an independent recomputation, and
a no-op edit that reports no movement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from editgen.filters.pairs.clip_score import ClipScorer, ClipSpec
from editgen.filters.pairs.outside_mask import ssim_map
from editgen.p2p.generate import RenderRequest, load_pipeline, render_one
from editgen.p2p.model_edit.report import build_report, flags, report_prompts
from editgen.p2p.model_edit.solve import apply_edits
from editgen.pipeline.settings.model_edits import EditReportConfig, EditSet, EraseEdit, TimeEdit
from editgen.prompts.builder import model_edit_neutral_prompts
from editgen.tiny.clip import TINY_CLIP_NAME
from editgen.tiny.sd import build_tiny_sd
from tests.support import one_thread

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
CFG = EditReportConfig(neutral=False, steps=2, size=32, seeds=[3])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = build_tiny_sd(tmp_path_factory.getbasetemp() / "tiny-sd", "sd")
    return load_pipeline(path, "cpu", "float32"), load_pipeline(path, "cpu", "float32")


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "tiny-clip"
    return ClipScorer(ClipSpec(TINY_CLIP_NAME, "seed:0", device="cpu", cache_dir=str(cache)))


def _pixels(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def _clip(scorer: ClipScorer, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return scorer.model.encode_image(scorer.preprocess(Image.fromarray(image))[None]).float()[0]


def test_report_numbers_equal_an_independent_recomputation(models, scorer):
    original, edited = models
    edits = EditSet(edits=[EraseEdit(concept="a cat", anchor="a dog")], preserve=["a red car"])
    apply_edits(edited, edits)
    report = build_report(original, edited, edits, CFG, scorer)
    assert [r["role"] for r in report.body["rows"]] == ["edit", "preserve"]
    row, before, after = report.body["rows"][0], report.before[0], report.after[0]
    req = RenderRequest(source="a cat", seed=3, steps=2, height=32, width=32)
    for model, image in ((original, before), (edited, after)):
        again = (np.clip(render_one(model, req).images[0], 0, 1) * 255).round().astype(np.uint8)
        assert np.array_equal(again, image)
    i0, i1 = _clip(scorer, before), _clip(scorer, after)
    assert row["clip_image"] == pytest.approx(float(F.cosine_similarity(i0, i1, dim=0)), abs=1e-6)
    assert row["ssim"] == pytest.approx(float(ssim_map(_pixels(before), _pixels(after), 11).double().mean()), abs=1e-9)
    diff = np.abs(before.astype(int) - after.astype(int)).sum() / before.size / 255
    assert row["pixel_change"] == pytest.approx(diff, abs=1e-12) and row["pixel_change"] > 0
    with torch.no_grad():
        texts = scorer.model.encode_text(scorer.tokenizer(["a dog", "a cat"])).float()
    for kind, text, t in (("toward", "a dog", texts[0]), ("away", "a cat", texts[1])):
        for when, emb in (("before", i0), ("after", i1)):
            assert row[kind][text][when] == pytest.approx(float(F.cosine_similarity(emb, t, dim=0)), abs=1e-6)
    strict = CFG.model_copy(update={"min_clip_image": 1.0, "min_ssim": 1.0, "max_pixel_change": 0.0})
    assert len(flags(report.body["rows"][1], strict)) == 3  # a preserved prompt that moved is flagged


def test_a_no_op_edit_reports_zero_movement(models, scorer):
    original, _ = models
    fresh = load_pipeline(original.model, "cpu", "float32")
    edits = EditSet(edits=[TimeEdit(source="a pack of roses", destination="a pack of blue roses")], lam=1e16,
                    preserve=["a dog"])
    apply_edits(fresh, edits)  # change ~ ‖c‖²/λ: below float32 rounding, the weights stay as they were
    report = build_report(original, fresh, edits, CFG.model_copy(update={"neutral": True}), scorer)
    rows = report.body["rows"]
    assert len(rows) == 2 + len(model_edit_neutral_prompts()) and report.body["preserved"]
    for row in rows:
        assert row["pixel_change"] == 0 and row["ssim"] == pytest.approx(1, abs=1e-6)
        assert row["clip_image"] == pytest.approx(1, abs=1e-6) and not row["flags"]
    assert report_prompts(EditSet(edits=edits.edits, preserve=["a pack of roses"]), CFG)[0].role == "edit"
