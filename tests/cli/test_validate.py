"""`editgen validate OUT`: exit 0 on intact shards, 1 with one line per problem otherwise."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from editgen.cli import validate as validate_mod
from editgen.output.shard_writer import build_tar
from tests.support import filter_partitions, manifest, shard_path, write_shards


@pytest.fixture
def out(tmp_path) -> Path:
    write_shards(tmp_path, filter_partitions(tmp_path, keep_fraction=0.7), samples_per_shard=4)
    return tmp_path


def run(out: Path, capsys) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser()
    validate_mod.add_arguments(parser)
    code = validate_mod.main(parser.parse_args([str(out), "--shards-only"]))
    return code, capsys.readouterr().out.strip().splitlines()


def test_valid_output(out, capsys):
    code, lines = run(out, capsys)
    assert code == 0 and lines[-1].startswith("valid: ")


def test_truncated_shard(out, capsys):
    shard = shard_path(out, 1)
    shard.write_bytes(shard.read_bytes()[:3000])
    code, lines = run(out, capsys)
    assert code == 1
    assert all(line.startswith(f"{_name(out, 1)}: ") for line in lines)
    text = "\n".join(lines)
    assert "truncated or altered" in text and "sha256" in text and "samples, manifest says 4" in text


def test_altered_shard_same_size(out, capsys):
    shard = shard_path(out, 0)
    data = bytearray(shard.read_bytes())
    data[-20_000] ^= 0xFF  # flip a byte inside the payload, size unchanged
    shard.write_bytes(bytes(data))
    code, lines = run(out, capsys)
    assert code == 1 and any(f"{_name(out, 0)}: sha256" in line for line in lines)


def _name(out: Path, index: int) -> str:
    return manifest(out)["shards"][index]["name"]


def test_missing_and_unlisted_shards(out, capsys):
    gen = manifest(out)["generation"]
    shard_path(out, 0).rename(out / "shards" / gen / "edits-000099.tar")
    (out / "shards" / "loose.tar").write_bytes(b"")
    code, lines = run(out, capsys)
    assert code == 1
    assert f"shards/{gen}/edits-000000.tar: listed in manifest but missing" in lines
    assert f"shards/{gen}/edits-000099.tar: shard not listed in the manifest" in lines
    assert "shards/loose.tar: shard not listed in the manifest" in lines


def test_other_generations_are_not_the_dataset(out, capsys):
    """An interrupted re-shard's generation beside the published one: readers ignore it."""
    other = out / "shards" / "gen-000000000000"
    other.mkdir()
    (other / "edits-000000.tar").write_bytes(shard_path(out, 0).read_bytes()[:100])
    parser = argparse.ArgumentParser()
    validate_mod.add_arguments(parser)
    code = validate_mod.main(parser.parse_args([str(out), "--shards-only"]))
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip().splitlines()[-1].startswith("valid: ")
    assert "1 unpublished generation(s)" in captured.err


def test_bad_image_and_missing_field_with_consistent_manifest(out, capsys):
    """A shard that matches its manifest entry but holds a corrupt image and incomplete JSON."""
    shard = shard_path(out, 0)
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            members.append((m.name, data))
    key = members[0][0].split(".")[0]
    fixed = []
    for name, data in members:
        if name == f"{key}.edited.png":
            data = b"\x89PNG garbage"
        if name == f"{key}.json":
            meta = json.loads(data)
            del meta["seed"]
            data = json.dumps(meta).encode()
        fixed.append((name, data))
    blob = build_tar(fixed)
    shard.write_bytes(blob)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["shards"][0]
    manifest["bytes"] += len(blob) - entry["bytes"]
    entry.update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    code, lines = run(out, capsys)
    assert code == 1
    assert lines == [
        f"{_name(out, 0)}: sample {key}: edited.png does not decode",
        f"{_name(out, 0)}: sample {key}: json lacks seed",
    ]


def test_missing_manifest(tmp_path, capsys):
    code, lines = run(tmp_path, capsys)
    assert code == 1 and "manifest.json: missing" in lines[0]


def test_valid_images_decode_check():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    assert validate_mod._decodes(buf.getvalue()) and not validate_mod._decodes(b"nope")


def test_mask_rle_must_describe_mask_png(out):
    """The sample JSON's mask_rle / mask_bbox / mask_area are checked against mask.png; a sample of before
    they existed passes."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(shard_path(out, 0), "rb") as f:
        sample = next(group_by_keys({**d, "__url__": "x"} for d in tar_file_iterator(f)))
    assert validate_mod.check_sample(sample) == []
    meta, key = json.loads(sample["json"]), sample["__key__"]
    counts = meta["mask_rle"]["counts"]
    for change, line in (({"mask_rle": {**meta["mask_rle"], "counts": [counts[0] + 1, counts[1] - 1, *counts[2:]]}},
                          "json mask_rle does not match mask.png"),
                         ({"mask_rle": {"size": [1, 1], "counts": [5]}}, "json mask_rle: rle: counts must"),
                         ({"mask_area": 0.5}, "json mask_bbox/mask_area do not match mask.png")):
        problems = validate_mod.check_sample({**sample, "json": json.dumps({**meta, **change}).encode()})
        assert len(problems) == 1 and problems[0].startswith(f"sample {key}: {line}"), problems
    old = {k: v for k, v in meta.items() if not k.startswith("mask_")}
    assert validate_mod.check_sample({**sample, "json": json.dumps(old).encode()}) == []
