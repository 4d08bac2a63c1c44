"""`editgen train-probe` (issue 24 item 2) on synthetic shards and the tiny SD: the IP2P init, the dropout
scheme, a trained folder that diffusers loads and runs, resume == straight, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editgen.cli.main import main
from editgen.pipeline.config import build_config, config_to_yaml
from editgen.probe.step import dropout_masks
from tests.support import cli_env, error_line, filter_partitions, one_thread, write_shards

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    """A tiny run's published shards (synthetic filter output through the shard stage) and its config."""
    out = tmp_path_factory.mktemp("probe-out")
    write_shards(out, filter_partitions(out, parts=2, pairs=3, candidates=2, size=SIZE))
    cfg = build_config(profile="tiny", overrides=[f"render.height={SIZE}", f"render.width={SIZE}"])
    (out / "config.yaml").write_text(config_to_yaml(cfg))
    return out


def _train(out: Path, model: Path, steps: int, *extra: str) -> int:
    return main(["train-probe", str(out), "--out", str(model), "--steps", str(steps), "--batch-size", "2",
                 "--checkpoint-every", "2", *extra])


def _unet_weights(model: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))


def test_base_unet_reads_eight_channels_with_the_image_half_zero(run_out):
    from diffusers import UNet2DConditionModel

    from editgen.p2p.models import resolve_model
    from editgen.pipeline.config import out_config
    from editgen.pipeline.storage import Storage
    from editgen.probe.base import load_base

    cfg = out_config(Storage(str(run_out)))
    base = load_base(cfg)
    sd = UNet2DConditionModel.from_pretrained(resolve_model("tiny")[0], subfolder="unet", use_safetensors=True)
    w = base.unet.conv_in.weight
    assert base.unet.config.in_channels == 8 and w.shape[1] == 8
    assert torch.count_nonzero(w[:, 4:]) == 0
    assert torch.equal(w[:, :4], sd.conv_in.weight) and torch.equal(base.unet.conv_in.bias, sd.conv_in.bias)
    x, t, text = torch.randn(1, 4, 4, 4), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():  # step 0 predicts what SD does, whatever the image latent
        wide = base.unet(torch.cat([x, torch.randn(1, 4, 4, 4)], 1), t, text).sample
        assert torch.allclose(wide, sd(x, t, text).sample, atol=1e-5)


def test_conditioning_dropout_is_five_percent_each():
    text, image = dropout_masks(200_000, 0.05, torch.Generator().manual_seed(0))
    shares = [float(x.float().mean()) for x in (text & ~image, text & image, image & ~text)]
    assert all(abs(s - 0.05) < 0.003 for s in shares), shares
    assert abs(float((text | image).float().mean()) - 0.15) < 0.004


def test_three_steps_give_a_pipeline_diffusers_loads_and_runs(run_out, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    model = tmp_path / "probe"
    assert _train(run_out, model, 3) == 0
    record = json.loads((model / "probe.json").read_text())
    manifest = json.loads((run_out / "manifest.json").read_text())
    assert record["steps"] == 3 and len(record["loss"]) == 3 and all(v == v for v in record["loss"])
    assert record["train_samples"] == manifest["samples"] and record["generation"] == manifest["generation"]
    assert record["samples_seen"] == 6 and record["settings"]["resolution"] == SIZE
    assert {"torch", "diffusers", "accelerate"} <= set(record["versions"])
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(model), use_safetensors=True)
    assert pipe.unet.config.in_channels == 8
    assert torch.count_nonzero(pipe.unet.conv_in.weight[:, 4:]) > 0  # training moved the image channels
    image = pipe("make it red", image=Image.new("RGB", (SIZE, SIZE), (90, 120, 200)), num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pil").images[0]
    assert image.size == (SIZE, SIZE)


@pytest.fixture(scope="module")
def two_steps(run_out, tmp_path_factory) -> Path:
    """A probe trained 2 steps (checkpoint every 2): the interrupted run the resume tests go on from."""
    model = tmp_path_factory.mktemp("two-steps") / "probe"
    assert _train(run_out, model, 2) == 0
    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["run.json", "step-2"]
    return model


def test_resume_ends_at_the_weights_of_a_straight_run(run_out, two_steps, tmp_path, monkeypatch):
    import editgen.probe.train as train

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(run_out, straight, 4) == 0
    shutil.copytree(two_steps, resumed)  # stopped at step 2 (its checkpoint and folder written) ...
    steps_run = []
    real_loss = train.loss
    monkeypatch.setattr(train, "loss", lambda *a, **kw: steps_run.append(1) or real_loss(*a, **kw))
    assert _train(run_out, resumed, 4) == 0  # ... the same command with more steps goes on from step 2
    assert len(steps_run) == 2  # resumed, not retrained from step 0
    a, b = _unet_weights(straight), _unet_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.loads((m / "probe.json").read_text())["loss"] for m in (straight, resumed))
    assert la == lb and len(la) == 4


def test_a_killed_save_resumes_from_the_checkpoint_before(run_out, two_steps, tmp_path):
    """A half-written checkpoint (no state.json: the save died) is not resumed from."""
    model = tmp_path / "probe"
    shutil.copytree(two_steps, model)
    shutil.copytree(model / "checkpoints" / "step-2", model / "checkpoints" / "step-4")
    (model / "checkpoints" / "step-4" / "state.json").unlink()
    assert _train(run_out, model, 3) == 0
    assert json.loads((model / "probe.json").read_text())["steps"] == 3


def _cli(out: Path, model: Path, args: list[str], capsys) -> tuple[int, str]:
    """train-probe in this process: (exit code, stderr); a usage error exits through SystemExit."""
    argv = ["train-probe", str(out), "--out", str(model), "--batch-size", "2", *args]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case, expected", [
    ("no_manifest", "no published shards"),
    ("no_samples", "hold no samples"),
    ("other_seed", "trained with seed=0, not 1"),
    ("past_steps", "past --steps 1"),
    ("bad_steps", "--steps: expected a positive integer"),
    ("bad_lr", "--lr: expected a learning rate"),
    ("bad_resolution", "--resolution: expected a multiple of 8"),
    ("model_is_file", "--out is a file"),
    ("foreign_folder", "holding something other than a probe"),
    ("missing_out", "no such output directory"),
    ("eval_listed", "must not be trained on"),
    ("damaged_shard", "unreadable sample"),
])
def test_bad_input_is_one_line_and_exit_2(run_out, two_steps, tmp_path, capsys, case, expected):
    model, out, args = tmp_path / "probe", run_out, ["--steps", "2"]
    if case in ("no_manifest", "no_samples"):
        out = tmp_path / "other-run"
        out.mkdir()
        if case == "no_samples":
            manifest = json.loads((run_out / "manifest.json").read_text())
            (out / "manifest.json").write_text(json.dumps({**manifest, "samples": 0, "shards": []}))
    elif case in ("other_seed", "past_steps"):
        shutil.copytree(two_steps, model)
        args = ["--steps", "2", "--seed", "1"] if case == "other_seed" else ["--steps", "1"]
    elif case.startswith("bad_"):
        args = {"bad_steps": ["--steps", "0"], "bad_lr": ["--steps", "2", "--lr", "-1"],
                "bad_resolution": ["--steps", "2", "--resolution", "30"]}[case]
    elif case == "model_is_file":
        model.write_text("x")
    elif case == "foreign_folder":
        model.mkdir()
        (model / "notes.txt").write_text("x")
    elif case == "missing_out":
        out = tmp_path / "nowhere"
    elif case in ("eval_listed", "damaged_shard"):
        out = tmp_path / "other-run"
        shutil.copytree(run_out, out)
        manifest = json.loads((out / "manifest.json").read_text())
        first = out / manifest["shards"][0]["name"]
        if case == "damaged_shard":
            first.write_bytes(b"not a tar" * 100)
        else:
            eval_name = manifest["shards"][0]["name"].replace("edits-", "eval-")
            first.rename(out / eval_name)
            manifest["shards"][0]["name"] = eval_name
            (out / "manifest.json").write_text(json.dumps(manifest))
    code, err = _cli(out, model, args, capsys)
    assert code == 2 and expected in err and "\n" not in err and "Traceback" not in err, err


def test_the_command_fails_in_one_line_without_a_traceback(tmp_path):
    """The installed command, end to end: OUT without shards."""
    proc = subprocess.run([sys.executable, "-m", "editgen.cli.main", "train-probe", str(tmp_path), "--out",
                           str(tmp_path / "probe"), "--steps", "2"], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 2 and "no published shards" in error_line(proc)
