"""Ingest building blocks: cleaning, filters with named reasons, and every input format."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editgen.filters.captions.blocklist import blocklisted, load_blocklist
from editgen.filters.captions.clean import caption_key, clean_caption
from editgen.filters.captions.lang import guess_language
from editgen.filters.captions.rules import check_caption, junk_reason
from editgen.pipeline.config import build_config
from editgen.pipeline.errors import InputError
from editgen.sources.inputs import discover
from editgen.sources.plan import pack, pack_sample, read_input, read_segment
from editgen.stages.ingest import IngestStage, row_id

CHECK = dict(min_words=2, max_words=60, min_chars=8, max_chars=400, languages=("en",),
             min_language_confidence=0.5, drop_junk=True)


def reason(caption: str, terms: tuple[str, ...] = ("porn*", "nude")) -> str | None:
    return check_caption(caption, blocklist=terms, **CHECK)[0]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  A   red\tcar \n", "A red car"),
        ("Tom &amp;amp; Jerry &quot;cartoon&quot;", 'Tom & Jerry "cartoon"'),
        ("<b>Bold</b> <a href='x'>cat</a> photo", "Bold cat photo"),
        ("Cafe\u0301 au lait", "Caf\u00e9 au lait"),  # NFC
        ("zero\u200bwidth and \u202eRTL\u202c marks", "zerowidth and RTL marks"),
        ("Red barn in snow - Stock Photo", "Red barn in snow"),
        ("Sunset over lake | Shutterstock", "Sunset over lake"),
        ("blue-vintage-car-on-street.jpg", "blue vintage car on street"),
        ("Old mill\x85in\x01 fog \u2028 at dawn", "Old mill in fog at dawn"),  # controls are spaces
        ("Harbour at night \u2014 Getty Images Editorial", "Harbour at night"),
        ("Red barn in snow Stock Photo - Alamy", "Red barn in snow"),  # one removal exposes the next
        ("Fox in a field.JPEG", "Fox in a field"),
        (None, ""),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_caption_key_ignores_case_and_punctuation():
    assert caption_key("A Red Car!") == caption_key("a red car") == "a red car"


def test_filter_reasons():
    assert reason("") == "empty"
    assert reason("1234 5678") == "empty"
    assert reason("cat") == "too_short"
    assert reason(" ".join(["word"] * 70)) == "too_long"
    assert reason("x" * 500) == "too_long"
    assert reason("https://example.com/a/b.jpg") == "too_short"
    assert reason("https://example.com/a/b.jpg http://x.org/y") == "junk_url"
    assert reason("a red barn, see www.example.com/page?id=3 for more") is None
    assert junk_reason("IMG_20190312_1234") == "junk_filename"
    assert junk_reason("SKU AB-12345-XL") == "junk_code"
    assert junk_reason("WWW.EXAMPLE.COM/CAT") == "junk_url"  # the URL guard is case-insensitive
    assert junk_reason("dsc 0042") == "junk_filename" and junk_reason("holiday.png") == "junk_filename"
    assert junk_reason("99887766 #12-44 // 7") == "junk_symbols"
    assert reason("Free porn videos online today") == "blocklisted"
    assert reason("Nude beach at sunset in summer") == "blocklisted"
    assert reason("Die schöne Landschaft mit Bergen und Seen im Sommer") == "not_english"
    assert reason("A beautiful sunset over the lake") is None


def test_blocklist_word_boundaries():
    terms = tuple(load_blocklist())
    assert blocklisted("a classic brass lamp", terms) is None  # no 'ass' inside words
    assert blocklisted("Sexy dress", terms) == "Sexy"
    assert blocklisted("pornstar", ("porn*",)) == "pornstar"
    assert blocklisted("Essex county", terms) is None


def test_language_guess():
    assert guess_language("Stainless Steel Kitchen Sink Faucet with the pull down sprayer").lang == "en"
    assert guess_language("東京の夜景と富士山").lang != "en"
    assert guess_language("Красивый закат над озером").lang == "ru"


def test_row_id_stable():
    assert row_id("a.parquet", 3) == row_id("a.parquet", 3)
    assert row_id("a.parquet", 3) != row_id("a.parquet", 4)
    assert "." not in row_id("a.parquet", 3) and len(row_id("x", 0)) == 16


def read_plan(stage: IngestStage) -> list[pa.Table]:
    """Each planned partition's rows, read the way a worker reads them (no OUT, no Ray)."""
    stage.preflight()
    s = stage.settings
    parts = pack_sample(stage._files, s.rows_per_partition, s.limit, s.seed) if s.limit else pack(
        stage._files, s.rows_per_partition)
    return [pa.concat_tables([read_segment(seg, s.text_column, s.url_column) for seg in p.segments])
            for p in parts]


def _write_inputs(tmp_path):
    pq.write_table(pa.table({"TEXT": ["A red car on a road", None], "URL": ["http://a/1", "http://a/2"]}),
                   tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"TEXT": "A dog in the park", "URL": "http://b/1"}) + "\n" + "{not json\n"
        + json.dumps({"TEXT": 5, "URL": "u"}) + "\n"
    )
    (tmp_path / "c.csv").write_text("URL,TEXT\nhttp://c/1,\"Snowy mountain, at dawn\"\n")
    (tmp_path / "d.tsv").write_text("TEXT\tURL\nGreen apple on a table\thttp://d/1\n")
    (tmp_path / "e.txt").write_bytes(b"A cat on a sofa\n\xff\xfe broken bytes\n\n")


def test_all_formats_and_bad_rows(tmp_path):
    _write_inputs(tmp_path)
    files = discover([str(tmp_path)])
    assert [f.fmt for f in files] == ["parquet", "jsonl", "csv", "tsv", "txt"]
    tables = {f.name: read_input(f, "TEXT", "URL" if f.fmt != "txt" else None) for f in files}
    assert tables["a.parquet"]["text"].to_pylist() == ["A red car on a road", None]
    assert tables["b.jsonl"]["raw_error"].to_pylist() == [None, "invalid_json", "not_text"]
    assert tables["c.csv"]["text"].to_pylist() == ["Snowy mountain, at dawn"]
    assert tables["d.tsv"]["url"].to_pylist() == ["http://d/1"]
    assert tables["e.txt"]["raw_error"].to_pylist() == [None, "invalid_utf8", None]
    # glob
    assert [f.name for f in discover([str(tmp_path / "*.txt")])] == ["e.txt"]


def test_binary_column_and_huge_strings(tmp_path):
    big = "word " * 20_000  # 100k characters
    pq.write_table(
        pa.table({"TEXT": pa.array([b"ok caption text here", b"\xff\xfe\xfa", big.encode()], pa.binary()),
                  "URL": ["u1", "u2", "u3"]}),
        tmp_path / "bin.parquet",
    )
    cfg = build_config(extra={"ingest": {"input": [str(tmp_path / "bin.parquet")]}})
    stage = IngestStage(cfg)
    stage.preflight()
    stage.setup()
    out = stage.process_batch(read_plan(stage)[0])
    assert out["drop_reason"].to_pylist() == [None, "invalid_utf8", "too_long"]
    assert out.num_rows == 3


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: None, r"no such file or directory"),
        (lambda p: p.write_bytes(b"not a parquet file at all"), r"not a readable parquet file"),
        (lambda p: pq.write_table(pa.table({"caption": ["x"]}), p), r"column 'TEXT' not found"),
        (lambda p: pq.write_table(pa.table({"TEXT": pa.array([], pa.string()), "URL": pa.array([], pa.string())}), p),
         r"input is empty"),
        (lambda p: pq.write_table(pa.table({"TEXT": [[1, 2]], "URL": ["u"]}), p), r"column 'TEXT' has type list"),
    ],
)
def test_bad_input_errors(tmp_path, make, pattern):
    path = tmp_path / "in.parquet"
    make(path)
    cfg = build_config(extra={"ingest": {"input": [str(path)]}})
    with pytest.raises(InputError, match=pattern) as exc:
        IngestStage(cfg).preflight()
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_limit_is_seeded_and_deterministic(laion_parquet):
    def sample(seed):
        cfg = build_config(extra={"ingest": {"input": [str(laion_parquet)], "limit": 50, "seed": seed}})
        return read_plan(IngestStage(cfg))[0]["source_row"].to_pylist()

    a, b, c = sample(1), sample(1), sample(2)
    assert a == b and a != c and len(a) == 50 and a == sorted(a)
