"""`editgen shards OUT`: the published shard URLs (one per line, a brace pattern, JSON), absolute; one line
and exit 2 when there is nothing to list; `editgen run`'s closing lines say where the shards are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editgen.cli.main import main as editgen
from editgen.cli.main import where_shards
from editgen.cli.shards import brace_pattern
from tests.support import filter_partitions, manifest, write_shards

wds = pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards-cli")
    write_shards(root, filter_partitions(root, parts=2), samples_per_shard=3, export_rejected=True)
    return root


def printed(capsys, *args: str) -> tuple[int, str, str]:
    code = editgen(["shards", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_urls_brace_and_json(out, capsys):
    m = manifest(out)
    want = [str(out / e["name"]) for e in m["shards"]]
    code, text, _ = printed(capsys, str(out))
    assert code == 0 and text.splitlines() == want and len(want) >= 3
    assert all(Path(u).is_absolute() and Path(u).is_file() for u in want)
    code, text, _ = printed(capsys, str(out), "--brace")
    assert code == 0 and text == f"{out}/shards/{m['generation']}/edits-{{000000..{len(want) - 1:06d}}}.tar\n"
    assert list(wds.shardlists.expand_urls(text.strip())) == want
    code, text, _ = printed(capsys, str(out), "--json", "--rejected")
    got = json.loads(text)
    assert got["urls"] == [str(out / e["name"]) for e in m["rejected"]["shards"]] and got["set"] == "rejected"
    assert got["samples"] == m["rejected"]["samples"] and got["manifest"] == str(out / "manifest.json")
    assert all("/rejected/" in u for u in got["urls"])


@pytest.mark.parametrize("urls", [
    ["/o/shards/g/edits-000007.tar"],
    ["/o/shards/g/edits-000000.tar", "/o/shards/g/edits-000001.tar", "/o/shards/g/edits-000002.tar"],
    ["/o/shards/g/edits-000000.tar", "/o/shards/g/edits-000002.tar"],  # not contiguous: a list
    ["s3://b/o/a-000000.tar", "s3://b/o/b-000001.tar"],
])
def test_brace_pattern_expands_to_exactly_the_urls(urls):
    assert list(wds.shardlists.expand_urls(brace_pattern(urls))) == urls


def test_nothing_to_list_is_one_line(out, tmp_path, capsys):
    code, text, err = printed(capsys, str(tmp_path / "none"))
    assert code == 2 and not text and err.count("\n") == 1 and "manifest.json: missing" in err
    kept_only = tmp_path / "kept-only"
    write_shards(kept_only, filter_partitions(kept_only, parts=1))
    code, text, err = printed(capsys, str(kept_only), "--rejected")
    assert code == 2 and "no rejected shards" in err and err.count("\n") == 1
    (kept_only / "manifest.json").write_text("[1, 2]")
    code, text, err = printed(capsys, str(kept_only))
    assert code == 2 and "not an editgen manifest" in err and err.count("\n") == 1


def test_run_says_where_the_shards_are(out, tmp_path):
    lines = where_shards(str(out), {})
    m = manifest(out)
    assert lines[0].startswith(f"shards: {len(m['shards'])} tars, {m['samples']} samples in "
                               f"{out}/shards/{m['generation']}/")
    assert lines[1].endswith(f"editgen shards {out}")
    assert where_shards(str(tmp_path / "nothing"), {}) == []
