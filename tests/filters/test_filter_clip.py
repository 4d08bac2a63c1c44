"""CLIP scoring: the four formulas, the tiny random CLIP and the production loading path."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from editgen.filters.pairs.clip_score import ClipScorer, ClipSpec, clip_similarities  # noqa: E402
from editgen.tiny.clip import TINY_CLIP_NAME, ensure_tiny_clip  # noqa: E402
from editgen.tiny.synthetic import render_table  # noqa: E402


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def direct_scores(i0, i1, t0, t1) -> dict[str, np.ndarray]:
    """InstructPix2Pix's ClipSimilarity, written out in numpy."""
    i0, i1, t0, t1 = (_unit(np.asarray(x, dtype=np.float64)) for x in (i0, i1, t0, t1))
    return {
        "sim_0": _cos(i0, t0),
        "sim_1": _cos(i1, t1),
        "sim_direction": _cos(i1 - i0, t1 - t0),
        "sim_image": _cos(i0, i1),
    }


def test_formulas_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    embs = [torch.randn(7, 16, generator=g) * 3 for _ in range(4)]
    got = clip_similarities(*embs)
    want = direct_scores(*(e.numpy() for e in embs))
    for k, v in want.items():
        np.testing.assert_allclose(got[k].numpy(), v, atol=1e-5, err_msg=k)
    # identical images: sim_image is 1; the direction of a zero image change is 0, not NaN
    same = clip_similarities(embs[0], embs[0], embs[2], embs[3])
    np.testing.assert_allclose(same["sim_image"].numpy(), 1.0, atol=1e-5)
    assert torch.isfinite(same["sim_direction"]).all()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_clip")


def test_tiny_clip_is_deterministic_and_cached(tiny_dir, tmp_path):
    p = ensure_tiny_clip(tiny_dir, seed=0)
    assert p.suffix == ".safetensors"
    mtime = p.stat().st_mtime_ns
    assert ensure_tiny_clip(tiny_dir, seed=0) == p and p.stat().st_mtime_ns == mtime  # cached
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    assert hashlib.sha256(ensure_tiny_clip(tmp_path, seed=0).read_bytes()).hexdigest() == digest
    assert hashlib.sha256(ensure_tiny_clip(tmp_path, seed=1).read_bytes()).hexdigest() != digest


def test_scorer_matches_direct_computation(tiny_dir):
    """ClipScorer (tiny-clip, seed:0) against embeddings computed by hand through the same open_clip
    entry point production uses, with a local safetensors file."""
    scorer = ClipScorer(ClipSpec(TINY_CLIP_NAME, "seed:0", device="cpu", cache_dir=str(tiny_dir)), batch_size=5)
    table = render_table(n_pairs=4, candidates=3, size=40)
    got = scorer.score_table(table)

    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_CLIP_NAME, pretrained=str(ensure_tiny_clip(tiny_dir, 0))
    )
    model.eval()
    tok = open_clip.get_tokenizer(TINY_CLIP_NAME)
    from editgen.filters.pairs.clip_score import decode_image

    def img(col):
        x = torch.stack([preprocess(decode_image(b)) for b in table[col].to_pylist()])
        return model.encode_image(x).detach().numpy()

    with torch.no_grad():
        i0, i1 = img("input_image"), img("edited_image")
        t0 = model.encode_text(tok(table["caption"].to_pylist())).numpy()
        t1 = model.encode_text(tok(table["edited_caption"].to_pylist())).numpy()
    want = direct_scores(i0, i1, t0, t1)
    for k, v in want.items():
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], v, atol=2e-5, err_msg=k)
    assert scorer.precision == "fp32" and scorer.spec.model_id() == "tiny-clip/seed:0"


def test_undecodable_image_scores_nan(tiny_dir):
    scorer = ClipScorer(ClipSpec(TINY_CLIP_NAME, "seed:0", device="cpu", cache_dir=str(tiny_dir)))
    t = render_table(n_pairs=1, candidates=3, size=32)
    imgs = t["edited_image"].to_pylist()
    imgs[1] = b"not an image"
    s = scorer.score(t["input_image"].to_pylist(), imgs, t["caption"].to_pylist(), t["edited_caption"].to_pylist())
    assert np.isnan(s["sim_direction"][1]) and np.isfinite(s["sim_direction"][[0, 2]]).all()


def test_cache_key_depends_on_model_and_precision():
    a = ClipSpec("ViT-L-14", "openai", device="cpu")
    assert a.cache_key() == ClipSpec("ViT-L-14", "openai", device="cpu").cache_key()
    assert a.cache_key() != ClipSpec("ViT-B-32", "openai", device="cpu").cache_key()
    assert a.cache_key() != ClipSpec("ViT-L-14", "openai", device="cpu", precision="fp16").cache_key()
    assert a.resolved_precision() == "fp32"


def test_half_precision_path_matches_fp32(tiny_dir):
    """fp16 (the GPU default) feeds open_clip's input dtype; scores stay close to fp32."""
    t = render_table(n_pairs=2, candidates=2, size=32)
    ref = ClipScorer(ClipSpec(TINY_CLIP_NAME, "seed:0", device="cpu", cache_dir=str(tiny_dir))).score_table(t)
    half = ClipScorer(ClipSpec(TINY_CLIP_NAME, "seed:0", device="cpu", precision="fp16",
                               cache_dir=str(tiny_dir))).score_table(t)
    for k in ref:
        np.testing.assert_allclose(half[k], ref[k], atol=0.02, err_msg=k)
