"""`editgen -h` / `--version`: every command and every flag says what it does (issue 20 item 7)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from editgen.cli.main import build_parser
from editgen.pipeline.config import profile_names
from tests.support import ROOT, cli_env


def _walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Every command without a description or summary and every option or argument without help."""
    missing = [] if (parser.description or "").strip() else [f"{path}: no description"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if not (summaries.get(name) or "").strip():
                    missing.append(f"{path} {name}: no one-line summary")
                missing += _walk(child, f"{path} {name}")
        elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help text")
    return missing


def test_every_command_and_flag_has_help():
    parser = build_parser()
    assert _walk(parser, "editgen") == []
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    overview = parser.format_help()
    for name in commands:  # the top-level description lists every command with its summary
        assert re.search(rf"(?m)^  {re.escape(name)}\s+\S", overview), name


def test_walk_catches_a_flag_without_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    commands["status"].add_argument("--undocumented", action="store_true")
    assert _walk(parser, "editgen") == ["editgen status --undocumented: no help text"]


def test_version():
    proc = subprocess.run([sys.executable, "-m", "editgen.cli.main", "--version"], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    want = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (Path(ROOT) / "pyproject.toml").read_text())[1]
    assert proc.returncode == 0 and proc.stdout.strip() == f"editgen {want}", proc.stderr


def test_pair_run_and_edit_model_accept_the_same_profiles():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices

    def choices(command: str) -> list[str]:
        return sorted(next(a for a in commands[command]._actions if "--profile" in a.option_strings).choices)

    assert choices("run") == choices("config") == choices("pair") == choices("edit-model") == profile_names()


def test_light_commands_import_no_torch(tmp_path: Path) -> None:
    """`--version`, `status`, `validate`, `shards` and a `run` refused on its input import neither torch nor
    torchvision (seconds per call: a delegated command's module is imported only when it is the command, and
    the filter's scoring modules import torch where they compute)."""
    code = (
        "import sys\nfrom editgen.cli.main import main\n"
        f"out = {str(tmp_path / 'out')!r}\n"
        "for argv in (['--version'], ['status', out], ['validate', out], ['shards', out],\n"
        "             ['run', '--profile', 'tiny', '--input', out + '.jsonl', '--out', out]):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'diffusers', 'ray') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
