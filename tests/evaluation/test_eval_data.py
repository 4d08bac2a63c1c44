"""The eval set's readers (evaluation/data.py) alone, no model: which member is the target, captions,
folders, brace patterns, the Hugging Face image struct, --limit across files, and the checksums recorded."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editgen.evaluation.data import EvalReader
from editgen.output.shard_writer import build_tar
from editgen.pipeline.errors import InputError


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _members(key: str, seed: int, target: bool, meta: dict | None = None) -> list[tuple[str, bytes]]:
    found = [(f"{key}.input.png", png(seed)), (f"{key}.edited.png", png(seed + 1)), (f"{key}.txt", b"add a hat")]
    if target:
        found.append((f"{key}.target.png", png(seed + 2)))
    return found + [(f"{key}.json", json.dumps(meta or {}).encode())]


def test_tar_folders_brace_patterns_targets_and_limit(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "eval-000000.tar").write_bytes(build_tar(
        _members("a", 0, target=True, meta={"caption": "a man", "edited_caption": "a man with a hat"})
        + _members("b", 10, target=False, meta={"input_caption": "a cat", "caption": "ignored"})))
    (tmp_path / "d" / "eval-000001.tar").write_bytes(build_tar(_members("c", 20, target=False)))
    reader = EvalReader([str(tmp_path / "d")], None, {})
    samples = list(reader)
    assert [s.key for s in samples] == ["a", "b", "c"]
    assert samples[0].target_image == png(2)  # .target. wins over .edited.
    assert samples[1].target_image == png(11)  # else .edited. is the target
    assert (samples[0].input_caption, samples[0].edited_caption) == ("a man", "a man with a hat")
    assert (samples[1].input_caption, samples[1].edited_caption) == ("a cat", None)
    summary = reader.summary()
    assert summary["kind"] == "webdataset" and summary["samples"] == 3 and summary["samples_with_captions"] == 1
    assert [f["sha256"] for f in summary["read"]] == [
        hashlib.sha256((tmp_path / "d" / f"eval-00000{i}.tar").read_bytes()).hexdigest() for i in (0, 1)]
    brace = EvalReader([str(tmp_path / "d" / "eval-{000000..000001}.tar")], 2, {})
    assert [s.key for s in brace] == ["a", "b"] and len(brace.summary()["read"]) == 1  # the limit stops reading


def test_parquet_with_hugging_face_image_structs(tmp_path):
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"key": ["x", "y"], "input_image": pa.array([{"bytes": png(1), "path": None},
                                                                    {"bytes": png(2), "path": "y.png"}], image),
                      "instruction": ["add snow", "remove the car"],
                      "target_image": pa.array([None, {"bytes": png(3), "path": None}], image),
                      "input_caption": ["a street", None], "edited_caption": ["a snowy street", None]})
    pq.write_table(table, tmp_path / "e.parquet")
    samples = list(EvalReader([str(tmp_path / "e.parquet")], None, {}))
    assert [(s.key, s.input_image == png(i + 1)) for i, s in enumerate(samples)] == [("x", True), ("y", True)]
    assert samples[0].target_image is None and samples[1].target_image == png(3)
    assert samples[0].edited_caption == "a snowy street" and samples[1].input_caption is None


@pytest.mark.parametrize("members, expected", [
    ([("a.input.png", png(0)), ("a.txt", b"\xff\xfe")], "a.txt is not UTF-8"),
    ([("a.input.png", png(0)), ("a.txt", b"   ")], "empty instruction"),
    ([("a.txt", b"x")], "no a.input"),
    ([("a.input.png", png(0)), ("a.txt", b"x"), ("a.json", b"{not json")], "a.json is not JSON"),
    ([("a.input.png", png(0)), ("a.txt", b"x"), ("a.target.png", b"nope")], "target_image does not decode"),
])
def test_a_bad_sample_names_file_and_key(tmp_path, members, expected):
    (tmp_path / "t.tar").write_bytes(build_tar(members))
    with pytest.raises(InputError, match=expected) as err:
        list(EvalReader([str(tmp_path / "t.tar")], None, {}))
    assert str(tmp_path / "t.tar") in str(err.value) and "\n" not in str(err.value)
