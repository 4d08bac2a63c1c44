"""The published shards as other clients read them: webdataset in a 2-worker DataLoader, Ray Data's
read_webdataset on `editgen shards` URLs and on the folder, a glob over OUT/shards; and an OUT in the
earlier layout (OUT/shards/manifest.json, rejected tars beside kept ones), read, then republished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from editgen.cli.shards import published
from editgen.cli.validate import validate
from editgen.output.loader import shard_urls
from editgen.output.shard_writer import sample_key
from editgen.pipeline.config import build_config
from tests.support import filter_partitions, manifest, tar_files, write_shards

wds = pytest.importorskip("webdataset")
MEMBERS = {"input.png", "edited.png", "mask.png", "txt", "json"}


def half_masks(t: pa.Table) -> pa.Table:
    """Every other row without a LocalBlend mask, as a run whose blend words are not always found."""
    masks = [m if i % 2 else None for i, m in enumerate(t["mask"].to_pylist())]
    return t.set_column(t.column_names.index("mask"), "mask", pa.array(masks, pa.binary()))


def kept_keys(out: Path) -> list[str]:
    rows = [r for p in sorted((out / "filter").glob("part-*.parquet"))
            for r in pq.read_table(p, columns=["id", "candidate", "status"]).to_pylist()]
    return sorted(sample_key(r["id"], r["candidate"]) for r in rows if r["status"] == "kept")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """A small dataset cut as the tiny profile cuts it, with rejected shards and masks on half the rows."""
    root = tmp_path_factory.mktemp("clients")
    per_shard = build_config(profile="tiny").shard.samples_per_shard
    records = filter_partitions(root, parts=2, pairs=3, candidates=2, size=16, edit=half_masks)
    write_shards(root, records, samples_per_shard=per_shard, export_rejected=True)
    assert len(manifest(root)["shards"]) >= 2, "a tiny run gives a 2-worker loader a shard per worker"
    return root


def test_webdataset_two_workers_read_every_kept_sample_once(out):
    urls = published(str(out), False, {})["urls"]
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node)
    keys = [s["__key__"] for s in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)]
    assert sorted(keys) == kept_keys(out)


def test_ray_data_reads_every_sample_with_one_schema(out, ray_session):
    """Before every sample had a mask, rows without one made Ray Data fail to build the mask column."""
    import ray.data

    urls = published(str(out), False, {})["urls"]
    ds = ray.data.read_webdataset(urls)
    rows = ds.take_all()
    assert sorted(r["__key__"] for r in rows) == kept_keys(out)
    assert set(ds.schema().names) == MEMBERS | {"__key__", "__url__"}
    assert {r["json"]["mask"] for r in rows} == {"region", "whole_image"}
    # the folder: its tars are the kept ones (beside them: the dataset card, README.md)
    assert ray.data.read_webdataset(str(out / "shards"), file_extensions=["tar"]).count() == len(rows)
    assert ray.data.read_webdataset(published(str(out), True, {})["urls"]).count() == \
        manifest(out)["rejected"]["samples"]


def test_a_glob_over_shards_sees_exactly_the_kept_tars(out):
    m = manifest(out)
    found = sorted(p for p in (out / "shards").rglob("*") if p.is_file() and p.name != "README.md")
    assert (out / "shards" / "README.md").is_file()  # the dataset card (output/card.py), no tar
    assert found == tar_files(out) == sorted(out / e["name"] for e in m["shards"])
    assert tar_files(out, "rejected") == sorted(out / e["name"] for e in m["rejected"]["shards"])
    assert sorted(s["__key__"] for s in wds.WebDataset([str(p) for p in found], shardshuffle=False)) == kept_keys(out)


def to_legacy(out: Path) -> None:
    """OUT as editgen-webdataset/2 left it: OUT/shards/manifest.json naming tars relative to OUT/shards,
    rejected tars in the kept generation's folder."""
    m = manifest(out)
    for e in m["rejected"]["shards"]:
        shutil.move(out / e["name"], out / "shards" / m["generation"] / Path(e["name"]).name)
        e["name"] = f"{m['generation']}/{Path(e['name']).name}"
    for e in m["shards"]:
        e["name"] = e["name"].removeprefix("shards/")
    m["format"] = "editgen-webdataset/2"
    (out / "shards" / "manifest.json").write_text(json.dumps(m))
    (out / "manifest.json").unlink()
    shutil.rmtree(out / "rejected")


def test_earlier_layout_is_read_then_republished(tmp_path):
    records = filter_partitions(tmp_path, parts=1, keep_fraction=0.5)
    write_shards(tmp_path, records, samples_per_shard=3, export_rejected=True)
    want = {s: published(str(tmp_path), s, {})["urls"] for s in (False, True)}
    to_legacy(tmp_path)
    assert {s: published(str(tmp_path), s, {})["urls"] for s in (False, True)} == {
        False: want[False], True: [u.replace("/rejected/", "/shards/") for u in want[True]]}
    assert shard_urls(str(tmp_path)) == shard_urls(str(tmp_path / "shards")) == want[False]
    assert validate(str(tmp_path), chain=False) == []
    write_shards(tmp_path, records, samples_per_shard=3, export_rejected=True)  # the shard stage reruns
    assert not (tmp_path / "shards" / "manifest.json").exists() and (tmp_path / "manifest.json").exists()
    assert sorted(str(p) for p in (tmp_path / "shards").rglob("*.tar")) == sorted(want[False])
    assert (tmp_path / "shards" / "README.md").is_file()  # the card of the republished dataset
    assert {s: published(str(tmp_path), s, {})["urls"] for s in (False, True)} == want
