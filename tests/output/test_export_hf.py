"""`editgen export-hf OUT DEST`: the hub layout `datasets.load_dataset(DEST)` reads, with train and rejected
splits that never overwrite each other, and the refusal of a folder that is not an export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editgen.cli.main import main as editgen
from editgen.output.export_hf import export_hf
from editgen.output.shard_writer import sample_key
from editgen.pipeline.errors import InputError
from tests.support import filter_partitions, manifest, write_shards

datasets = pytest.importorskip("datasets")
#: diffusers' train_instruct_pix2pix.py takes column_names[0..2] as input image, prompt, edited image.
COLUMNS = ["input_image", "edit_prompt", "edited_image", "key", "id", "mask", "mask_area", "mask_bbox", "mask_words",
           "mask_kind", "inverse", "inverse_of", "edit_type", "session_id", "turn", "prev", "judge_instruction",
           "judge_instruction_reason", "judge_preservation", "judge_preservation_reason", "judge_quality",
           "judge_quality_reason", "judge_score"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_shards(root, filter_partitions(root, parts=2, pairs=3, candidates=2, size=16), samples_per_shard=4,
                 export_rejected=True)
    m = manifest(root)
    assert m["samples"] >= 3 and m["rejected"]["samples"] >= 3
    return root


def load(dest: Path, cache: Path):
    return datasets.load_dataset(str(dest), cache_dir=str(cache))


def files(dest: Path, split: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((dest / "data").glob(f"{split}-*.parquet"))}


def test_load_dataset_gives_train_and_rejected(out, tmp_path):
    dest = tmp_path / "hf"
    m = manifest(out)
    kept, rejected = m["samples"], m["rejected"]["samples"]
    assert export_hf(str(out), str(dest), rows_per_file=3) == {"train": kept, "rejected": rejected}
    n = -(-kept // 3)
    assert list(files(dest, "train")) == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert pq.read_schema(dest / "data" / f"train-00000-of-{n:05d}.parquet").names == COLUMNS
    card = (dest / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n") and "path: data/rejected-*.parquet" in card
    ds = load(dest, tmp_path / "cache")
    assert set(ds) == {"train", "rejected"} and (ds["train"].num_rows, ds["rejected"].num_rows) == (kept, rejected)
    assert ds["train"].column_names == COLUMNS == ds["rejected"].column_names
    assert isinstance(ds["train"].features["input_image"], datasets.Image)
    row = ds["train"][0]
    assert row["input_image"].size == row["edited_image"].size == (16, 16)
    assert row["edit_prompt"].startswith("add a red box") and row["key"].startswith(row["id"] + "-c")
    for split, status in (("train", "kept"), ("rejected", "dropped")):  # each row traces back to its caption row
        assert sorted(ds[split]["key"]) == sorted(filter_keys(out, status))
        assert all(k.startswith(f"{i}-c") for i, k in zip(ds[split]["id"], ds[split]["key"], strict=True))


def test_mask_column_is_the_shards_mask(tmp_path):
    """`mask` loads as an Image equal to the shard's mask.png (white where the engine gave none), with the
    sample JSON's area, bounding box, words and kind beside it."""
    import io

    import numpy as np
    import pyarrow as pa
    import webdataset as wds
    from PIL import Image

    def half_masks(t: pa.Table) -> pa.Table:
        masks = [m if i % 2 else None for i, m in enumerate(t["mask"].to_pylist())]
        params = [json.dumps({**json.loads(p), "mask": {"words": ["box"], "kind": "local_blend"}}) if i % 2 else p
                  for i, p in enumerate(t["params"].to_pylist())]
        t = t.set_column(t.column_names.index("params"), "params", pa.array(params))
        return t.set_column(t.column_names.index("mask"), "mask", pa.array(masks, pa.binary()))

    out, dest = tmp_path / "out", tmp_path / "hf"
    write_shards(out, filter_partitions(out, parts=1, pairs=2, candidates=2, size=16, keep_fraction=1.0,
                                        edit=half_masks))
    export_hf(str(out), str(dest))
    ds = load(dest, tmp_path / "cache")["train"]
    assert isinstance(ds.features["mask"], datasets.Image) and ds.column_names == COLUMNS
    shard = {s["__key__"]: s for s in wds.WebDataset(str(out / manifest(out)["shards"][0]["name"]),
                                                       shardshuffle=False)}
    assert sorted(ds["key"]) == sorted(shard) and len(shard) == 4
    for row in ds:
        s = shard[row["key"]]
        meta = json.loads(s["json"])
        png = np.asarray(Image.open(io.BytesIO(s["mask.png"])))
        assert np.array_equal(np.asarray(row["mask"]), png) and row["mask"].size == (16, 16)
        assert (row["mask_area"], row["mask_bbox"]) == (meta["mask_area"], meta["mask_bbox"])
        whole = meta["mask"] == "whole_image"
        assert (row["mask_area"] == 1.0 and png.min() == 255) if whole else 0 < row["mask_area"] < 1
        assert (row["mask_words"], row["mask_kind"]) == ((None, None) if whole else (["box"], "local_blend"))


def filter_keys(out: Path, status: str) -> list[str]:
    rows = [r for p in sorted((out / "filter").glob("part-*.parquet"))
            for r in pq.read_table(p, columns=["id", "candidate", "status"]).to_pylist()]
    return [sample_key(r["id"], r["candidate"]) for r in rows if r["status"] == status]


def test_exports_never_lose_a_split(out, tmp_path):
    """Kept only, then rejected only, then both with other file sizes: each export rewrites only its own
    splits, the card lists every split DEST holds, and a shorter export leaves no surplus file."""
    dest = tmp_path / "hf"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "test-00000-of-00001.parquet").write_bytes(b"a split editgen did not write")
    (dest / "export-test.json").write_text(json.dumps({"split": "test", "rejected": False}))
    assert list(export_hf(str(out), str(dest), rows_per_file=2, rejected=False)) == ["train"]
    train = files(dest, "train")
    assert not files(dest, "rejected") and "split: test" in (dest / "README.md").read_text()
    assert list(export_hf(str(out), str(dest), rows_per_file=2, rejected=True)) == ["rejected"]
    assert files(dest, "train") == train and files(dest, "rejected")
    card = (dest / "README.md").read_text()
    assert card.index("split: test") < card.index("split: train") < card.index("split: rejected")  # kept first
    export_hf(str(out), str(dest), rows_per_file=1000)
    assert list(files(dest, "train")) == ["train-00000-of-00001.parquet"]
    assert list(files(dest, "rejected")) == ["rejected-00000-of-00001.parquet"]
    assert (dest / "data" / "test-00000-of-00001.parquet").read_bytes() == b"a split editgen did not write"
    assert not list(dest.glob(".tmp-*"))
    (dest / "data" / "test-00000-of-00001.parquet").unlink()
    (dest / "export-test.json").unlink()
    export_hf(str(out), str(dest), rows_per_file=1000, split="train")  # card rewritten without `test`
    ds = load(dest, tmp_path / "cache")
    assert {k: v.num_rows for k, v in ds.items()} == {"train": manifest(out)["samples"],
                                                       "rejected": manifest(out)["rejected"]["samples"]}


def test_refusals_are_one_line(out, tmp_path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "README.md").write_text("my own notes")
    assert editgen(["export-hf", str(out), str(foreign)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an editgen export" in err[0]
    assert (foreign / "README.md").read_text() == "my own notes" and not (foreign / "data").exists()
    clone = tmp_path / "clone"  # a freshly cloned hub repository: dot files only
    (clone / ".git").mkdir(parents=True)
    (clone / ".gitattributes").write_text("*.parquet filter=lfs\n")
    assert editgen(["export-hf", str(out), str(clone), "--no-rejected"]) == 0
    printed = capsys.readouterr().out
    assert f"train: {manifest(out)['samples']} rows" in printed and "load_dataset" in printed
    with pytest.raises(InputError, match="other than 'rejected'"):
        export_hf(str(out), str(tmp_path / "x"), split="rejected")
    kept_only = tmp_path / "kept-only"
    write_shards(kept_only, filter_partitions(kept_only, parts=1))
    with pytest.raises(InputError, match="no rejected shards"):
        export_hf(str(kept_only), str(tmp_path / "y"), rejected=True)
    assert list(export_hf(str(kept_only), str(tmp_path / "z"))) == ["train"]  # the default: what there is


def test_a_failed_export_changes_nothing(out, tmp_path):
    """An export that dies half-way (here: a damaged shard) leaves the previous export as it was; the
    next export clears its staging folder."""
    dest = tmp_path / "hf"
    export_hf(str(out), str(dest), rows_per_file=2)
    before = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tar = broken / manifest(broken)["shards"][-1]["name"]
    tar.write_bytes(tar.read_bytes()[:1500])
    with pytest.raises(Exception):  # noqa: B017 - whatever the tar reader raises on a cut member
        export_hf(str(broken), str(dest), rows_per_file=3)
    after = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()
             if not str(p.relative_to(dest)).startswith(".tmp-")}
    assert after == before
    export_hf(str(out), str(dest), rows_per_file=2)
    assert not list(dest.glob(".tmp-*"))


def test_the_card_links_the_model_edit_report(out, tmp_path):
    """A run with model edits wrote OUT/model_edits/ (docs/model_edits.md): the export copies it and links it."""
    dest = tmp_path / "hf"
    export_hf(str(out), str(dest))
    assert "model_edits/report.html" not in (dest / "README.md").read_text() and not (dest / "model_edits").exists()
    src = tmp_path / "with-report"
    shutil.copytree(out, src)
    (src / "model_edits").mkdir()
    (src / "model_edits" / "REPORT.json").write_text('{"preserved": true}\n')
    (src / "model_edits" / "report.html").write_text("<!doctype html>\n")
    export_hf(str(src), str(dest))  # again into the same DEST (an earlier export)
    assert "[model_edits/report.html](model_edits/report.html)" in (dest / "README.md").read_text()
    assert (dest / "model_edits" / "REPORT.json").read_text() == '{"preserved": true}\n'
    export_hf(str(out), str(dest))  # OUT without a report: no stale link, no stale files
    assert "model_edits/" not in (dest / "README.md").read_text()
    assert not (dest / "model_edits" / "REPORT.json").exists()
