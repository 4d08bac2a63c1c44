"""Human labels of published samples for `editgen judge-agreement` (docs/calibration.md).

A file holds one label per sample key, as JSON lines (`{"key": "row00001-c0000", "label": "pass"}`) or CSV
(`key,label`, an optional `key,label` header). A label is pass/fail (`pass`, `fail`, JSON `true`/`false`,
CSV `true`/`false`) or a 1-5 score, one kind per file. Anything else is one line naming the file, the row,
the key and what was expected (InputError: exit 2), never a traceback and never a silently skipped row.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from editgen.pipeline.errors import InputError
from editgen.pipeline.storage import open_filesystem

PASS_FAIL = "pass/fail"
SCORE = "1-5 score"
MAX_BYTES = 64 << 20
EXPECTED = "expected pass, fail, true, false or an integer 1-5"
_WORDS = {"pass": True, "fail": False, "true": True, "false": False}


@dataclass
class Labels:
    """key -> label as a number (pass 1, fail 0, or the 1-5 score), in file order, and the file's kind."""

    path: str
    kind: str = ""
    values: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def passed(self, key: str, pass_at: int) -> bool:
        """pass/fail as labelled; a score passes at `pass_at` or above."""
        value = self.values[key]
        return value >= 1 if self.kind == PASS_FAIL else value >= pass_at

    def add(self, row: int, key: object, label: object) -> None:
        where = f"{self.path}: row {row}"
        if not isinstance(key, str) or not key.strip():
            raise InputError(f"{where}: key {_short(key)}: expected a non-empty string sample key")
        key = key.strip()
        kind, value = _parse(label)
        if kind is None:
            raise InputError(f"{where}: key {_short(key)}: label {_short(label)}: {EXPECTED}")
        if self.kind and kind != self.kind:
            raise InputError(f"{where}: key {_short(key)}: label {_short(label)} is a {kind} label but the rows "
                             f"before it are {self.kind} labels; expected one kind per file")
        if key in self.values:
            raise InputError(f"{where}: key {_short(key)}: labelled again (first at row {self.rows[key]}); "
                             "expected one label per key")
        self.kind, self.values[key], self.rows[key] = kind, value, row


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse(label: object) -> tuple[str | None, float]:
    """(kind, value) of one label; kind None when it is not one."""
    if isinstance(label, bool):
        return PASS_FAIL, float(label)
    if isinstance(label, int) and 1 <= label <= 5:
        return SCORE, float(label)
    if isinstance(label, float) and label.is_integer() and 1 <= label <= 5:
        return SCORE, label
    if isinstance(label, str):
        word = label.strip().lower()
        if word in _WORDS:
            return PASS_FAIL, float(_WORDS[word])
        if word in ("1", "2", "3", "4", "5"):
            return SCORE, float(word)
    return None, 0.0


def read_labels(path: str) -> Labels:
    """The labels in `path` (a local path or URL); InputError on a bad file or row."""
    text = _read_text(path)
    first = next((line.lstrip() for line in text.splitlines() if line.strip()), "")
    labels = Labels(path)
    if first.startswith("{"):
        _read_jsonl(text, labels)
    else:
        _read_csv(text, labels)
    if not labels.values:
        raise InputError(f"{path}: no labels; expected JSON lines {{\"key\": ..., \"label\": ...}} or CSV key,label")
    return labels


def _read_text(path: str) -> str:
    try:
        fs, where = open_filesystem(path)
        if fs.size(where) > MAX_BYTES:
            raise InputError(f"{path}: over {MAX_BYTES >> 20} MiB; expected a small labelled sample")
        data = fs.cat_file(where)
    except FileNotFoundError:
        raise InputError(f"{path}: no such labels file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a directory; expected a labels file (JSONL or CSV)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the labels file ({exc.strerror or type(exc).__name__})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: byte {exc.start}: not UTF-8 text; expected JSONL or CSV") from None


def _read_jsonl(text: str, labels: Labels) -> None:
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise InputError(f"{labels.path}: row {row}: not JSON; expected {{\"key\": ..., \"label\": ...}} "
                             "on every line") from None
        if not isinstance(obj, dict) or "key" not in obj or "label" not in obj:
            raise InputError(f"{labels.path}: row {row}: expected an object with \"key\" and \"label\"")
        labels.add(row, obj["key"], obj["label"])


def _read_csv(text: str, labels: Labels) -> None:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for fields in reader:
            row = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != 2:
                raise InputError(f"{labels.path}: row {row}: {len(fields)} fields; expected 2: key,label")
            if not labels.values and [f.strip().lower() for f in fields] == ["key", "label"]:
                continue  # the header
            labels.add(row, fields[0], fields[1])
    except csv.Error as exc:
        raise InputError(f"{labels.path}: row {reader.line_num}: not CSV ({exc}); expected key,label") from None
