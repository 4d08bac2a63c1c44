"""Every command README.md and docs/ show runs as written (issue 20 item 5).

The commands are read from the documents themselves (fenced shell blocks and inline `code` that starts
with a command word), so a renamed flag, a removed make target or a moved script fails here, not in a
user's terminal:

- `editgen ...`: parsed by the real argument parser (placeholders OUT, DEST, captions.parquet and the
  `...` shorthand filled in, `[a|b]` alternatives each tried); every `--set key=value` and `--profile`
  validated by the real config schema;
- `make X`: a target of the Makefile; `python path ...`: the script exists and its `--help` knows each
  flag used; `pytest paths`: the paths exist; `pip install -e '.[extras]'`: the extras exist.

Then the README's walkthrough runs for real on a small tiny-profile OUT: run, status, validate, shards,
preview, export-hf, config and the rerun with a changed setting.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from editgen.cli.main import build_parser
from editgen.pipeline.config import build_config
from tests.support import ROOT, cli_env

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # docs/engines/ too
WORDS = ("editgen", "make", "python", "pytest", "pip", "accelerate")
SHELL_BLOCKS = ("bash", "sh", "shell", "console", "")
#: Commands that are not editgen's to check: diffusers' example trainer is fetched by the user.
EXTERNAL = ("accelerate launch", "pip install --dry-run")
DEMO = ROOT / "examples" / "demo_captions.jsonl"
INLINE = re.compile(r"`((?:" + "|".join(WORDS) + r") [^`]+)`")


def documented_commands() -> list[tuple[str, str, bool]]:
    """(where, command, whole) for every command line the documents show: whole in a shell block, a
    mention (perhaps without its required arguments) inline in prose."""
    found = []
    for doc in DOCS:
        fenced, lang, pending = False, "", ""
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{n}"
            if line.strip().startswith("```"):
                fenced, lang = not fenced, line.strip()[3:].strip()
                continue
            if fenced and lang in SHELL_BLOCKS:
                text = pending + line.split("  #")[0].strip()
                if text.endswith("\\"):
                    pending = text[:-1] + " "
                    continue
                pending = ""
                if text.split(" ")[0] in WORDS:
                    found.append((where, text, True))
            elif not fenced:
                found += [(where, m[1], False) for m in re.finditer(INLINE, line)]
    return found


def alternatives(cmd: str) -> list[list[str]]:
    """The argv variants of a documented command: `[a|b]` -> without, with a, with b; placeholders filled."""
    cmd = cmd.replace("...", "--out OUT").replace("captions.parquet", str(DEMO))
    m = re.search(r"\[([^\]]+)\]", cmd)
    if not m:
        return [shlex.split(cmd)]
    variants = ["", *m[1].split("|")]
    return [argv for v in variants for argv in alternatives(cmd[: m.start()] + v + cmd[m.end():])]


def check_editgen(argv: list[str], complete: bool = True) -> None:
    """A whole command must parse; a mention in prose (`editgen run`) must name a command and its flags."""
    if not complete:
        parser = build_parser()
        commands = next(a for a in parser._actions if a.dest == "command").choices
        words = [a for a in argv[1:] if not a.startswith("-")]
        sub = commands[words[0]] if words else parser
        flags = [a.split("=")[0] for a in argv[1:] if a.startswith("-")]
        known = set(sub._option_string_actions) | set(parser._option_string_actions)
        assert (not words or words[0] in commands) and set(flags) <= known, f"{argv}: unknown command or flag"
        build_config(overrides=[v for k, v in zip(argv, argv[1:], strict=False) if k == "--set"])
        return
    args = build_parser().parse_args(argv[1:])  # SystemExit (2) on an unknown command or flag
    overrides = getattr(args, "overrides", None) or []
    profile = getattr(args, "profile", None)
    build_config(profile=profile, overrides=overrides)  # ConfigError on an unknown key or a wrong type


def check_make(argv: list[str]) -> None:
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    assert argv[1] in targets, f"make {argv[1]}: no such target"


def check_python(argv: list[str]) -> None:
    if argv[1] == "-m":
        if argv[2].startswith("editgen."):  # a project module run as a script: it exists and has a main
            import importlib.util

            spec = importlib.util.find_spec(argv[2])
            assert spec is not None and spec.origin, f"python -m {argv[2]}: no such module"
            assert "__main__" in Path(spec.origin).read_text(), f"python -m {argv[2]}: not runnable"
            return
        assert argv[2] == "pytest", argv
        check_pytest(argv[2:])
        return
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]}: no such script"
    flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    if flags:
        usage = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, env=cli_env(),
                               capture_output=True, text=True, timeout=120).stdout
        assert all(f in usage for f in flags), f"{argv}: flags not in its --help"


def check_pytest(argv: list[str]) -> None:
    for arg in argv[1:]:
        if arg.startswith("tests"):
            assert (ROOT / arg.split("::")[0]).exists(), f"{arg}: no such test path"


def check_pip(argv: list[str]) -> None:
    import tomllib  # Python 3.11+, as the test environments are

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for arg in argv:
        m = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
        if m:
            assert set(m[1].split(",")) <= set(extras), f"{arg}: unknown extras"


CHECKS = {"editgen": check_editgen, "make": check_make, "python": check_python, "pytest": check_pytest,
          "pip": check_pip}


def test_every_documented_command_parses_as_written():
    commands = documented_commands()
    assert len(commands) > 40  # the reader finds them (README's command block alone has 13)
    wrong = []
    for where, cmd, whole in commands:
        if cmd.startswith(EXTERNAL):
            continue
        for argv in alternatives(cmd):
            try:
                if argv[0] == "editgen":
                    check_editgen(argv, whole)
                else:
                    CHECKS[argv[0]](argv)
            except (AssertionError, SystemExit, Exception) as exc:  # noqa: BLE001 - report every failure
                wrong.append(f"{where}: {' '.join(argv)}: {type(exc).__name__}: {exc}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_a_wrong_command():
    """The checks can fail: a flag, a make target, a setting and a script that do not exist."""
    with pytest.raises(AssertionError):
        check_editgen(["editgen", "shards", "--bracex"], complete=False)
    for argv in (["editgen", "status", "OUT", "--jsn"], ["make", "demo-fast"],
                 ["editgen", "run", "--out", "OUT", "--set", "render.stpes=3"], ["python", "bench/nothing.py"]):
        with pytest.raises((AssertionError, SystemExit, Exception)):
            CHECKS[argv[0]](argv)


def editgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editgen.cli.main", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=600)


#: The walkthrough's run, small: few captions, few steps (the README's commands, plus these settings).
SMALL = ["--set", "ingest.limit=6", "--set", "render.steps=2", "--set", "render.candidates=2", "--no-progress"]


@pytest.mark.slow
def test_readme_walkthrough_runs(tmp_path):
    out, dest = tmp_path / "OUT", tmp_path / "DEST"
    first = editgen("run", "--profile", "tiny", "--input", str(DEMO), "--out", str(out), *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "editgen shards" in first.stdout + first.stderr  # where the shards are, said at the end
    for args in (["status", str(out)], ["status", str(out), "--json"], ["validate", str(out)],
                 ["shards", str(out)], ["shards", str(out), "--brace"], ["shards", str(out), "--json"],
                 ["preview", str(out)], ["export-hf", str(out), str(dest)], ["config", "--profile", "sd15"],
                 ["--version"], ["-h"]):
        proc = editgen(*args)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    assert json.loads(editgen("status", str(out), "--json").stdout)["stages"]
    urls = editgen("shards", str(out)).stdout.split()
    assert urls and all(Path(u).is_file() and u.endswith(".tar") for u in urls)
    assert (dest / "README.md").is_file() and list((dest / "data").glob("train-*.parquet"))
    rerun = editgen("run", "--out", str(out), "--set", "render.steps=3", "--no-progress")  # README: the recorded config
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "render.steps 2 -> 3" in rerun.stdout + rerun.stderr
