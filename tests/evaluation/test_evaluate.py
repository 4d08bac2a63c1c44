"""`editgen evaluate` (issue 24 item 3): the image-guidance curve, MagicBrush's metrics, the report's
versions, each eval-set format, and one line with exit 2 for bad input. The tiny IP2P (tiny.ip2p) at 64 px,
2 steps, 3 samples: the numbers mean nothing, their computation and bookkeeping are what is checked."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editgen.cli.main import main as editgen
from editgen.output.shard_writer import build_tar, sample_members
from editgen.pipeline.config import build_config, config_to_yaml
from tests.support import one_thread

GRID = "1.0,1.5,2.0"
FAST = ["--steps", "2", "--image-guidance", GRID]
TINY_SCORERS = ["--clip-model", "tiny-clip", "--clip-pretrained", "seed:0", "--dino-model", "tiny-dino"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def model():
    from editgen.tiny.ip2p import build_tiny_ip2p

    return str(build_tiny_ip2p())


def png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def row(i: int, **extra) -> dict:
    return {"id": f"r{i}", "candidate": 0, "input_image": png(i), "edited_image": png(100 + i),
            "instruction": f"make it {['red', 'blue', 'green'][i % 3]}", "caption": f"a photo number {i}",
            "edited_caption": f"a {['red', 'blue', 'green'][i % 3]} photo number {i}", "seed": i, **extra}


def eval_tar(path, n: int = 3) -> str:
    members = [m for i in range(n) for m in sample_members(row(i))[1]]
    path.write_bytes(build_tar(members))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = editgen(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tar_report(model, tmp_path_factory):
    """One evaluation of a 3-sample tar (targets and captions present), run through the CLI."""
    tmp = tmp_path_factory.mktemp("tar_eval")
    data = eval_tar(tmp / "eval-000000.tar")
    code = editgen(["evaluate", model, "--data", data, "--out", str(tmp / "report"), *FAST, *TINY_SCORERS])
    assert code == 0
    return tmp / "report", data


def test_curve_over_the_image_guidance_grid_with_versions(tar_report, model):
    report, _ = tar_report
    curve = json.loads((report / "curve.json").read_text())
    assert [p["image_guidance"] for p in curve["points"]] == [1.0, 1.5, 2.0]
    for p in curve["points"]:
        assert p["text_guidance"] == 7.5
        assert -1 <= p["clip_direction_similarity"] <= 1 and -1 <= p["clip_image_similarity"] <= 1
        assert p["n"] == {"clip_direction_similarity": 3, "clip_image_similarity": 3}
    assert len({p["clip_image_similarity"] for p in curve["points"]}) == 3  # the guidance changed the outputs
    assert (report / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curve["plot"] == "curve.png"
    prov = curve["provenance"]
    assert prov["model"]["id"] == model and len(prov["model"]["unet_sha256"]) == 64
    assert prov["clip"]["model"] == "tiny-clip" and prov["clip"]["pretrained"] == "seed:0" and prov["clip"]["open_clip"]
    assert prov["dino"]["model"] == "tiny-dino" and prov["dino"]["transformers"]
    assert all(prov["versions"][k] for k in ("torch", "diffusers", "transformers", "open_clip_torch"))
    assert prov["sampling"]["image_guidance"] == [1.0, 1.5, 2.0] and prov["sampling"]["steps"] == 2
    assert prov["preprocessing"]["input_sizes"] == ["64x64"] and prov["data"]["samples"] == 3
    assert prov["data"]["kind"] == "webdataset" and len(prov["data"]["read"][0]["sha256"]) == 64
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["provenance"] == prov and metrics["at_default"]["image_guidance"] == 1.5
    for r in metrics["per_image_guidance"]:
        assert 0 <= r["l1"] <= 1 and all(-1 <= r[k] <= 1 for k in ("clip_i", "dino", "clip_t"))
        assert r["n"] == {"l1": 3, "clip_i": 3, "dino": 3, "clip_t": 3}


def test_a_rerun_writes_identical_json(tar_report, model, tmp_path, capsys, monkeypatch):
    """The same bytes again, also when the samples are swept in chunks of 2 instead of all 3 at once."""
    monkeypatch.setattr("editgen.evaluation.run.CHUNK", 2)
    report, data = tar_report
    code, out, _ = run(capsys, model, "--data", data, "--out", str(tmp_path), *FAST, *TINY_SCORERS)
    assert code == 0 and "img guid" in out and "1.50*" in out
    for name in ("curve.json", "metrics.json", "curve.png"):
        assert (tmp_path / name).read_bytes() == (report / name).read_bytes(), name


def test_metrics_on_constructed_cases():
    """Identical images: L1 0, CLIP-I and DINO 1, CLIP image similarity 1; black vs white: L1 1; the output is
    compared at the target's size."""
    from editgen.evaluation.data import EvalSample
    from editgen.evaluation.metrics import CURVE_METRICS, TARGET_METRICS, Measurer, l1_distance, summarize
    from editgen.filters.pairs.clip_score import ClipScorer, ClipSpec
    from editgen.filters.pairs.dino_score import DinoScorer, DinoSpec

    black, white = Image.new("RGB", (32, 32)), Image.new("RGB", (64, 64), (255, 255, 255))
    assert l1_distance(black, Image.new("RGB", (32, 32))) == 0.0
    assert l1_distance(black, white) == 1.0  # resized to 64x64 first
    half = Image.new("RGB", (16, 16), (0, 0, 0))
    half.paste((255, 255, 255), (0, 0, 8, 16))
    assert l1_distance(half, Image.new("RGB", (16, 16))) == pytest.approx(0.5)
    samples = [EvalSample(f"k{i}", png(i), "edit", png(i), None, "a cat", "a dog") for i in range(2)]
    clip, dino = ClipScorer(ClipSpec("tiny-clip", "seed:0", "cpu")), DinoScorer(DinoSpec("tiny-dino", "cpu"))
    per = Measurer(samples, clip, dino).point([Image.open(io.BytesIO(png(i))) for i in range(2)])
    curve, target = summarize(per, CURVE_METRICS), summarize(per, TARGET_METRICS)
    assert curve["clip_image_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert target["l1"] == 0.0
    assert target["clip_i"] == pytest.approx(1.0, abs=1e-5) and target["dino"] == pytest.approx(1.0, abs=1e-5)
    # output == input: no image direction at all, so no direction similarity beyond numerical noise
    assert abs(curve["clip_direction_similarity"] or 0.0) < 1e-2 or math.isnan(curve["clip_direction_similarity"])
    other = summarize(Measurer(samples, clip, dino).point([Image.open(io.BytesIO(png(50 + i))) for i in range(2)]),
                      TARGET_METRICS)
    assert other["l1"] > 0.2 and other["clip_i"] < 1.0 - 1e-4 and other["dino"] < 1.0 - 1e-4


def test_parquet_without_captions_reports_direction_as_null(model, tmp_path, capsys):
    table = pa.table({"input_image": [png(1), png(2)], "instruction": ["add snow", "make it night"],
                      "target_image": [png(3), None]})
    pq.write_table(table, tmp_path / "eval.parquet")
    code, out, _ = run(capsys, model, "--data", str(tmp_path / "eval.parquet"), "--out", str(tmp_path / "r"),
                       "--steps", "2", "--image-guidance", "1.0,2.0", "--resolution", "32", *TINY_SCORERS)
    assert code == 0, out
    curve = json.loads((tmp_path / "r" / "curve.json").read_text())
    assert all(p["clip_direction_similarity"] is None for p in curve["points"])
    assert curve["plot"] is None and not (tmp_path / "r" / "curve.png").exists()
    assert "captions" in curve["notes"][0] and curve["provenance"]["preprocessing"]["input_sizes"] == ["32x32"]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["at_default"]["image_guidance"] == 1.0  # nearest to 1.5 (ties: the lower)
    assert all(r["n"]["l1"] == 1 and r["clip_t"] is None for r in metrics["per_image_guidance"])
    assert any("1 of 2" in n for n in metrics["notes"])


def _out_with(tmp_path, eval_section: bool, empty: bool = False) -> str:
    """An editgen OUT (tiny config) whose manifest has (or lacks) the held-out split, as the contract says."""
    out = tmp_path / "OUT"
    (out / "shards" / "gen-x").mkdir(parents=True)
    (out / "config.yaml").write_text(config_to_yaml(build_config(profile="tiny")))
    manifest = {"format": "editgen-webdataset/3", "generation": "gen-x", "samples": 0, "bytes": 0, "shards": []}
    if empty:
        manifest["eval"] = {"samples": 0, "bytes": 0, "shards": []}
    elif eval_section:
        tar = eval_tar(out / "shards" / "gen-x" / "eval-000000.tar", n=2)
        size = len(open(tar, "rb").read())
        manifest["eval"] = {"samples": 2, "bytes": size, "shards": [
            {"name": "shards/gen-x/eval-000000.tar", "bytes": size, "samples": 2, "sha256": "0" * 64}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def test_an_out_eval_split_with_the_runs_own_scorers(model, tmp_path, capsys):
    out = _out_with(tmp_path, eval_section=True)
    code, _, err = run(capsys, model, "--data", out, "--out", str(tmp_path / "r"), "--steps", "2",
                       "--image-guidance", "1.5", "--limit", "1", "--threads", "1")
    assert code == 0, err
    prov = json.loads((tmp_path / "r" / "metrics.json").read_text())["provenance"]
    assert prov["data"]["kind"] == "editgen-eval-split" and prov["data"]["samples"] == 1
    assert prov["data"]["generation"] == "gen-x" and prov["data"]["eval_samples"] == 2
    assert prov["clip"]["model"] == "tiny-clip" and prov["dino"]["model"] == "tiny-dino"  # the tiny run's
    assert prov["cpu_threads"] == 1


@pytest.mark.parametrize("case, expected", [
    ("no_eval_split", "no held-out eval split"),
    ("empty_eval_split", "eval split is empty"),
    ("no_instruction", "no instruction"),
    ("bad_image", "input_image does not decode"),
    ("bad_grid", "--image-guidance"),
    ("no_model", "not a diffusers pipeline folder"),
    ("parquet_columns", "no column instruction"),
    ("duplicate_key", "appears twice"),
    ("report_is_a_file", "is not a directory"),
    ("clip_without_weights", "--clip-pretrained"),
])
def test_bad_input_is_one_line_and_exit_2(case, expected, model, tmp_path, capsys):
    data, model_arg, extra, report = str(tmp_path / "eval.tar"), model, [], tmp_path / "r"
    if case in ("no_eval_split", "empty_eval_split"):
        data = _out_with(tmp_path, eval_section=False, empty=case == "empty_eval_split")
    elif case == "no_instruction":
        (tmp_path / "eval.tar").write_bytes(build_tar([("a.input.png", png(0))]))
    elif case == "bad_image":
        (tmp_path / "eval.tar").write_bytes(build_tar([("a.input.png", b"\x89PNG not really"), ("a.txt", b"x")]))
    elif case == "parquet_columns":
        data = str(tmp_path / "eval.parquet")
        pq.write_table(pa.table({"input_image": [png(0)]}), data)
    elif case == "duplicate_key":
        (tmp_path / "eval.tar").write_bytes(build_tar([*sample_members(row(0))[1], *sample_members(row(0))[1]]))
    else:
        eval_tar(tmp_path / "eval.tar", n=1)
        model_arg = str(tmp_path) if case == "no_model" else model
        extra = {"bad_grid": ["--image-guidance", "2.2:1.0:0.2"], "clip_without_weights": ["--clip-model", "RN50"]
                 }.get(case, [])
        if case == "report_is_a_file":
            report.write_text("not a folder")
    code, out, err = run(capsys, model_arg, "--data", data, "--out", str(report), *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err, err
