"""Multi-turn sessions after render (issue 22 item 5): the filter's prefix rule feeding the shards, the
samples' session links and first input, a session never split across tars, the manifest's counts, inverse
pairs of session turns, and the loader's whole sessions. Rows are built as render would emit them: turn t's
input image is turn t-1's edited image of the same candidate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from editgen.filters.pairs.outside_mask import OUTSIDE_MASK_COLUMNS
from editgen.filters.pairs.sessions import SESSION_TURN_AFTER_FAILURE
from editgen.output.export_hf import export_hf
from editgen.output.loader import instruct_pix2pix_dataset, make_dataloader
from editgen.output.sessions import PREV_MISSING
from editgen.output.shard_writer import sample_key, write_dataset
from editgen.pipeline.config import build_config
from editgen.pipeline.sessions import SESSION_ID, TURN, turn_id
from editgen.pipeline.stage import count_reasons, part_name
from editgen.pipeline.storage import Storage
from editgen.stages.filter import apply_selection
from editgen.tiny.synthetic import encode
from tests.support import filter_partitions, manifest, tar_files, write_shards

wds = pytest.importorskip("webdataset")
SIZE = 24


def render_rows(sessions: int = 2, turns: int = 3, candidates: int = 2, inverse: bool = False) -> list[dict]:
    """Render-like rows, session by session, turn by turn, candidate by candidate."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(sessions):
        sid = f"sess{s}"
        base = encode(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        prev = dict.fromkeys(range(candidates), base)
        for t in range(1, turns + 1):
            for c in range(candidates):
                edited = encode(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
                row = {"id": turn_id(sid, t), "candidate": c, SESSION_ID: sid, TURN: t,
                       "caption": f"caption {s} {t - 1}", "edited_caption": f"caption {s} {t}",
                       "instruction": f"edit {t} of {sid}", "seed": 100 * s + c, "image_format": "png",
                       "input_image": prev[c], "edited_image": edited, "mask": None}
                if inverse:
                    row["inverse_instruction"] = f"undo edit {t} of {sid}"
                rows.append(row)
                prev[c] = edited
    return rows


def filtered(rows: list[dict], fail: set[tuple[str, int, int]]) -> pa.Table:
    """The filter's selection over made-up scores: the (session, turn, candidate)s in `fail` miss
    min_sim_direction."""
    table = pa.Table.from_pylist(rows)
    table = table.set_column(table.column_names.index(TURN), TURN, table[TURN].cast(pa.int32()))
    n = len(rows)
    direction = [0.1 if (r[SESSION_ID], r[TURN], r["candidate"]) in fail else 0.3 + 0.01 * r["candidate"]
                 for r in rows]
    scores = {"sim_direction": np.array(direction, np.float32), "sim_image": np.full(n, 0.9, np.float32),
              "sim_0": np.full(n, 0.3, np.float32), "sim_1": np.full(n, 0.3, np.float32),
              **{c: np.full(n, math.nan, np.float32) for c in OUTSIDE_MASK_COLUMNS}}
    return apply_selection(table, scores, build_config().filter, "tiny-clip")


def publish(root: Path, table: pa.Table, **shard) -> dict:
    """`table` as one filter partition, sharded by the shard stage."""
    sha, nbytes = Storage(str(root)).write_table(table, "filter", part_name(0))
    kept, dropped = count_reasons(table)
    record = {"stage": "filter", "partition": 0, "file": part_name(0), "sha256": sha, "bytes": nbytes,
              "rows_in": table.num_rows, "rows_out": kept, "dropped": dropped}
    return write_shards(root, [record], **shard)


def read_samples(out: Path, folder: str = "shards") -> list[tuple[str, dict]]:
    """(tar name, raw sample) in publication order."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    found = []
    for tar in tar_files(out, folder):
        with open(tar, "rb") as f:
            found += [(tar.name, s) for s in group_by_keys({**d, "__url__": str(tar)} for d in tar_file_iterator(f))]
    return found


def test_a_failing_turn_2_keeps_turn_1_and_the_shards_link_the_turns(tmp_path: Path) -> None:
    table = filtered(render_rows(), fail={("sess0", 2, 1)})
    reasons = {(r["id"], r["candidate"]): r["drop_reason"] for r in table.to_pylist()}
    assert reasons[("sess0-t2", 1)] == "below_sim_direction"
    assert reasons[("sess0-t3", 1)] == SESSION_TURN_AFTER_FAILURE
    summary = publish(tmp_path, table, samples_per_shard=2, export_rejected=True)
    samples = {s["__key__"]: s for _, s in read_samples(tmp_path)}
    assert summary["rows_out"] == len(samples) == 10 and summary["dropped"] == {}
    assert manifest(tmp_path)["sessions"] == {"sessions": 2, "turn_samples": {"1": 4, "2": 3, "3": 3}}
    assert sample_key("sess0-t2", 1) not in samples and sample_key("sess0", 1) in samples
    for key, s in samples.items():
        meta = json.loads(s["json"])
        block = meta["session"]
        assert block["id"] == meta[SESSION_ID] and block["turn"] == meta[TURN]
        assert block["first"] == sample_key(block["id"], meta["candidate"])
        assert s["first_input.png"] == samples[block["first"]]["input.png"]  # the session's first input
        if block["turn"] == 1:
            assert block["prev"] is None and block["first"] == key
        else:
            prev = samples[block["prev"]]  # resolves, to the same candidate's previous turn
            assert json.loads(prev["json"])["session"]["turn"] == block["turn"] - 1
            assert prev["edited.png"] == s["input.png"]
    assert len({frozenset(k for k in s if not k.startswith("__")) for s in samples.values()}) == 1
    rejected = {s["__key__"]: s for _, s in read_samples(tmp_path, "rejected")}  # linked the same way
    assert sorted(rejected) == [sample_key("sess0-t2", 1), sample_key("sess0-t3", 1)]
    assert all(s["first_input.png"] == samples[sample_key("sess0", 1)]["input.png"] for s in rejected.values())
    assert json.loads(rejected[sample_key("sess0-t3", 1)]["json"])["session"]["prev"] == sample_key("sess0-t2", 1)


def test_export_hf_has_the_session_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    publish(tmp_path, filtered(render_rows(sessions=1, turns=2), fail=set()))
    export_hf(str(tmp_path), str(tmp_path / "hf"))
    rows = pq.read_table(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet",
                         columns=["key", "session_id", "turn", "prev"]).to_pylist()
    assert rows == [{"key": sample_key(turn_id("sess0", t), c), "session_id": "sess0", "turn": t,
                     "prev": sample_key("sess0", c) if t == 2 else None} for t in (1, 2) for c in (0, 1)]


def test_a_session_is_never_split_across_tars(tmp_path: Path) -> None:
    publish(tmp_path, filtered(render_rows(sessions=3), fail=set()), samples_per_shard=1, max_shard_bytes=10240)
    order = [(tar, json.loads(s["json"])["session"]["id"]) for tar, s in read_samples(tmp_path)]
    assert len(order) == 18 and len({tar for tar, _ in order}) == 3  # one tar per session, over the limits
    runs = [sid for i, (_, sid) in enumerate(order) if i == 0 or order[i - 1][1] != sid]
    assert runs == ["sess0", "sess1", "sess2"]  # consecutive
    assert all(len({sid for t, sid in order if t == tar}) == 1 for tar, _ in order)


def test_a_turn_whose_previous_turn_is_not_published_is_dropped(tmp_path: Path) -> None:
    rows = [{**r, "status": "kept", "drop_reason": None} for r in render_rows(sessions=2, turns=3, candidates=2)]
    rows[0]["input_image"] = None  # sess0 turn 1 candidate 0: no image, so its turns 2, 3 cannot link
    rows = [r for r in rows if not (r[SESSION_ID] == "sess1" and r[TURN] == 2 and r["candidate"] == 1)]  # a quota
    summary = write_dataset(Storage(str(tmp_path)), rows, config_hash="h")
    assert summary["dropped"] == {"missing_image": 1, PREV_MISSING: 3}
    assert summary["rows_out"] == 12 - 1 - 3 - 1
    assert manifest(tmp_path)["sessions"] == {"sessions": 2, "turn_samples": {"1": 3, "2": 2, "3": 2}}


def test_inverse_pairs_of_session_turns_are_plain_pairs(tmp_path: Path) -> None:
    publish(tmp_path, filtered(render_rows(sessions=1, turns=2, inverse=True), fail=set()))
    samples = {s["__key__"]: s for _, s in read_samples(tmp_path)}
    m = manifest(tmp_path)
    assert len(samples) == 8 and m["inverse_samples"] == 4 and m["sessions"]["turn_samples"] == {"1": 2, "2": 2}
    inv = samples[sample_key("sess0-t2", 0) + "-inv"]
    meta = json.loads(inv["json"])
    assert "session" not in meta and meta["inverse_of"] == sample_key("sess0-t2", 0)
    assert inv["first_input.png"] == inv["input.png"]  # its own: every sample has the same members
    assert len({frozenset(k for k in s if not k.startswith("__")) for s in samples.values()}) == 1


def test_a_dataset_without_sessions_is_unchanged(tmp_path: Path) -> None:
    write_shards(tmp_path, filter_partitions(tmp_path, parts=1, pairs=2), samples_per_shard=2)
    assert "sessions" not in manifest(tmp_path)
    for _, s in read_samples(tmp_path):
        assert not any("first_input" in k for k in s) and "session" not in json.loads(s["json"])


def test_the_loader_yields_whole_sessions_in_turn_order(tmp_path: Path) -> None:
    publish(tmp_path, filtered(render_rows(inverse=True), fail={("sess0", 2, 1)}), samples_per_shard=3)
    kw = {"resolution": 16, "shuffle_shards": False, "shuffle_buffer": 0}
    chains = list(instruct_pix2pix_dataset(str(tmp_path), sessions=True, **kw))
    assert [len(c) for c in chains] == [3, 1, 3, 3]  # sess0 c0, c1 (turn 2 failed); sess1 c0, c1
    assert [c[0]["edit_prompt"] for c in chains] == ["edit 1 of sess0"] * 2 + ["edit 1 of sess1"] * 2
    for chain in chains:
        assert [t["edit_prompt"][5] for t in chain] == [str(i + 1) for i in range(len(chain))]
        for prev, turn in zip(chain, chain[1:], strict=False):  # one crop/flip draw: the turns stay aligned
            torch.testing.assert_close(turn["input_image"], prev["edited_image"])
    singles = list(instruct_pix2pix_dataset(str(tmp_path), **kw))
    assert len(singles) == 20  # the default: every turn and inverse pair a sample, as before
    batches = list(make_dataloader(str(tmp_path), batch_size=3, num_workers=0, sessions=True, **kw))
    assert [len(b) for b in batches] == [3, 1] and isinstance(batches[0][0], list)
    workers = make_dataloader(str(tmp_path), batch_size=1, num_workers=2, sessions=True, **kw)
    got = sorted((c[0]["edit_prompt"], len(c)) for b in workers for c in b)  # whole tars per worker: whole sessions
    assert got == sorted((c[0]["edit_prompt"], len(c)) for c in chains)


def test_the_loader_reads_a_dataset_without_sessions_as_one_turn_sessions(tmp_path: Path) -> None:
    write_shards(tmp_path, filter_partitions(tmp_path, parts=1, pairs=2), samples_per_shard=2)
    chains = list(instruct_pix2pix_dataset(str(tmp_path), resolution=16, sessions=True, shuffle_buffer=0))
    assert chains and all(len(c) == 1 for c in chains)
    assert len(chains) == len(list(instruct_pix2pix_dataset(str(tmp_path), resolution=16, shuffle_buffer=0)))


def test_ray_data_reads_a_session_dataset_with_one_schema(tmp_path: Path, ray_session) -> None:
    """Every sample has a first_input member (turn 1 and inverse pairs: their own input), so Ray Data builds
    one schema for the dataset."""
    import ray.data

    publish(tmp_path, filtered(render_rows(inverse=True), fail={("sess0", 2, 1)}), samples_per_shard=3)
    rows = ray.data.read_webdataset([str(p) for p in tar_files(tmp_path)]).take_all()
    assert len(rows) == 20 and all(r["first_input.png"] is not None for r in rows)


def test_validate_checks_session_blocks_and_links(tmp_path: Path) -> None:
    """`editgen validate` accepts the linked shards; a turn whose block names another turn, or whose previous
    turn is not published, is one line each (issue 22 item 5)."""
    from editgen.cli.validate import _broken_links, check_sample, validate

    publish(tmp_path, filtered(render_rows(), fail=set()), samples_per_shard=2)
    assert validate(str(tmp_path), chain=False) == []
    samples = {s["__key__"]: s for _, s in read_samples(tmp_path)}
    key = sample_key("sess0-t2", 1)
    meta = json.loads(samples[key]["json"])
    wrong = {**meta, "session": {**meta["session"], "turn": 3}}
    problems = check_sample({**samples[key], "json": json.dumps(wrong).encode()})
    assert len(problems) == 1 and "does not name this turn" in problems[0]
    links = {key: (sample_key("sess0", 1), sample_key("sess0", 1))}
    assert _broken_links(links, set(samples)) == []
    assert _broken_links(links, set(samples) - {sample_key("sess0", 1)}) == [
        f"sample {key}: its session's previous turn {sample_key('sess0', 1)} is not published",
        f"sample {key}: its session's first turn {sample_key('sess0', 1)} is not published"]
