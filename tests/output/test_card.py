"""The held-out eval split (shard.eval_fraction, output/eval_split.py) and the dataset card (OUT/shards/README.md,
output/card.py), on synthetic filter partitions run through the shard stage's body (no diffusion)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from editgen.cli.chain_check import _shard_vs_filter, kept_keys
from editgen.cli.shards import published
from editgen.cli.status import eval_counts
from editgen.cli.validate import validate
from editgen.output.card import CARD, build_card, card_problems
from editgen.output.eval_split import in_eval
from editgen.output.export_hf import export_hf
from editgen.output.features import ANY, MAX_FIELDS, SplitSchema, from_tree, infer, join, to_tree, yaml_features
from editgen.output.inverse import is_inverse_key
from editgen.output.loader import shard_urls
from editgen.output.shard_writer import write_dataset
from editgen.output.stored_scores import from_shards
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import ConfigError, InputError
from editgen.pipeline.records import GLOBAL_RECORD, write_record
from editgen.pipeline.runner import stage_hashes
from editgen.pipeline.stage import PlanContext
from editgen.pipeline.storage import Storage
from editgen.stages.shard import ShardStage
from tests.output.test_inverse_pairs import _with_inverse
from tests.output.test_session_shards import render_rows
from tests.support import filter_partitions, manifest, write_shards

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")
FRACTION = 0.4


def keys_of(out: Path, split: str) -> list[str]:
    """Sample keys of one split, read from its tars as the loader lists them."""
    urls = shard_urls(str(out), split=split)
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def header(out: Path) -> dict:
    text = (out / "shards" / CARD).read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """Pairs with several kept candidates each, inverse pairs included, a share of them held out."""
    root = tmp_path_factory.mktemp("card")
    records = filter_partitions(root, parts=2, pairs=6, candidates=3, size=16, keep_fraction=0.7, edit=_with_inverse)
    write_shards(root, records, samples_per_shard=4, eval_fraction=FRACTION)
    return root


def test_eval_split_is_whole_pairs_disjoint_and_deterministic(out, tmp_path):
    m = manifest(out)
    train, held_out = keys_of(out, "train"), keys_of(out, "eval")
    assert held_out and train and not set(train) & set(held_out)
    assert (len(train), len(held_out)) == (m["samples"], m["eval"]["samples"])
    assert all(e["name"].startswith(f"shards/{m['generation']}/eval-") for e in m["eval"]["shards"])
    forward = {k for k in train + held_out if not is_inverse_key(k)}
    wanted = {k for p in sorted((out / "filter").glob("part-*.parquet")) for k in kept_keys(p.read_bytes())}
    assert forward == wanted  # every kept candidate published once, in one split or the other
    for k in held_out:  # a pair's candidates and its inverse go together, drawn by its id
        assert in_eval({"id": k.removesuffix("-inv").rsplit("-c", 1)[0]}, FRACTION)
    assert {k.removesuffix("-inv") for k in held_out if is_inverse_key(k)} <= set(held_out)
    again = tmp_path / "again"
    records = filter_partitions(again, parts=2, pairs=6, candidates=3, size=16, keep_fraction=0.7, edit=_with_inverse)
    write_shards(again, records, samples_per_shard=4, eval_fraction=FRACTION)
    assert keys_of(again, "eval") == held_out and manifest(again)["eval"] == m["eval"]
    assert validate(str(out), chain=False) == []
    found = published(str(out), False, {}, held_out=True)  # `editgen shards OUT --eval`
    assert found["set"] == "eval" and found["urls"] == shard_urls(str(out), split="eval")
    stored = from_shards(Storage(str(out)))  # judge-agreement's scores of an OUT without its partitions
    assert stored is not None and {k for k, kept in stored.kept.items() if kept} == set(train + held_out)


def test_chain_check_counts_eval_samples_as_published(out, tmp_path):
    """The kept rows' accounting closes over both splits: the shard record's rows out are train + eval."""
    m = manifest(out)
    kept = {i: kept_keys(p.read_bytes()) for i, p in enumerate(sorted((out / "filter").glob("part-*.parquet")))}
    cfg = build_config(extra={"shard": {"samples_per_shard": 4, "eval_fraction": FRACTION}})
    record = write_shards(tmp_path, filter_partitions(tmp_path, parts=2, pairs=6, candidates=3, size=16,
                                                      keep_fraction=0.7, edit=_with_inverse),
                          samples_per_shard=4, eval_fraction=FRACTION)  # the same run again: its record
    storage = Storage(str(tmp_path))
    assert record["rows_out"] == m["samples"] + m["eval"]["samples"] == sum(map(len, kept.values())) + \
        m["inverse_samples"] + m["eval"]["inverse_samples"]
    shard_line = {"stage": "shard", "present": True, "rows_out": record["rows_out"], "metrics": record["metrics"]}
    assert eval_counts([shard_line]) == {"train_samples": m["samples"], "eval_samples": m["eval"]["samples"]}  # status
    write_record(storage, "shard", {**record, "stage_hash": stage_hashes(cfg)["shard"]}, GLOBAL_RECORD)
    keys = keys_of(out, "train") + keys_of(out, "eval")
    assert _shard_vs_filter(storage, m, kept, keys) == []
    problems = _shard_vs_filter(storage, m, kept, keys_of(out, "train"))  # eval keys forgotten: rows lost
    assert any("kept candidates of the filter stage are missing" in p for p in problems)


def test_card_header_counts_and_load_dataset(out, tmp_path):
    m, head = manifest(out), header(out)
    assert head["license"] == "other" and head["task_categories"] == ["image-to-image"]
    assert head["size_categories"] == ["n<1K"] and "image-editing" in head["tags"]
    files = head["configs"][0]["data_files"]
    assert files == [{"split": "train", "path": f"{m['generation']}/edits-*.tar"},
                     {"split": "test", "path": f"{m['generation']}/eval-*.tar"}]
    assert {s["name"]: s["num_examples"] for s in head["dataset_info"]["splits"]} == \
        {"train": m["samples"], "test": m["eval"]["samples"]}
    body = (out / "shards" / CARD).read_text()
    assert f"| `train` | {m['samples']} | {len(m['shards'])} | {m['forward_samples']} | {m['inverse_samples']} |" \
        in body
    assert f"Kept samples (the shard stage's rows out, both splits): {m['survival']['kept_samples']}." in body
    assert m["survival"]["kept_samples"] == m["samples"] + m["eval"]["samples"]
    ds = datasets.load_dataset(str(out / "shards"), cache_dir=str(tmp_path / "cache"))
    declared = datasets.Features._from_yaml_list(head["dataset_info"]["features"])
    assert ds["train"].features == ds["test"].features == declared  # the card's, not inferred
    assert set(ds) == {"train", "test"}
    assert (ds["train"].num_rows, ds["test"].num_rows) == (m["samples"], m["eval"]["samples"])
    assert sorted(ds["test"]["__key__"]) == sorted(keys_of(out, "eval"))


def test_no_eval_split_no_test_split(tmp_path):
    write_shards(tmp_path, filter_partitions(tmp_path, parts=1, pairs=3, candidates=2, size=16),
                 samples_per_shard=4, card={"license": "cc-by-4.0"})
    m, head = manifest(tmp_path), header(tmp_path)
    assert "eval" not in m and head["license"] == "cc-by-4.0"
    assert [f["split"] for f in head["configs"][0]["data_files"]] == ["train"]
    ds = datasets.load_dataset(str(tmp_path / "shards"), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"] and ds["train"].num_rows == m["samples"]
    with pytest.raises(ValueError, match="no eval split"):
        shard_urls(str(tmp_path), split="eval")
    with pytest.raises(InputError, match="no eval split"):
        published(str(tmp_path), False, {}, held_out=True)


def test_sessions_go_whole_to_one_split(tmp_path):
    rows = render_rows(sessions=8, turns=2, candidates=2)
    write_dataset(Storage(str(tmp_path)), rows, samples_per_shard=3, eval_fraction=0.5)
    splits = {split: keys_of(tmp_path, split) for split in ("train", "eval")}
    assert splits["train"] and splits["eval"]
    for split, keys in splits.items():
        sessions = {k.split("-")[0] for k in keys}  # sessN-cNNNN, sessN-t2-cNNNN
        other = {k.split("-")[0] for k in splits["eval" if split == "train" else "train"]}
        assert not sessions & other
    assert validate(str(tmp_path), chain=False) == []  # every turn's prev/first is published


def test_card_is_in_the_resume_check_and_follows_the_config(out, tmp_path):
    """A missing, edited or stale card (a new license: outside the stage hash) is rewritten by the stage's
    resume check, the tars left as they are; a damaged tar still means publishing again."""
    records = filter_partitions(tmp_path, parts=1, pairs=3, candidates=2, size=16)

    def stage(license_id: str) -> tuple[ShardStage, PlanContext]:
        cfg = build_config(extra={"shard": {"eval_fraction": 0.3, "card": {"license": license_id}}})
        return ShardStage(cfg), PlanContext(cfg, Storage(str(tmp_path)), records, "filter",
                                            stage_hash=stage_hashes(cfg)["shard"])

    shard, ctx = stage("other")
    record = shard.run_global(ctx)
    card, want = tmp_path / "shards" / CARD, build_card(manifest(tmp_path), shard.config)
    assert card.read_text() == want
    tars = {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").rglob("*.tar")}
    card.write_text(want.replace("n<1K", "1K<n<10K"))
    assert shard.global_output_valid(ctx, record) and card.read_text() == want
    card.unlink()
    assert shard.global_output_valid(ctx, record) and card.read_text() == want
    relicensed, ctx2 = stage("cc-by-4.0")
    assert ctx2.stage_hash == ctx.stage_hash and relicensed.global_output_valid(ctx2, record)
    assert header(tmp_path)["license"] == "cc-by-4.0" and card_problems(card.read_text(), manifest(tmp_path)) == []
    assert tars == {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").rglob("*.tar")}  # no tar rewritten
    first = tmp_path / manifest(tmp_path)["shards"][0]["name"]
    first.write_bytes(first.read_bytes()[:-512])
    assert not shard.global_output_valid(ctx, record)


def test_validate_names_a_card_that_miscounts(out, tmp_path):
    m = manifest(out)
    text = (out / "shards" / CARD).read_text()
    wrong = text.replace(f"num_examples: {m['samples']}\n", f"num_examples: {m['samples'] + 1}\n", 1)
    assert card_problems(wrong, m) and "split sizes" in card_problems(wrong, m)[0]
    assert card_problems("# no header", m)
    undeclared = text.replace("  features:\n", "  features_:\n", 1)
    assert [p for p in card_problems(undeclared, m) if "dataset_info.features" in p]


def test_export_hf_writes_the_eval_split_and_the_runs_card(out, tmp_path):
    m = manifest(out)
    dest = tmp_path / "hf"
    assert export_hf(str(out), str(dest), rows_per_file=5) == {"train": m["samples"], "test": m["eval"]["samples"]}
    card = (dest / "README.md").read_text()
    head = yaml.safe_load(card.split("---\n", 2)[1])
    assert head["license"] == header(out)["license"] and head["size_categories"] == ["n<1K"]
    assert f"| `test` | {m['eval']['samples']} |" in card and "## Survival funnel" in card and "## Load it" not in card
    assert "dataset_info" not in head  # the tars' features are not the parquet files' columns
    ds = datasets.load_dataset(str(dest), cache_dir=str(tmp_path / "cache"))
    assert (ds["train"].num_rows, ds["test"].num_rows) == (m["samples"], m["eval"]["samples"])
    assert sorted(ds["test"]["key"]) == sorted(keys_of(out, "eval"))
    assert json.loads((dest / "export-test.json").read_text())["rows"] == m["eval"]["samples"]


def test_eval_prefix_is_refused_and_only_a_split_moves_the_hash():
    with pytest.raises(ConfigError, match="eval tars"):
        build_config(extra={"shard": {"eval_fraction": 0.1, "prefix": "eval"}})
    shard_hash = lambda **shard: stage_hashes(build_config(extra={"shard": shard}))["shard"]  # noqa: E731
    assert shard_hash() == shard_hash(eval_fraction=0.0) == shard_hash(card={"license": "mit"})  # old runs keep theirs
    assert shard_hash(eval_fraction=0.1) != shard_hash()


def _varying(start: int, part: str):
    """A filter-table edit: from row `start` on, samples gain a member (`part` "member": a reconstruction, as
    a real-image engine's rows in a mixed run) or set JSON fields the earlier ones hold as null, empty or of
    another type (`part` "json": a mask description, per-word p2p windows and reweights)."""
    def edit(t: pa.Table) -> pa.Table:
        rows = t.to_pylist()
        for i, row in enumerate(rows):
            late = i >= start
            if part == "member":
                row["reconstruction"] = row["input_image"] if late else None
                continue
            params = json.loads(row["params"])
            params["edits"] = [{"cross_replace": {"box": [0.0, 0.8]} if late else 0.8,
                                "reweight": {"box": 2.0} if late else {}}]
            if late:
                params["mask"] = {"kind": "diffedit", "words": ["box"]}
            row["params"] = json.dumps(params, sort_keys=True)
        return pa.Table.from_pylist(rows)
    return edit


@pytest.mark.parametrize(("part", "start", "error"), [("member", 3, ValueError),
                                                      ("json", 6, datasets.exceptions.DatasetGenerationError)])
def test_declared_features_load_samples_that_differ(tmp_path, part, start, error):
    """datasets infers features from a tar's first 5 samples: a member only some of those have fails the load,
    a JSON field they hold as null fails at the first sample that sets it. The card's features, joined over
    every sample, load both, a missing member or field as None."""
    records = filter_partitions(tmp_path, parts=1, pairs=4, candidates=3, size=16, keep_fraction=1.0,
                                edit=_varying(start, part))
    write_shards(tmp_path, records, samples_per_shard=100)
    card = tmp_path / "shards" / CARD
    ds = datasets.load_dataset(str(tmp_path / "shards"), cache_dir=str(tmp_path / "cache"))["train"]
    assert ds.num_rows == manifest(tmp_path)["samples"] == 12
    assert ds.features == datasets.Features._from_yaml_list(header(tmp_path)["dataset_info"]["features"])
    if part == "member":
        assert [r is None for r in ds["reconstruction.png"]] == [i < start for i in range(12)]
    else:
        meta = ds["json"]
        assert [m["mask_kind"] for m in meta] == [None] * start + ["diffedit"] * (12 - start)
        edits = [m["params"]["edits"][0] for m in meta]  # `Json` (no common type): each value as it was
        assert [e["cross_replace"] for e in edits[start - 1:start + 1]] == [0.8, {"box": [0.0, 0.8]}]
        assert edits[-1]["reweight"] == {"box": 2.0}
    _, head, body = card.read_text().split("---\n", 2)
    undeclared = yaml.safe_load(head)
    del undeclared["dataset_info"]["features"]
    card.write_text(f"---\n{yaml.safe_dump(undeclared, sort_keys=False)}---\n{body}")
    with pytest.raises(error):
        datasets.load_dataset(str(tmp_path / "shards"), cache_dir=str(tmp_path / "inferred"))


def test_feature_types_join_and_round_trip_through_datasets_yaml():
    """output/features.py: the lattice (nulls, int/float, fields a sample lacks, no common type, too many
    fields), the manifest's form, and the YAML `datasets` reads back to the same arrow types."""
    values = [{"a": None, "b": [{"x": 1}], "c": {"d": [[1.5]]}, "e": {}, "f": 1, "g": [], "n": None},
              {"a": "s", "b": [], "c": {"d": [[2]]}, "f": "one", "g": [True]}]
    want = pa.struct([("a", pa.string()), ("b", pa.list_(pa.struct([("x", pa.int64())]))),
                      ("c", pa.struct([("d", pa.list_(pa.list_(pa.float64())))])), ("e", pa.struct([])),
                      ("f", ANY), ("g", pa.list_(pa.bool_())), ("n", pa.null())])
    first, second = infer(values[:1]), infer(values[1:])
    assert infer(values) == want == join(first, second) == join(second, first)
    assert infer([{str(i): i for i in range(MAX_FIELDS + 1)}]) == ANY == infer([2**63]) == infer([1, [1]])
    assert from_tree(json.loads(json.dumps(to_tree(want)))) == want
    declared = yaml_features(SplitSchema(frozenset({"json", "txt", "mask.png", "edited.jpg", "input.png"}), want))
    assert [f["name"] for f in declared] == ["input.png", "edited.jpg", "mask.png", "txt", "json", "__key__",
                                             "__url__"]
    features = datasets.Features._from_yaml_list(declared)
    assert features._to_yaml_list() == declared  # the shape datasets itself writes
    assert features["input.png"] == features["edited.jpg"] == datasets.Image()
    assert features.arrow_schema.field("json").type == want and features["json"]["f"] == datasets.Json()
