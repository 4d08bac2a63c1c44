"""`editgen edit-model`, `editgen pair` edit flags, the render actor's in-place edits, hash and manifest."""

from __future__ import annotations

import json

import pytest
import torch

from editgen.cli.main import main
from editgen.engines.p2p_records import render_records
from editgen.engines.runtime import Runtime
from editgen.output.manifest import read_manifest
from editgen.output.shard_writer import write_dataset
from editgen.p2p.generate import load_pipeline
from editgen.pipeline.config import build_config
from editgen.pipeline.runner import stage_hashes
from editgen.pipeline.storage import Storage
from editgen.stages.render import RenderStage
from editgen.tiny.sd import build_tiny_sd
from editgen.tiny.synthetic import filter_table, render_table
from tests.support import one_thread

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
EDITS = '[{kind: time, source: a pack of roses, destination: a pack of blue roses}, {kind: erase, concept: a cat}]'
FLAGS = ["--edit", "a pack of roses=>a pack of blue roses", "--erase", "a cat"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.getbasetemp() / "tiny-sd", "sd")


def _cfg(model, *extra: str):
    return build_config(profile="tiny", overrides=[f"render.model={model}", "render.device=cpu",
                                                    "render.dtype=float32", "render.steps=2", *extra])


def test_edit_model_folder_reproduces_the_in_actor_edit_bit_for_bit(tiny, tmp_path, capsys):
    out = tmp_path / "edited"
    assert main(["edit-model", "--model", str(tiny), *FLAGS, "--preserve", "a dog", "--out", str(out)]) == 0
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    meta = json.loads((out / "model_edits.json").read_text())
    stage = RenderStage(_cfg(tiny, f"render.model_edits={EDITS}", "render.model_edit_preserve=[a dog]"))
    stage.setup()
    assert stage.runtime.model.model_edits["checksum"] == meta["checksum"]
    baked = load_pipeline(out, "cpu", "float32")  # every weight, not only the edited ones
    for part in ("unet", "text_encoder", "vae"):
        ours, theirs = getattr(stage.runtime.pipeline.pipe, part).state_dict(), getattr(baked.pipe, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    row = {"id": "r0", "caption": "a pack of roses", "edited_caption": "a pack of red roses", "edit_kind": "refine"}
    rec = stage.engine_for(row).draw(row, 1)[0]
    assert rec.to_row()["model_edits"]["edits"][1] == {"kind": "erase", "concept": "a cat", "anchor": ""}
    first = render_records(stage.runtime.pipeline, [rec])[0]
    again = render_records(Runtime.for_record(rec.model, "cpu").pipeline, [rec])[0]  # re-applies the edits
    plain = render_records(load_pipeline(tiny, "cpu", "float32"), [rec])[0]
    assert first.edited_image == again.edited_image and first.edited_image != plain.edited_image
    via_folder = RenderStage(_cfg(out))  # render.model = the edit-model folder, no edits in the config
    via_folder.setup()
    rec2 = via_folder.engine_for(row).draw(row, 1)[0].to_row()
    assert rec2["model_edits_in_model"]["checksum"] == meta["checksum"] and "model_edits" not in rec2
    assert render_records(via_folder.runtime.pipeline, [via_folder.engine_for(row).draw(row, 1)[0]])[0].edited_image \
        == first.edited_image


def test_bad_edits_are_one_line_and_exit_2(tiny, tmp_path, capsys):
    cases = [
        (["--edit", "a pack of roses=>a pack of tulips"], "'roses' missing from the destination"),
        (["--edit", "no arrow here"], "SOURCE=>DESTINATION"),
        (["--anchor", "a dog"], "must follow --erase"),
        (["--debias", "a doctor"], "needs at least one --attribute"),
        (["--debias", "a doctor", "--attribute", "a nurse", "--weight", "-1"], "weights must be >= 0"),
        ([], "give at least one edit"),
    ]
    for flags, why in cases:
        code = main(["edit-model", "--model", str(tiny), *flags, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and why in err and err.count("\n") == 1, (flags, err)


def test_pair_accepts_the_edit_flags(tiny, tmp_path):
    out = tmp_path / "pair"
    args = ["pair", "--model", str(tiny), "--profile", "tiny", "--prompt", "a pack of roses", "--edit-prompt",
            "a pack of red roses", "--steps", "2", "--size", "64", "--device", "cpu", *FLAGS, "--out", str(out)]
    assert main(args) == 0
    params = json.loads((out / "params.json").read_text())
    assert [e["kind"] for e in params["model_edits"]["edits"]] == ["time", "erase"]
    assert main([*args[:-2], "--edit", "a cat=>a dog", "--out", str(out)]) == 2


def test_model_edits_are_part_of_the_render_hash_only():
    base = stage_hashes(_cfg("tiny"))
    edited = stage_hashes(_cfg("tiny", f"render.model_edits={EDITS}"))
    lam = stage_hashes(_cfg("tiny", f"render.model_edits={EDITS}", "render.model_edit_lambda=0.5"))
    assert edited["render"] != base["render"] != lam["render"] != edited["render"]
    assert edited["instruct"] == base["instruct"] and edited["ingest"] == base["ingest"]
    with pytest.raises(Exception, match="weights"):
        _cfg("tiny", "render.model_edits=[{kind: debias, concept: a doctor, attributes: [a], weights: [1, 2]}]")


def test_manifest_lists_the_edits(tmp_path):
    table = filter_table(render_table(3, 1, 16, seed=1), seed=1, keep_fraction=1.1)
    rows = table.to_pylist()
    edits = {"edits": [{"kind": "erase", "concept": "a cat", "anchor": ""}], "lambda": 0.1, "checksum": "ab12"}
    for r in rows:
        r["params"] = json.dumps({**json.loads(r.get("params") or "{}"), "model_edits": edits})
    write_dataset(Storage(str(tmp_path)), rows, samples_per_shard=100)
    assert read_manifest(Storage(str(tmp_path)))["model_edits"] == [{"applied": "model_edits", **edits}]


FORGET = "[{kind: forget, concept: a cat, steps: 3, lr: 0.01, images: 1, image_steps: 2, size: 32}]"
FORGET_FLAGS = ["--forget", "a cat", "--forget-steps", "3", "--forget-lr", "0.01", "--forget-images", "1",
                "--forget-image-steps", "2", "--forget-size", "32"]


def test_forget_edit_model_folder_reproduces_the_in_actor_edit(tiny, tmp_path, capsys):
    out = tmp_path / "forgot"
    report = ["--profile", "tiny", "--report", "--report-steps", "2", "--report-size", "32"]
    assert main(["edit-model", "--model", str(tiny), *FORGET_FLAGS, *report, "--out", str(out)]) == 0
    assert "concept attention mass" in capsys.readouterr().out
    body = json.loads((out / "REPORT.json").read_text())
    assert body["rows"][0]["prompt"] == "a cat" and body["rows"][0]["away"]["a cat"]["after"] is not None
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2 * len(body["rows"])
    meta = json.loads((out / "model_edits.json").read_text())
    assert meta["forget"][0]["mass_after"] < meta["forget"][0]["mass_before"]
    stage = RenderStage(_cfg(tiny, f"render.model_edits={FORGET}"))
    stage.setup()
    described = stage.runtime.model.model_edits
    assert described["checksum"] == meta["checksum"] and described["edits"] == meta["edits"]
    baked = load_pipeline(out, "cpu", "float32")
    ours, theirs = stage.runtime.pipeline.pipe.unet.state_dict(), baked.pipe.unet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    row = {"id": "r0", "caption": "a photo of a cat", "edited_caption": "a photo of a red cat", "edit_kind": "refine"}
    rec = stage.engine_for(row).draw(row, 1)[0]
    first = render_records(stage.runtime.pipeline, [rec])[0]
    again = render_records(Runtime.for_record(rec.model, "cpu").pipeline, [rec])[0]  # re-applies, checks checksum
    assert first.edited_image == again.edited_image


def test_bad_forget_settings_are_one_line_and_exit_2(tiny, tmp_path, capsys):
    cases = [
        (["--forget", "a cat", "--forget-lr", "nan"], "finite number"),
        (["--forget", "a cat", "--forget-lr", "inf"], "finite number"),
        (["--forget", "a cat", "--forget-lr", "0"], "greater than 0"),
        (["--forget", "a cat", "--forget-steps", "0"], "greater than or equal to 1"),
        (["--forget", "a cat", "--forget-steps", "two"], "expects an integer"),
        (["--forget", "  "], "must not be empty"),
        (["--forget-steps", "3"], "must follow --forget"),
        (["--forget", "cat " * 100, "--forget-steps", "1"], "longer than the text encoder"),
        (["--forget", "a cat", "--report", "--report-steps", "0"], "--report-steps: Input should be greater"),
    ]
    for flags, why in cases:
        code = main(["edit-model", "--model", str(tiny), *flags, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and why in err and err.count("\n") == 1, (flags, err)
    for bad, why in (("concept: ' '", "must not be empty"), ("concept: a cat, lr: .nan", "finite"),
                     ("concept: a cat, lr: .inf", "finite"), ("concept: a cat, steps: 0", "greater than")):
        with pytest.raises(Exception, match=why):
            _cfg("tiny", f"render.model_edits=[{{kind: forget, {bad}}}]")


def test_a_run_with_model_edits_writes_their_report_once(tiny, tmp_path):
    from editgen.cli.edit_model import write_run_report
    from editgen.cli.status import edit_report_state, render_table
    from editgen.pipeline.storage import Storage

    report = ["render.model_edit_report={neutral: false, steps: 2, size: 32}"]
    cfg = _cfg(tiny, "render.model_edits=[{kind: erase, concept: a cat}]", "render.model_edit_preserve=[a dog]",
               "filter.clip_model=tiny-clip", "filter.clip_pretrained=seed:0", *report)
    assert edit_report_state(Storage(str(tmp_path)), cfg) == {"report": str(tmp_path / "model_edits" / "REPORT.json"),
                                                               "written": False}
    assert "REPORT.json" in write_run_report(cfg, str(tmp_path))
    body = json.loads((tmp_path / "model_edits" / "REPORT.json").read_text())
    state = edit_report_state(Storage(str(tmp_path)), cfg)  # what `editgen status` shows
    assert (state["written"], state["stale"], state["prompts"], state["flagged"]) == (True, False, 2, body["flagged"])
    caption = str(render_table({"out": str(tmp_path), "stages": [], "model_edit_report": state}).caption)
    assert "model edits report: " in caption and "2 prompts" in caption
    other = _cfg(tiny, "render.model_edits=[{kind: erase, concept: a dog}]")
    assert edit_report_state(Storage(str(tmp_path)), other)["stale"] is True
    assert edit_report_state(Storage(str(tmp_path)), _cfg(tiny)) is None
    assert [r["prompt"] for r in body["rows"]] == ["a cat", "a dog"]
    assert (tmp_path / "model_edits" / "report.html").exists()
    assert "already" in write_run_report(cfg, str(tmp_path))  # the same model, edits and settings: kept
    assert write_run_report(_cfg(tiny), str(tmp_path)) is None
    same_edits = _cfg(tiny, "render.model_edits=[{kind: erase, concept: a cat}]", "render.model_edit_preserve=[a dog]",
                      "filter.clip_model=tiny-clip", "filter.clip_pretrained=seed:0")
    assert stage_hashes(cfg)["render"] == stage_hashes(same_edits)["render"]  # the report settings are not hashed
