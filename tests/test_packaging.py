"""The wheel installs one import name: `editgen` (issue 20 item 6).

Built from this checkout and installed without dependencies into a fresh venv: site-packages gains
`editgen/` and its dist-info alone (no `pipeline`, `cli`, `tiny`... to clash with other packages),
`top_level.txt` says `editgen`, the packages and their data files are inside it, and the console script
points into it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_exposes_only_editgen(tmp_path):
    src, wheels = tmp_path / "src", tmp_path / "wheels"  # a copy: setuptools writes build/ into its source
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv*", ".git", "build", ".cache", "__pycache__",
                                                             "*.egg-info", "demo-out*", "tests", "bench", "docs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, text=True, timeout=300)
    [wheel] = wheels.glob("editgen-*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True, timeout=300)
    probe = (
        "import importlib.metadata as m, json\n"
        "d = m.distribution('editgen')\n"
        "tops = sorted({f.parts[0] for f in d.files if f.parts[0] != '..' and not f.parts[0].endswith('.dist-info')})\n"
        "eps = [e.value for e in d.entry_points if e.group == 'console_scripts']\n"
        "import editgen, editgen.pipeline.errors\n"
        "print(json.dumps({'top_level': d.read_text('top_level.txt').split(), 'tops': tops, 'eps': eps,\n"
        "  'files': sorted(str(f) for f in d.files), 'path': list(editgen.__path__)}))\n"
    )
    import json

    got = json.loads(subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                                    timeout=120).stdout)
    assert got["top_level"] == ["editgen"] and got["tops"] == ["editgen"], got["tops"]
    assert got["eps"] == ["editgen.cli.main:main"]
    assert len(got["path"]) == 1 and "site-packages" in got["path"][0]  # no checkout joined when installed
    files = set(got["files"])
    for needed in ("editgen/pipeline/profiles/tiny.yaml", "editgen/pipeline/settings/run.py",
                   "editgen/filters/captions/data/nsfw_blocklist.txt", "editgen/prompts/system.txt",
                   "editgen/prompts/fewshot.jsonl", "editgen/stages/render.py", "editgen/cli/main.py"):
        assert needed in files, needed
