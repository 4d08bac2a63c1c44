"""The edit-engine interface (issue 21 item 1): the registry, the typed candidate record, `render.engine`,
the per-pair engine choice, and regeneration through the interface for P2P on generated and real sources."""

from __future__ import annotations

import inspect
import json
from collections import Counter

import pyarrow as pa
import pytest

from editgen.cli.main import main as cli_main
from editgen.engines import REGISTRY
from editgen.engines.base import (
    EditEngine,
    EngineNeeds,
    choose_engine,
    engine_class,
    needs_of,
    pair_key,
    reconstructs,
)
from editgen.engines.p2p_records import ENGINE, VERSION, sample_candidates, share_sources
from editgen.engines.record import CandidateRecord, Compute, ModelRef
from editgen.engines.regenerate import regenerate
from editgen.p2p.candidates import CandidateSpace
from editgen.pipeline.config import build_config
from editgen.pipeline.runner import stage_hashes
from editgen.pipeline.settings.render import RenderConfig
from tests.support import smooth_photo

#: A shared-source P2P record as the code before engines wrote it (p2p.candidates + p2p.shared + the
#: render stage's keys), byte for byte: the typed record must read and write exactly this.
BEFORE_ENGINES = (
    '{"candidate": 1, "compute": {"flops_per_row_step": 100, "unet_flops": 1200.0, "unet_row_steps": 12.0}, '
    '"dtype": "float32", "edits": [{"blend": {"downscale": 4, "start": 0.2, "threshold": 0.3, "words": ["cat", '
    '"dog"]}, "cross_replace": 0.6964298676206039, "edit_kind": "replace", "mode": "replace", "prompt": "a photo '
    'of a dog", "reweight": {}, "reweight_all_steps": false, "self_max_res": 32, "self_replace": '
    '0.6964298676206039}], "format": "editgen.p2p/1", "guidance": 13.70864636679348, "height": 32, "model": '
    '"/m/tiny-sd", "negative_prompt": null, "pair_id": "pair-1", "profile": "tiny", "scheduler": "ddim", "seed": '
    '678891053, "shared_source": {"group": 0, "group_edits": [{"blend": {"downscale": 4, "start": 0.2, '
    '"threshold": 0.3, "words": ["cat", "dog"]}, "cross_replace": 0.8912470203296777, "edit_kind": "replace", '
    '"mode": "replace", "prompt": "a photo of a dog", "reweight": {}, "reweight_all_steps": false, "self_max_res": '
    '32, "self_replace": 0.8912470203296777}, {"blend": {"downscale": 4, "start": 0.2, "threshold": 0.3, "words": '
    '["cat", "dog"]}, "cross_replace": 0.6964298676206039, "edit_kind": "replace", "mode": "replace", "prompt": "a '
    'photo of a dog", "reweight": {}, "reweight_all_steps": false, "self_max_res": 32, "self_replace": '
    '0.6964298676206039}], "members": [0, 1], "size": 2}, "source_prompt": "a photo of a cat", "steps": 4, '
    '"tiny_variant": "sd", "torch_threads": 1, "width": 32}'
)


def test_registry_names_load_complete_engines():
    assert "p2p" in REGISTRY
    for name in REGISTRY:
        cls = engine_class(name)
        assert issubclass(cls, EditEngine) and cls.name == name and not inspect.isabstract(cls), name
        assert isinstance(cls.needs(RenderConfig()), EngineNeeds)
        cls.check_settings(RenderConfig())
    assert (engine_class("p2p").name, engine_class("p2p").version) == (ENGINE, VERSION)  # what its records say
    with pytest.raises(ValueError, match=r"unknown engine 'nope' \(known: p2p"):
        engine_class("nope")


def test_needs_decide_the_graph_and_the_filter():
    generated, real = build_config(profile="tiny").render, build_config(profile="tiny", overrides=[
        "render.source=real"]).render
    assert needs_of(generated) == EngineNeeds(generated_source=True) and not reconstructs(generated)
    assert needs_of(real) == EngineNeeds(real_image=True) and reconstructs(real)


def test_typed_record_reads_and_writes_the_layout_records_always_had():
    rec = CandidateRecord.from_row(json.loads(BEFORE_ENGINES))
    assert (rec.engine, rec.version, rec.format, rec.pair_id, rec.candidate) == ("p2p", 1, "editgen.p2p/1", "pair-1", 1)
    assert rec.model == ModelRef("/m/tiny-sd", "float32", profile="tiny", tiny_variant="sd", torch_threads=1)
    assert rec.compute == Compute(12.0, 1200.0, 100) and "shared_source" in rec.params and "seed" not in rec.params
    assert rec.to_json() == BEFORE_ENGINES
    # ... and the P2P engine draws exactly that record today
    space = CandidateSpace(steps=4, height=32, width=32)
    drawn = share_sources(sample_candidates(
        "pair-1", "a photo of a cat", "a photo of a dog", 2, model=ModelRef("/m/tiny-sd", "float32", profile="tiny",
                                                                           tiny_variant="sd", torch_threads=1),
        space=space, edit_kind="replace", blend={"words": ["cat", "dog"], "threshold": 0.3, "start": 0.2}), 2)[1]
    assert drawn.to_json() == json.dumps({k: v for k, v in json.loads(BEFORE_ENGINES).items() if k != "compute"},
                                         sort_keys=True)


def test_record_round_trip_and_refusals():
    rec = CandidateRecord("p2p", 1, ModelRef("m", "float16", model_edits={"checksum": "c"}), 7, {"steps": 2},
                          pair_id="p", candidate=0, compute=Compute.of(8.0, 3), mask={"area": 0.25})
    row = json.loads(rec.to_json())
    assert CandidateRecord.from_row(row) == rec and CandidateRecord.from_row(row).to_row() == row
    assert rec.with_params(steps=3).params == {"steps": 3} and rec.params == {"steps": 2}
    for bad, why in [({**row, "format": "p2p"}, "not editgen.<engine>/<version>"),
                     ({**row, "format": "editgen.P2P/x"}, "not editgen"),
                     ({k: v for k, v in row.items() if k != "seed"}, "record seed"),
                     ({**row, "dtype": "auto"}, "dtype must be explicit"),
                     ({**row, "compute": {"flops": 1}}, "compute"),
                     ([1, 2], "JSON object")]:
        with pytest.raises(ValueError, match=why):
            CandidateRecord.from_row(bad)
    with pytest.raises(ValueError, match="record's own keys"):
        CandidateRecord("p2p", 1, ModelRef("m", "float32"), 0, {"seed": 1})
    other = CandidateRecord.from_row({**row, "format": "editgen.p2p/2"})
    with pytest.raises(ValueError, match="version 1"):
        regenerate(other)


KNOWN = ", ".join(REGISTRY)  # every registered engine, in registry order


@pytest.mark.parametrize(("value", "words"), [
    ("no_such_engine", f"render.engine: unknown engine 'no_such_engine' (known: {KNOWN})"),
    ("{p2p: 1, nope: 2}", f"render.engine: unknown engine 'nope' (known: {KNOWN})"),
    ("{}", f"render.engine: name at least one engine (known: {KNOWN})"),
    ("{p2p: 0}", "render.engine: expected an engine name or {engine: weight, ...}"),
    ("[p2p]", "render.engine: expected an engine name"),
])
def test_bad_engine_is_one_config_line(value, words, capsys):
    assert cli_main(["config", "--profile", "tiny", "--set", f"render.engine={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_engine_setting_keeps_todays_hashes():
    base = stage_hashes(build_config(profile="tiny"))
    for same in ("render.engine=p2p", "render.engine={p2p: 3}"):
        assert stage_hashes(build_config(profile="tiny", overrides=[same])) == base, same
    assert build_config(profile="tiny", overrides=["render.engine={p2p: 3}"]).render.engine == "p2p"


def test_engine_choice_is_a_deterministic_weighted_draw_per_pair():
    keys = [pair_key(f"row-{i}", 0) for i in range(4000)]
    weights = {"a": 1.0, "b": 3.0}
    picks = [choose_engine(k, weights) for k in keys]
    assert picks == [choose_engine(k, {"b": 3.0, "a": 1.0}) for k in keys]  # the mapping's order is irrelevant
    share = Counter(picks)["a"] / len(picks)
    assert 0.22 < share < 0.28, share
    assert pair_key("r", 0) == "r" and pair_key("r", 5) == "r/5"
    reseeded = [choose_engine(pair_key(f"row-{i}", 9), weights) for i in range(4000)]
    assert reseeded != picks  # render.seed draws another mix
    assert {choose_engine(k, {"only": 2.0}) for k in keys[:50]} == {"only"}


ROWS = {"id": ["a", "b"], "caption": ["a photo of a cat on a bench"] * 2,
        "edited_caption": ["a photo of a dog on a bench", "a photo of a cat on a sofa"],
        "edit_kind": ["replace", "replace"], "changed_words": [["cat", "dog"], ["bench", "sofa"]],
        "source_words": [["cat"], ["bench"]], "target_words": [["dog"], ["sofa"]]}
CASES = {
    "generated-shared": (["render.shared_sources=2", "render.local_blend=true"], "shared_source"),
    "generated-packed": (["render.max_rows_per_batch=8"], "packed"),
    "real": (["render.source=real", "render.inversion.method=negative_prompt"], "real_source"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stage_records_regenerate_through_the_interface(case):
    """The render stage body through the P2P engine, then every kept candidate re-rendered from its stored
    record alone (the model loaded from the record) plus, for a real image, the image: same bytes."""
    from editgen.stages.render import RenderStage

    overrides, layout = CASES[case]
    cfg = build_config(profile="tiny", overrides=["render.steps=2", "render.candidates=2", "render.device=cpu",
                                                  "render.resources.num_cpus=1", *overrides])
    stage = RenderStage(cfg)
    stage.setup()
    rows = dict(ROWS)
    if "render.source=real" in overrides:
        rows.update(image=[smooth_photo()] * 2, image_width=[32, 32], image_height=[32, 32])
    out = [r for r in stage.process_partition(pa.table(rows)).to_pylist() if r["status"] == "kept"]
    assert len(out) == 4
    for r in out:
        stored = json.loads(r["params"])
        rec = CandidateRecord.from_row(stored)
        assert rec.engine == "p2p" and layout in rec.params and rec.compute.unet_row_steps > 0
        again = regenerate(stored, device="cpu", image=rows.get("image", [None])[0])
        assert (again.input_image, again.edited_image, again.mask, again.reconstruction) == \
            (r["input_image"], r["edited_image"], r["mask"], r["reconstruction"]), case
        assert again.record.params == rec.params  # the same engine parameters, measured ones included


@pytest.mark.parametrize("explicit", [False, True])
def test_pair_cli_writes_a_record_that_regenerates(tmp_path, monkeypatch, explicit):
    """`editgen pair` builds a P2P record and renders it through the engine; its params.json regenerates the
    same edited image, `--explicit` (the materialised-probability reference path) included."""
    import argparse

    from editgen.cli import pair as pair_cli
    from tests.support import one_thread

    monkeypatch.setenv("EDITGEN_CACHE", str(tmp_path / "cache"))
    parser = argparse.ArgumentParser()
    pair_cli.add_arguments(parser)
    out = tmp_path / "pair"
    argv = ["--profile", "tiny", "--prompt", "a photo of a cat on a bench", "--edit-prompt",
            "a photo of a dog on a bench", "--steps", "2", "--device", "cpu", "--out", str(out)]
    threads = one_thread()
    next(threads)
    try:
        assert pair_cli.main(parser.parse_args([*argv, *(["--explicit"] if explicit else [])])) == 0
        params = json.loads((out / "params.json").read_text())
        assert params["explicit"] is explicit and params["modes"] == ["replace"]
        assert CandidateRecord.from_row(params).engine == "p2p"
        again = regenerate(params, device="cpu")
    finally:
        next(threads, None)
    assert again.edited_image == (out / "edited.png").read_bytes()
    assert again.input_image == (out / "input.png").read_bytes()
