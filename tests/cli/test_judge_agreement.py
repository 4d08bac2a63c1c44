"""`editgen judge-agreement OUT LABELS`: per stored score, accuracy at the run's threshold (or the best
threshold where none is configured) and Spearman against hand-computed values (ties included), CLIP alone
and the filter's decision as rows, unknown keys counted, the --json shape, the shards when OUT has no filter
partitions, and every bad labels file as one line and exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest

from editgen.cli.main import main as editgen
from editgen.pipeline.records import write_record
from editgen.pipeline.storage import Storage
from tests.support import filter_partitions, write_shards

KEYS = ["row00000-c0000", "row00000-c0001", "row00001-c0000", "row00001-c0001", "row00002-c0000", "row00002-c0001"]
DIRECTION = [0.10, 0.25, 0.30, 0.25, 0.15, 0.40]
OUTSIDE_L1 = [0.0, 0.05, None, 0.2, 0.3, 0.01]  # lower is better, no threshold configured
KEPT = [False, True, True, False, False, True]
PASS = [False, True, True, False, False, True]


def _known_scores(t: pa.Table) -> pa.Table:
    def put(table: pa.Table, name: str, values: list, typ: pa.DataType) -> pa.Table:
        return table.set_column(table.column_names.index(name), name, pa.array(values, typ)) if name in \
            table.column_names else table.append_column(name, pa.array(values, typ))

    t = put(t, "sim_direction", DIRECTION, pa.float32())
    t = put(t, "sim_image", [0.9] * 6, pa.float32())
    t = put(t, "outside_mask_l1", OUTSIDE_L1, pa.float32())
    t = put(t, "status", ["kept" if k else "dropped" for k in KEPT], pa.string())
    return put(t, "drop_reason", [None if k else "not_top_k" for k in KEPT], pa.string())


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agree")
    for rec in filter_partitions(root, parts=1, pairs=3, candidates=2, size=16, edit=_known_scores):
        write_record(Storage(str(root)), "filter", rec)
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = editgen(["judge-agreement", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _file(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _rows(report: dict) -> dict[str, dict]:
    return {r["score"]: r for r in report["rows"]}


def test_pass_fail_jsonl_against_hand_computed_values(out, tmp_path, capsys):
    lines = [json.dumps({"key": k, "label": "pass" if p else "fail"}) for k, p in zip(KEYS, PASS, strict=True)]
    lines += [json.dumps({"key": "ghost-c0000", "label": True}), ""]
    code, stdout, err = run(capsys, out, _file(tmp_path, "l.jsonl", "\n".join(lines)), "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    assert (rep["labelled"], rep["matched"], rep["unknown_keys"], rep["unknown_examples"]) == (7, 6, 1, ["ghost-c0000"])
    assert rep["source"] == "filter partitions" and rep["label_kind"] == "pass/fail" and rep["pass_at"] is None
    rows = _rows(rep)
    d = rows["sim_direction"]  # default threshold 0.2: predicted [F,T,T,T,F,T] vs labels: 5/6
    assert d["threshold"] == {"min": 0.2, "max": None} and d["n"] == 6
    assert d["accuracy"] == pytest.approx(5 / 6) and d["best_accuracy"] == pytest.approx(5 / 6)
    assert d["best_threshold"] == pytest.approx(0.25) and d["spearman"] == pytest.approx(12 / math.sqrt(17 * 13.5))
    o = rows["outside_mask_l1"]  # one sample without a value; lower is better; no threshold: best only
    assert o["n"] == 5 and o["accuracy"] is None and "no threshold configured" in o["note"]
    assert o["higher_is_better"] is False and o["best_threshold"] == pytest.approx(0.05)
    assert o["best_accuracy"] == pytest.approx(0.8) and o["spearman"] == pytest.approx(-2.5 / math.sqrt(75))
    assert rows["CLIP alone"]["accuracy"] == pytest.approx(5 / 6)  # sim_image passes everywhere here
    assert rows["filter decision"]["accuracy"] == 1.0 and rows["filter decision"]["spearman"] == pytest.approx(1.0)
    assert "sim_0" in rows and "outside_mask_ssim" not in rows  # only the scores OUT holds
    assert set(d) == {"score", "kind", "higher_is_better", "threshold", "n", "accuracy", "best_threshold",
                      "best_accuracy", "spearman", "note"}


def test_score_labels_csv_ties_pass_at_and_table(out, tmp_path, capsys):
    scores = [1, 4, 5, 2, 2, 5]
    text = "key,label\n" + "".join(f"{k},{s}\n" for k, s in zip(KEYS, scores, strict=True))
    labels = _file(tmp_path, "l.csv", text)
    code, stdout, _ = run(capsys, out, labels, "--json")
    rows = _rows(json.loads(stdout))
    # label ranks [1, 4, 5.5, 2.5, 2.5, 5.5] against direction ranks [1, 3.5, 5, 3.5, 2, 6]
    assert code == 0 and rows["sim_direction"]["spearman"] == pytest.approx(15.75 / math.sqrt(17 * 16.5))
    assert rows["filter decision"]["accuracy"] == 1.0  # >= 4 passes: the same split as KEPT
    code, stdout, _ = run(capsys, out, labels, "--json", "--pass-at", "5")
    assert json.loads(stdout)["label_passes"] == 3 - 1 and _rows(json.loads(stdout))["filter decision"]["accuracy"] \
        == pytest.approx(5 / 6)
    code, stdout, _ = run(capsys, out, labels)
    assert code == 0
    for text in ("judge-agreement", "sim_direction", "CLIP alone", "filter decision", ">= 0.2", "0.833", "matched"):
        assert text in stdout


@pytest.mark.parametrize("name,text,expected", [
    ("a.jsonl", '{"key": "k1", "label": "pass"}\n{"key": "k2", "label": "maybe"}\n',
     "a.jsonl: row 2: key 'k2': label 'maybe': expected pass, fail, true, false or an integer 1-5"),
    ("b.jsonl", '{"key": "k1", "label": 6}\n', "b.jsonl: row 1: key 'k1': label 6: expected pass"),
    ("c.jsonl", '{"key": "k1", "label": "pass"}\n{"key": "k1"\n', "c.jsonl: row 2: not JSON"),
    ("d.jsonl", '{"key": "k1", "value": "pass"}\n', 'd.jsonl: row 1: expected an object with "key" and "label"'),
    ("e.jsonl", '{"key": 7, "label": "pass"}\n', "e.jsonl: row 1: key 7: expected a non-empty string sample key"),
    ("f.csv", "key,label\nk1,pass\nk2,3\n", "f.csv: row 3: key 'k2': label '3' is a 1-5 score label but the rows "
     "before it are pass/fail labels"),
    ("g.csv", "k1,pass\nk1,fail\n", "g.csv: row 2: key 'k1': labelled again (first at row 1)"),
    ("h.csv", "k1,pass,extra\n", "h.csv: row 1: 3 fields; expected 2: key,label"),
    ("i.csv", "\n\n", "i.csv: no labels"),
    ("j.csv", b"k1,pass\n\xff\xfe,fail\n", "j.csv: byte 8: not UTF-8 text"),
])
def test_bad_labels_file_is_one_line_and_exit_2(out, tmp_path, capsys, name, text, expected):
    code, stdout, err = run(capsys, out, _file(tmp_path, name, text))
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err


def test_missing_file_and_no_key_matching(out, tmp_path, capsys):
    code, _, err = run(capsys, out, tmp_path / "absent.csv")
    assert code == 2 and "absent.csv: no such labels file" in err and err.count("\n") == 1
    code, _, err = run(capsys, out, _file(tmp_path, "x.csv", "nope-c0000,pass\nother-c0001,fail\n"))
    assert code == 2 and err.count("\n") == 1
    assert "none of its 2 keys is a sample in" in err and "'nope-c0000'" in err


def test_scores_from_shards_and_rejected_export_without_filter_partitions(tmp_path, capsys):
    """An OUT holding only the published data: kept samples from the shards, dropped ones from the
    rejected export, with the scores their JSON carries."""
    write_shards(tmp_path, filter_partitions(tmp_path, parts=1, pairs=3, candidates=2, size=16, edit=_known_scores),
                 export_rejected=True)
    labels = "".join(f"{k},{'pass' if p else 'fail'}\n" for k, p in zip(KEYS, PASS, strict=True))
    code, stdout, err = run(capsys, tmp_path, _file(tmp_path, "l.csv", labels), "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["source"] == "published and rejected shards" and rep["matched"] == 6
    rows = _rows(rep)
    assert rows["filter decision"]["accuracy"] == 1.0
    assert rows["sim_direction"]["spearman"] == pytest.approx(12 / math.sqrt(17 * 13.5))
