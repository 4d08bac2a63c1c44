"""Inverse pairs in the shards (instruct.inverse, issue 22 item 6): each kept pair published reversed with
its own instruction, keys linked, counted apart in the manifest, validate, status and export-hf; a dataset
without inverse instructions publishes no such sample and no such field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editgen.cli.chain_check import _inverse_vs_forward
from editgen.cli.validate import check_sample, validate
from editgen.output.compute_report import compute_report, format_report
from editgen.output.export_hf import export_hf
from editgen.output.shard_writer import sample_key
from tests.support import filter_partitions, manifest, tar_files, write_shards

wds = pytest.importorskip("webdataset")


def _with_inverse(t: pa.Table) -> pa.Table:
    """What instruct.inverse adds upstream: the inverse instruction and the edit type."""
    ids = t.column("id").to_pylist()
    t = t.append_column("edit_type", pa.array(["add_object"] * t.num_rows))
    return t.append_column("inverse_instruction", pa.array([f"remove the red box from {i}" for i in ids]))


def _samples(out: Path) -> dict[str, dict]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    found = {}
    for tar in tar_files(out):
        with open(tar, "rb") as f:
            for s in group_by_keys({**d, "__url__": str(tar)} for d in tar_file_iterator(f)):
                found[s["__key__"]] = s
    return found


def _kept_rows(out: Path) -> list[dict]:
    rows = []
    for p in sorted((out / "filter").glob("part-*.parquet")):
        rows += [r for r in pq.read_table(p).to_pylist() if r["status"] == "kept"]
    return rows


def test_inverse_pairs_are_the_kept_pairs_swapped(tmp_path: Path) -> None:
    records = filter_partitions(tmp_path, parts=2, pairs=3, edit=_with_inverse)
    summary = write_shards(tmp_path, records, samples_per_shard=4)
    kept = _kept_rows(tmp_path)
    samples = _samples(tmp_path)
    m = manifest(tmp_path)
    assert len(kept) > 0 and len(samples) == 2 * len(kept) == m["samples"] == summary["rows_out"]
    assert m["inverse_samples"] == m["forward_samples"] == len(kept) == summary["metrics"]["inverse_samples"]
    for row in kept:
        key = sample_key(row["id"], row["candidate"])
        fwd, inv = samples[key], samples[f"{key}-inv"]
        fj, ij = json.loads(fwd["json"]), json.loads(inv["json"])
        assert fj["inverse"] is False and "inverse_of" not in fj
        assert (ij["inverse"], ij["inverse_of"]) == (True, key)
        assert inv["input.png"] == fwd["edited.png"] == row["edited_image"]
        assert inv["edited.png"] == fwd["input.png"] == row["input_image"]
        assert inv["mask.png"] == fwd["mask.png"] and ij["mask_rle"] == fj["mask_rle"]
        assert inv["txt"].decode() == row["inverse_instruction"] == ij["instruction"] == fj["inverse_instruction"]
        assert ij["inverse_instruction"] == row["instruction"] == fwd["txt"].decode()
        assert (ij["caption"], ij["edited_caption"]) == (row["edited_caption"], row["caption"])
        assert (fj["edit_type"], ij["edit_type"]) == ("add_object", "remove_object")
        assert (ij["id"], ij["candidate"], ij["seed"]) == (row["id"], row["candidate"], row["seed"])
    assert validate(str(tmp_path), chain=False) == []
    # export-hf: both kinds of row in train, the `inverse` column to filter on.
    export_hf(str(tmp_path), str(tmp_path / "hf"))
    table = pq.read_table(sorted((tmp_path / "hf" / "data").glob("train-*.parquet")))
    rows = table.to_pylist()
    assert len(rows) == 2 * len(kept) and sum(r["inverse"] for r in rows) == len(kept)
    assert {r["inverse_of"] for r in rows if r["inverse"]} == {r["key"] for r in rows if not r["inverse"]}
    assert all(r["inverse_of"] is None for r in rows if not r["inverse"])


def test_without_inverse_instructions_nothing_changes(tmp_path: Path) -> None:
    records = filter_partitions(tmp_path, parts=1, pairs=3)
    summary = write_shards(tmp_path, records)
    m = manifest(tmp_path)
    samples = _samples(tmp_path)
    assert len(samples) == m["samples"] == sum(r["rows_out"] for r in records)
    assert not any(k.endswith("-inv") or "inverse" in json.loads(s["json"]) for k, s in samples.items())
    assert "inverse_samples" not in m and "forward_samples" not in m and "inverse_samples" not in summary["metrics"]
    export_hf(str(tmp_path), str(tmp_path / "hf"))
    rows = pq.read_table(sorted((tmp_path / "hf" / "data").glob("train-*.parquet"))).to_pylist()
    assert rows and not any(r["inverse"] or r["inverse_of"] for r in rows)


def test_validate_names_a_mislinked_inverse(tmp_path: Path) -> None:
    records = filter_partitions(tmp_path, parts=1, pairs=2, edit=_with_inverse)
    write_shards(tmp_path, records)
    samples = _samples(tmp_path)
    key = next(k for k in samples if k.endswith("-inv"))
    sample = dict(samples[key])
    meta = json.loads(sample["json"])
    sample["json"] = json.dumps({**meta, "inverse_of": "other-c0000"}).encode()
    assert any("inverse sample's key / inverse_of" in p for p in check_sample(sample))
    sample["json"] = json.dumps({**meta, "inverse": False}).encode()  # an inverse key on a forward sample
    assert any("do not match the key" in p for p in check_sample(sample))
    assert check_sample(samples[key]) == []
    # The chain check: every inverse has its forward sample, and the manifest counts them.
    forward = [k for k in samples if not k.endswith("-inv")]
    inverse = [k for k in samples if k.endswith("-inv")]
    m = manifest(tmp_path)
    assert _inverse_vs_forward(m, forward + inverse) == (forward, [])
    fwd, problems = _inverse_vs_forward(m, forward[1:] + inverse)
    assert fwd == forward[1:] and any("have no forward sample" in p for p in problems)
    assert any("manifest says" in p for p in _inverse_vs_forward({}, forward + inverse)[1])


def test_compute_per_sample_counts_inverse_pairs_as_free() -> None:
    metrics = {"unet_row_steps": 800.0, "unet_flops": 8e12, "candidates": 8}
    forward, both = compute_report(metrics, 4), compute_report(metrics, 4, 4)
    assert forward is not None and both is not None
    assert both["unet_row_steps_per_kept"] == forward["unet_row_steps_per_kept"] == 200.0  # per forward sample
    assert both["unet_row_steps_per_sample_with_inverse"] == 100.0
    assert both["unet_flops_per_sample_with_inverse"] == 1e12
    assert "inverse_samples" not in forward
    assert "with 4 inverse samples (no UNet work): 1e+12 UNet FLOPs, 100 row-steps" in format_report(both)
