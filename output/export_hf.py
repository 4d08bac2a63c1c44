"""Export editgen shards as a Hugging Face dataset folder in the hub layout:

    DEST/README.md                               dataset card: its YAML header names every split
    DEST/data/train-00000-of-00003.parquet       kept samples
    DEST/data/test-00000-of-00001.parquet        the held-out eval split (shard.eval_fraction)
    DEST/data/rejected-00000-of-00001.parquet    filter-rejected candidates (shard.export_rejected)
    DEST/export-<split>.json                     editgen's record of a split: its files, rows and source

so `datasets.load_dataset(DEST)` returns every split and diffusers' train_instruct_pix2pix.py runs on
`--dataset_name DEST` unmodified (it trains on `train` and takes the first three columns: input_image,
edit_prompt, edited_image). Two more columns trace a row back: `key` (the shard sample key
`<id>-cNNNN`) and `id` (the caption row's id, which names its source file and row). Then the edit mask:
`mask` (an Image: the sample's mask.png, all white where the engine gave no region), `mask_area`,
`mask_bbox` ([x, y, w, h]), `mask_words` and `mask_kind` (filters.pairs.masks; the sample JSON). Last,
`inverse` (a reversed pair of instruct.inverse, output.inverse: filter on it to train without them) and
`inverse_of` (its forward sample's key); both kinds of row are in `train`. Then `edit_type`, and for
multi-turn sessions (output.sessions) `session_id`, `turn` and `prev` (the previous turn's `key`), null
outside a session.

Splits: by default `train` (the kept samples; `--split` renames it), `test` (the run's held-out eval tars,
shard.eval_fraction) when it has them, and `rejected` when the run published rejected shards;
`rejected=True` exports only `rejected`, `rejected=False` only the kept ones (train and test).
An export rewrites only the splits it writes: another split's files are never deleted, and the card
lists every split DEST holds with its rows, then the run's own card (OUT/shards/README.md, output/card.py)
less its sections and header fields about the tars (their `dataset_info.features`: the parquet schema's
`huggingface` metadata declares these columns): the same license, categories, models, thresholds and
funnel. DEST must be new, empty (dot files aside, e.g. a cloned hub repo's .git) or an earlier export (it
has an export-<split>.json); any other folder is refused. The card is editgen's and is rewritten by each
export.

Written with pyarrow alone (the `datasets` package is optional): images use the `datasets` Image feature
storage layout, a struct {bytes, path}, and the schema carries the `huggingface` features metadata.

Publication (file names are fixed, as the hub layout wants): nothing half-done is ever read as the
export. On local disks the new `data` folder (the new split files plus hard links to the other splits'
files) is assembled beside DEST and swapped in with two renames, so a reader lists the old files or the
new ones (for an instant, none: it then fails rather than mixing); then each split's record and last
the card are written, so a split appears in the card only once its files are in place. On object
stores there is no rename: each file is one atomic PUT, written in place, then the records and the
card, and last the split's stale files (a shorter export's surplus) are deleted. The limit: a reader
listing `data/` while an export of the same split is under way may see some files of the previous
export and some of the new one (each whole); read the split's export-<split>.json, written after its
files, for the exact list, or export to a new DEST.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from editgen.filters.pairs.masks import mask_geometry
from editgen.output.card import CARD as RUN_CARD
from editgen.output.card import TEST_SPLIT, shared_parts
from editgen.output.manifest import (
    MANIFEST,
    SHARDS_DIR,
    entries,
    manifest_problem,
    manifest_url,
    parse_manifest,
    read_manifest_text,
)
from editgen.output.sessions import SESSION_FIELD
from editgen.output.shard_writer import whole_image_mask
from editgen.pipeline.errors import InputError
from editgen.pipeline.redact import redact_url
from editgen.pipeline.settings.model_edits import REPORT_HTML, REPORT_JSON, RUN_REPORT_DIR
from editgen.pipeline.storage import TMP_MARK, Storage

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: The judge's scores and reasons (stages/judge.py, docs/judge.md; null where no judge ran), then its combined score.
JUDGE_SCORES = ("judge_instruction", "judge_preservation", "judge_quality")
JUDGE_COLUMNS = (*(c for s in JUDGE_SCORES for c in (s, f"{s}_reason")), "judge_score")
COLUMNS = ("input_image", "edit_prompt", "edited_image", "key", "id", "mask", "mask_area", "mask_bbox", "mask_words",
           "mask_kind", "inverse", "inverse_of", "edit_type", "session_id", "turn", "prev", *JUDGE_COLUMNS)
_IMAGE = {"_type": "Image"}
_STRING = {"dtype": "string", "_type": "Value"}
SCHEMA = pa.schema(
    [("input_image", IMAGE_TYPE), ("edit_prompt", pa.string()), ("edited_image", IMAGE_TYPE),
     ("key", pa.string()), ("id", pa.string()), ("mask", IMAGE_TYPE), ("mask_area", pa.float64()),
     ("mask_bbox", pa.list_(pa.int32())), ("mask_words", pa.list_(pa.string())), ("mask_kind", pa.string()),
     ("inverse", pa.bool_()), ("inverse_of", pa.string()), ("edit_type", pa.string()),
     ("session_id", pa.string()), ("turn", pa.int32()), ("prev", pa.string()),
     *((c, pa.float64() if c == "judge_score" else pa.string() if c.endswith("_reason") else pa.int32())
       for c in JUDGE_COLUMNS)]
).with_metadata(
    {
        b"huggingface": json.dumps(
            {
                "info": {
                    "features": {  # `Sequence`: what every datasets version reads (4.x and later: a List)
                        "input_image": _IMAGE, "edit_prompt": _STRING, "edited_image": _IMAGE,
                        "key": _STRING, "id": _STRING, "mask": _IMAGE,
                        "mask_area": {"dtype": "float64", "_type": "Value"},
                        "mask_bbox": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"},
                        "mask_words": {"feature": _STRING, "_type": "Sequence"},
                        "mask_kind": _STRING, "inverse": {"dtype": "bool", "_type": "Value"}, "inverse_of": _STRING,
                        "edit_type": _STRING, "session_id": _STRING, "turn": {"dtype": "int32", "_type": "Value"},
                        "prev": _STRING,
                        **{c: {"dtype": "float64" if c == "judge_score" else "string" if c.endswith("_reason")
                               else "int32", "_type": "Value"} for c in JUDGE_COLUMNS},
                    }
                }
            }
        ).encode()
    }
)
REJECTED_SPLIT = "rejected"
CARD = "README.md"
_MARKER = re.compile(r"export-(\w+)\.json")


@dataclass
class SplitSet:
    """One split to write: its name, the shard set it comes from and that set's tars (manifest entries)."""

    split: str
    rejected: bool
    tars: list[dict[str, Any]]
    samples: int


class _Hashing:
    """A file read front to back (tarfile's stream mode), hashing every byte it hands out."""

    def __init__(self, f: Any) -> None:
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def iter_shard_samples(storage: Storage, tars: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Samples (webdataset's grouping of tar members by key) from manifest entries (tars named relative to
    OUT), in order; each tar is hashed as it streams and checked against the manifest's sha256 at its end,
    before anything is published (the split's record and the card are written last), so a damaged shard
    fails the export in one line."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    for entry in tars:
        name = entry["name"]
        with storage.open(name) as f:
            src = _Hashing(f)
            yield from group_by_keys({**d, "__url__": name} for d in tar_file_iterator(src))
            while src.read(1 << 20):  # the end-of-archive blocks tarfile leaves unread
                pass
        if src.h.hexdigest() != entry["sha256"]:
            raise InputError(f"{storage.url(name)}: sha256 does not match the manifest (damaged); "
                             "nothing exported (`editgen run --set run.verify_checksums=full` rewrites it)")


def _row(sample: dict[str, Any]) -> dict[str, Any]:
    key = sample["__key__"]

    def image(stem: str) -> dict[str, Any]:
        for ext in ("png", "jpg"):
            if f"{stem}.{ext}" in sample:
                return {"bytes": sample[f"{stem}.{ext}"], "path": f"{key}.{stem}.{ext}"}
        raise KeyError(f"{key}: no {stem} image")

    meta = json.loads(sample["json"])
    row = {"input_image": image("input"), "edit_prompt": sample["txt"].decode("utf-8"),
           "edited_image": image("edited"), "key": key, "id": str(meta["id"])}
    inverse_of, edit_type = meta.get("inverse_of"), meta.get("edit_type")
    return {**row, **_mask_columns(sample, meta, row["input_image"]["bytes"]), "inverse": meta.get("inverse") is True,
            "inverse_of": inverse_of if isinstance(inverse_of, str) else None,
            "edit_type": edit_type if isinstance(edit_type, str) and edit_type else None, **_session_columns(meta),
            **_judge_columns(meta)}


def _judge_columns(meta: dict[str, Any]) -> dict[str, Any]:
    """The judge's scores, reasons and combined score from the sample JSON (null where no judge ran)."""
    out: dict[str, Any] = {}
    for c in JUDGE_COLUMNS:
        v = meta.get(c)
        if c == "judge_score":
            out[c] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else None
        elif c.endswith("_reason"):
            out[c] = v if isinstance(v, str) else None
        else:
            out[c] = v if isinstance(v, int) and not isinstance(v, bool) else None
    return out


def _session_columns(meta: dict[str, Any]) -> dict[str, Any]:
    """session_id, turn, prev from the sample's `session` block (output.sessions); null outside a session."""
    block = meta.get(SESSION_FIELD)
    if not isinstance(block, dict):
        return {"session_id": None, "turn": None, "prev": None}
    prev, turn = block.get("prev"), block.get("turn")
    return {"session_id": str(block.get("id")), "turn": turn if isinstance(turn, int) else None,
            "prev": prev if isinstance(prev, str) else None}


def _mask_columns(sample: dict[str, Any], meta: dict[str, Any], input_image: bytes) -> dict[str, Any]:
    """`mask` (the sample's mask.png; the whole image, white, for a shard of before every sample had one),
    its area fraction and bounding box (computed from that image: filters.pairs.masks) and the words
    and kind the sample JSON names."""
    key = sample["__key__"]
    data = sample.get("mask.png")
    if data is None:
        from PIL import Image

        with Image.open(io.BytesIO(input_image)) as img:
            data = whole_image_mask(*img.size)
    try:
        geometry = mask_geometry(data)
    except ValueError:
        raise InputError(f"{sample.get('__url__', '?')}: sample {key}: mask.png does not decode; nothing exported "
                         "(`editgen validate OUT` lists every problem)") from None
    words, kind = meta.get("mask_words"), meta.get("mask_kind")
    return {"mask": {"bytes": data, "path": f"{key}.mask.png"}, "mask_area": geometry.area,
            "mask_bbox": geometry.bbox,
            "mask_words": [str(w) for w in words] if isinstance(words, list) else None,
            "mask_kind": kind if isinstance(kind, str) else None}


def _plan(src: Storage, manifest: dict[str, Any], split: str, rejected: bool | None) -> list[SplitSet]:
    """The splits to write: kept as `split` and the held-out eval tars as `test` (when the run has them)
    unless rejected=True, rejected as `rejected` unless rejected=False (by default only when the run
    published any). Nothing to write is an error."""
    has_rejected = isinstance(manifest.get("rejected"), dict)
    if rejected and not has_rejected:
        raise InputError(f"{src.root}: no rejected shards (run with --set shard.export_rejected=true)")
    held_out = int((manifest.get("eval") or {}).get("samples", 0))
    if held_out and split == TEST_SPLIT and not rejected:
        raise InputError(f"--split {split!r}: the run's eval split is exported as {TEST_SPLIT!r}; name the kept "
                         "samples' split otherwise")
    sets = []
    if not rejected:
        sets.append(SplitSet(split, False, entries(manifest), int(manifest.get("samples", 0))))
        if held_out:
            sets.append(SplitSet(TEST_SPLIT, False, entries(manifest, split="eval"), held_out))
    if rejected or (rejected is None and has_rejected):
        part = manifest["rejected"]
        sets.append(SplitSet(REJECTED_SPLIT, True, entries(manifest, True), int(part.get("samples", 0))))
    if rejected is None:  # the default: an empty rejected set is left out, not an error
        sets = [s for s in sets if s.samples or not s.rejected]
    for s in sets:
        if not s.samples:
            what = "rejected samples" if s.rejected else "samples"
            raise InputError(f"{src.root}: the published dataset has no {what}; nothing to export")
    return sets


def check_dest(dst: Storage) -> None:
    """DEST is new, empty (dot files aside) or an earlier export; anything else is one line, exit 2."""
    names = [n for n in dst.listdir() if not n.startswith(".")]
    if names and not any(_MARKER.fullmatch(n) for n in names):
        raise InputError(f"{dst.root}: exists and is not an editgen export (no export-<split>.json in it); "
                         "export to a new or empty folder")


def _source(src: Storage) -> tuple[dict[str, Any], str, str]:
    """(manifest, its sha256, its URL without credentials) of OUT's published dataset."""
    try:
        text, where = read_manifest_text(src)
    except FileNotFoundError:
        raise InputError(f"{manifest_url(src)}: missing (has the shard stage run?)") from None
    except ValueError:  # not UTF-8
        text, where = "", (MANIFEST,)
    try:
        manifest = parse_manifest(text, where)
        why = manifest_problem(manifest)
    except ValueError:
        why = "not JSON"
    if why is not None:
        raise InputError(f"{manifest_url(src)}: not an editgen manifest ({why})")
    return manifest, hashlib.sha256(text.encode()).hexdigest(), redact_url(src.url(*where))


def export_hf(
    out: str, dest: str, rows_per_file: int = 1000, split: str = "train", rejected: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Write DEST's splits from OUT's published shards (module doc); returns {split: rows written}."""
    if not re.fullmatch(r"\w+", split, re.ASCII) or split == REJECTED_SPLIT or rows_per_file < 1:
        raise InputError(f"--split {split!r} / --rows-per-file {rows_per_file}: expected a split name of "
                         f"letters, digits and _ other than {REJECTED_SPLIT!r}, and at least 1 row per file")
    src, dst = Storage(out, storage_options or {}), Storage(dest, storage_options or {})
    manifest, source_sha, source_url = _source(src)
    sets = _plan(src, manifest, split, rejected)
    check_dest(dst)
    stage = Storage(dst.path(f"{TMP_MARK}export-{uuid.uuid4().hex[:8]}"), storage_options or {}) \
        if dst.local else dst
    done = {s.split: _write_split(src, stage, s, rows_per_file) for s in sets}
    if dst.local:
        _swap_local(dst, stage, list(done))
    for s in sets:
        files, rows = done[s.split]
        marker = {"split": s.split, "files": [f"data/{f}" for f in files], "rows": rows, "rejected": s.rejected,
                  "rows_per_file": rows_per_file, "source": source_url, "source_manifest_sha256": source_sha}
        dst.write_text(json.dumps(marker, sort_keys=True, indent=1) + "\n", f"export-{s.split}.json")
    dst.write_text(dataset_card(_splits(dst), _rows(dst), _run_card(src), _copy_edit_report(src, dst)), CARD)
    for s in sets:  # object stores: a shorter export's surplus files (local disks: gone with the swap)
        for name in dst.listdir("data"):
            if name.startswith(f"{s.split}-") and name not in done[s.split][0]:
                dst.remove("data", name)
    return {name: rows for name, (_files, rows) in done.items()}


def _write_split(src: Storage, stage: Storage, s: SplitSet, rows_per_file: int) -> tuple[list[str], int]:
    """data/<split>-NNNNN-of-NNNNN.parquet under `stage`; returns (file names, rows)."""
    n_files = max(1, -(-s.samples // rows_per_file))
    files: list[str] = []
    written, buf = 0, []
    for sample in iter_shard_samples(src, s.tars):
        buf.append(_row(sample))
        if len(buf) >= rows_per_file:
            files.append(_write_part(stage, buf, s.split, len(files), n_files))
            written, buf = written + len(buf), []
    if buf or not files:
        files.append(_write_part(stage, buf, s.split, len(files), n_files))
        written += len(buf)
    return files, written


def _write_part(storage: Storage, rows: list[dict[str, Any]], split: str, i: int, n: int) -> str:
    name = f"{split}-{i:05d}-of-{n:05d}.parquet"
    storage.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), "data", name)
    return name


def _splits(dst: Storage) -> list[str]:
    """The splits DEST holds (those with a record), kept ones first."""
    found = []
    for name in dst.listdir():
        m = _MARKER.fullmatch(name)
        if m:
            try:
                rejected = bool(json.loads(dst.read_text(name)).get("rejected"))
            except (ValueError, AttributeError):
                rejected = False
            found.append((rejected, m.group(1)))
    return [split for _, split in sorted(found)]


#: The report `editgen run` writes for render.model_edits (docs/model_edits.md), copied beside the card.
EDIT_REPORT = (RUN_REPORT_DIR, (REPORT_JSON, REPORT_HTML))


def _copy_edit_report(src: Storage, dst: Storage) -> bool:
    """OUT's model-edit report into DEST/model_edits/ (the card links it); False when OUT has none."""
    folder, names = EDIT_REPORT
    if not all(src.exists(folder, n) for n in names):
        for name in names:  # an earlier export's report is not this dataset's
            if dst.exists(folder, name):
                dst.remove(folder, name)
        return False
    for name in names:
        dst.write_text(src.read_text(folder, name), folder, name)
    return True


def _rows(dst: Storage) -> dict[str, int]:
    """Rows of each split DEST holds, from its record (what the export wrote)."""
    found = {}
    for split in _splits(dst):
        try:
            found[split] = int(json.loads(dst.read_text(f"export-{split}.json")).get("rows"))
        except (ValueError, TypeError, AttributeError, FileNotFoundError):
            continue
    return found


def _run_card(src: Storage) -> str | None:
    """The run's own card (OUT/shards/README.md: output/card.py), None for an OUT published before cards."""
    try:
        return src.read_text(SHARDS_DIR, RUN_CARD)
    except (FileNotFoundError, ValueError):
        return None


def dataset_card(splits: list[str], rows: dict[str, int] | None = None, run_card: str | None = None,
                 edit_report: bool = False) -> str:
    """README.md: the YAML header `datasets` reads (one config, a data_files glob per split; the run card's
    license, task and size categories and tags), each split's rows, the columns, and the run card's account
    of how the data was made (output/card.py: its sections that do not describe the tars); with `edit_report`,
    a link to the render model's edit report copied beside it."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    fields, body = shared_parts(run_card)
    if fields:
        lines.append(yaml.safe_dump(fields, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n"))
    lines += ["---", "", "# editgen image-editing pairs", "",
              "Instruction-based image edits made by editgen, in the InstructPix2Pix format.",
              "Splits: " + ", ".join(f"`{s}`" for s in splits) + (f" (`{TEST_SPLIT}`: the run's held-out eval split)"
                                                                   if TEST_SPLIT in (rows or {}) else "") + ".", "",
              *(["| split | rows |", "|---|---|", *(f"| `{s}` | {n} |" for s, n in (rows or {}).items()), ""]
                if rows else []),
              "| column | what |", "|---|---|",
              "| `input_image` | the image before the edit |",
              "| `edit_prompt` | the edit instruction |",
              "| `edited_image` | the image after the edit |",
              "| `key` | the WebDataset sample key in the editgen shards (`<id>-cNNNN`, N = candidate) |",
              "| `id` | the caption row's id (source file and row) |",
              "| `mask` | the edit mask (white = the region the edit may change; all white where the engine gave "
              "no region) |",
              "| `mask_area` | the fraction of the image's pixels in the mask (1.0: the whole image) |",
              "| `mask_bbox` | the mask's bounding box `[x, y, w, h]` in pixels |",
              "| `mask_words` | the caption words the mask came from (null where the engine did not say) |",
              "| `mask_kind` | how the engine made the mask (e.g. `cross_attention`, `diffedit`, `local_blend`; "
              "null where it did not say) |",
              "| `inverse` | true for an inverse pair: a kept pair published reversed (its edited image as the "
              "input, the instruction that undoes the edit); filter on it to train without them |",
              "| `inverse_of` | an inverse pair's forward sample `key` (null for forward rows) |",
              "| `edit_type` | the edit's type from editgen's taxonomy (docs/edit_types.md; null where the dataset was "
              "made before edit types) |",
              "| `session_id` | a multi-turn session's id (docs/sessions.md; null outside a session) |",
              "| `turn` | the turn's index in its session, from 1 (null outside a session) |",
              "| `prev` | the `key` of the same candidate's previous turn, whose edited image is this row's input "
              "(null for turn 1 and outside a session) |",
              "| `judge_instruction`, `judge_preservation`, `judge_quality` | the VLM judge's scores 0-10 (instruction "
              "following, preservation of the rest, visual quality; docs/judge.md; null where no judge ran) |",
              "| `judge_*_reason` | the judge's one-sentence reason for each score |",
              "| `judge_score` | the weighted combined score the judge's top-k ranks by (judge.weights) |", ""]
    if edit_report:
        lines += ["## Model edits", "", "The render model was edited before rendering (TIME / erase / debias / "
                  "forget). What the edits changed and preserved: [model_edits/report.html](model_edits/report.html) "
                  "([REPORT.json](model_edits/REPORT.json)).", ""]
    return "\n".join(lines) + (f"\n{body}" if body else "")


def _swap_local(dst: Storage, stage: Storage, splits: list[str]) -> None:
    """Local disks: the other splits' files join the staged folder (hard links), then two renames
    replace DEST/data; a reader sees the old set or the new one (or, for an instant, none), never both."""
    live, staged = dst.path("data"), stage.path("data")
    os.makedirs(staged, exist_ok=True)
    if os.path.isdir(live):
        for name in os.listdir(live):
            if not any(name.startswith(f"{s}-") for s in splits) and not os.path.exists(os.path.join(staged, name)):
                os.link(os.path.join(live, name), os.path.join(staged, name))
        old = dst.path(f"{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
        os.rename(live, old)
        os.rename(staged, live)
        shutil.rmtree(old)
    else:
        os.rename(staged, live)
    shutil.rmtree(stage.root_path, ignore_errors=True)
    for name in os.listdir(dst.root_path):  # staging folders of killed exports
        if name.startswith(f"{TMP_MARK}export-") or name.startswith(f"{TMP_MARK}old-"):
            shutil.rmtree(os.path.join(dst.root_path, name), ignore_errors=True)
