"""``editgen pair`` / ``python -m cli.pair`` end to end with the tiny profile."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from editgen.cli import pair as pair_cli

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--profile", "tiny", "--prompt", "a photo of a cat on a bench", "--edit-prompt", "a photo of a dog on a bench"]


def _env(cache: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, EDITGEN_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=path)


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "editgen.cli.pair", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("editgen-cache")


def test_cli_writes_pair(cache, tmp_path):
    out = tmp_path / "pair"
    args = [
        *BASE,
        "--blend-words",
        "cat,dog",
        "--blend-threshold",
        "0.9",
        "--blend-downscale",
        "1",
        "--reweight",
        "dog=1.5",
        "--steps",
        "4",
        "--seed",
        "11",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    proc = _cli(args, cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("input.png", "edited.png", "mask.png"):
        with Image.open(out / name) as im:
            assert im.size == (64, 64)
    params = json.loads((out / "params.json").read_text())
    assert params["seed"] == 11 and params["steps"] == 4 and params["modes"] == ["replace"]
    assert params["edits"][0]["blend"]["words"] == ["cat", "dog"] and params["edits"][0]["reweight"] == {"dog": 1.5}
    assert params["profile"] == "tiny" and (cache / "tiny-sd" / "model_index.json").exists()


@pytest.mark.parametrize("bad", [["--mode", "teleport"], ["--cross-replace", "1.5"]])
def test_cli_bad_argument_exits_2_with_one_line(cache, tmp_path, bad):
    proc = _cli([*BASE, *bad, "--out", str(tmp_path / "x")], cache)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    pair_cli.add_arguments(parser)
    return pair_cli.main(parser.parse_args(argv))


@pytest.mark.parametrize(
    "bad",
    [
        ["--reweight", "dog"],
        ["--reweight", "dog=lots"],
        ["--size", "abc"],
        ["--self-replace", "0.9,0.1"],
        ["--self-max-res", "big"],
        ["--steps", "0"],
        ["--blend-words", "cat", "--blend-threshold", "2"],
        ["--cross-replace-word", "dog"],
        ["--blend-words", "cat", "--blend-downscale", "0"],
    ],
)
def test_main_rejects_bad_values(tmp_path, capsys, bad):
    assert _main([*BASE, *bad, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("editgen pair: error:")


def test_main_words_checked_against_tokenizer(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDITGEN_CACHE", str(cache))
    argv = [*BASE, "--blend-words", "horse", "--device", "cpu", "--out", str(tmp_path / "x")]
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "horse" in err[0]
    assert _main(["--profile", "tiny", "--prompt", "a cat", "--out", str(tmp_path / "y")]) == 2  # no edit prompt


def test_main_truncated_edit_exits_2(cache, tmp_path, capsys, monkeypatch):
    """An edit past the 77-token truncation would write two identical images: one error line instead."""
    monkeypatch.setenv("EDITGEN_CACHE", str(cache))
    long = "a cat " + "on the grass " * 26
    argv = ["--profile", "tiny", "--prompt", long + "with a red ball", "--edit-prompt", long + "with a blue ball",
            "--device", "cpu", "--out", str(tmp_path / "x")]
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "77-token truncation" in err[0], err
    assert not (tmp_path / "x").exists()
    blend = [*BASE[:2], "--prompt", long + "with a ball", "--edit-prompt", long.replace("cat", "dog") + "with a ball",
             "--blend-words", "ball", "--device", "cpu", "--out", str(tmp_path / "y")]
    assert _main(blend) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['ball'] lie past the 77-token truncation" in err[0], err


def test_pair_image_edits_a_real_photo(cache, tmp_path, capsys, monkeypatch):
    """--image (a file and a URL of the tests' image server): input is the resized photo, reconstruction
    and edit are written, params regenerate the images with the input file (issue 13 item 6)."""
    import numpy as np

    from editgen.engines.regenerate import regenerate
    from editgen.sources.image import prepare_image
    from tests.image_server import ImageServer, encode, gradient

    monkeypatch.setenv("EDITGEN_CACHE", str(cache))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(gradient(96, 80, seed=2), "JPEG", quality=95))
    out = tmp_path / "real"
    argv = [*BASE, "--image", str(photo), "--steps", "3", "--inversion", "null_text", "--inner-steps", "2",
            "--mask", "diffedit", "--device", "cpu", "--out", str(out)]
    assert _main(argv) == 0, capsys.readouterr().err
    files = {p.name for p in out.iterdir()}
    assert files == {"input.png", "reconstruction.png", "edited.png", "mask.png", "params.json"}
    from editgen.pipeline.settings.fetch import FetchConfig

    want = prepare_image(photo.read_bytes(), FetchConfig(encode_format="png", min_side=8), (64, 64))
    got = np.asarray(Image.open(out / "input.png"))
    assert np.array_equal(got, np.asarray(Image.open(__import__("io").BytesIO(want.data)).convert("RGB")))
    params = json.loads((out / "params.json").read_text())
    assert params["real_source"]["inversion"]["method"] == "null_text" and "psnr" in params["reconstruction"]
    again = regenerate(params, device="cpu", image=(out / "input.png").read_bytes())
    assert again.edited_image == (out / "edited.png").read_bytes()
    with ImageServer() as server:
        assert _main([*BASE, "--image", server.url("photo.png"), "--steps", "2", "--device", "cpu",
                      "--out", str(tmp_path / "url")]) == 0
        assert _main([*BASE, "--image", server.url("missing.png"), "--steps", "2", "--device", "cpu",
                      "--out", str(tmp_path / "404")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fetch_http_error" in err[0], err
    assert _main([*BASE, "--image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "n")]) == 2
    assert _main([*BASE, "--image", str(photo), "--scheduler", "euler", "--out", str(tmp_path / "e")]) == 2
    assert "must be ddim" in capsys.readouterr().err
