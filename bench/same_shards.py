"""Same inputs and config, same shards: fingerprint a tiny end-to-end run, or compare two fingerprints.

    python bench/same_shards.py run OUT FINGERPRINT.json     # run the tiny pipeline into a fresh OUT
    python bench/same_shards.py compare BEFORE.json AFTER.json

A fingerprint holds the sha256 of every tar under OUT/shards/ and OUT/rejected/ (named without its
generation folder), the manifest with its generation-dependent fields (`config_hash`, `generation`, the
folders in each shard name) set aside, and the sha256 of every stage's partition files. `compare` exits 1
on any difference in tars, manifest body or partitions, and reports the set-aside fields apart (they
follow the shard stage's config hash, which is the only thing allowed to move).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INPUT = ROOT.parent / "shared" / "data" / "laion_captions_1000.parquet"
LIMIT = 40
STAGES = ("ingest", "instruct", "render", "filter")
GENERATION_FIELDS = ("config_hash", "generation")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "editgen.cli.main", "run", "--profile", "tiny", "--input", str(INPUT),
           "--limit", str(LIMIT), "--out", str(out), "--no-progress", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def fingerprint(out: Path) -> dict[str, Any]:
    shards = out / "shards"
    found = out / "manifest.json"  # the earlier layout: OUT/shards/manifest.json
    manifest = json.loads((found if found.exists() else shards / "manifest.json").read_text())
    body = {k: v for k, v in manifest.items() if k not in GENERATION_FIELDS}
    for group in (body, body.get("rejected", {})):
        for entry in group.get("shards", []):
            entry["name"] = entry["name"].rsplit("/", 1)[-1]
    tars = {p.name: _sha(p) for d in (shards, out / "rejected") for p in sorted(d.rglob("*.tar"))}
    parts = {f"{s}/{p.name}": _sha(p) for s in STAGES for p in sorted((out / s).glob("part-*.parquet"))}
    stage_meta = json.loads((out / "shard" / "_stage.json").read_text())
    return {
        "tars": tars,
        "manifest_body": body,
        "manifest_generation": {k: manifest.get(k) for k in GENERATION_FIELDS},
        "partitions": parts,
        "shard_stage_hash": stage_meta.get("stage_hash"),
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> int:
    bad = 0
    for key in ("tars", "manifest_body", "partitions"):
        same = before[key] == after[key]
        bad += not same
        print(f"{key:15s} {'identical' if same else 'DIFFERENT'} ({len(after[key])} entries)")
    for key in ("manifest_generation", "shard_stage_hash"):
        print(f"{key:15s} before {before.get(key)}  after {after.get(key)}")
    one_hash = after["manifest_generation"]["config_hash"] == after["shard_stage_hash"]
    print(f"manifest config_hash == shard/_stage.json stage_hash after: {one_hash}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "run":
        run(Path(argv[1]))
        Path(argv[2]).write_text(json.dumps(fingerprint(Path(argv[1])), indent=1, sort_keys=True))
        print(f"{argv[2]}: fingerprint of {argv[1]}")
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        return compare(json.loads(Path(argv[1]).read_text()), json.loads(Path(argv[2]).read_text()))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
