"""`editgen`: training data for instruction-based image editing, from captions to WebDataset shards.

Exit codes: 0 success, 1 a stage failed or validation found problems, 2 bad config / input / output,
130 interrupted (SIGINT), 143 terminated (SIGTERM); both stop in order and a rerun resumes.
User errors print one line (`editgen: <what and where>`), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from editgen.pipeline.errors import StageFailed, Terminated, UserError
from editgen.pipeline.redact import redact_text

if TYPE_CHECKING:
    from editgen.pipeline.records import RunResult


def _config_args(p: argparse.ArgumentParser, rerun: bool = False) -> None:
    from editgen.pipeline.config import profile_names

    recorded = "; omitted on an existing OUT: the config recorded there" if rerun else ""
    p.add_argument("--profile", choices=profile_names(),
                   help=f"named profile to start from: tiny (offline CPU smoke), sd15, sdxl{recorded}")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help=f"YAML config file, merged over the profile (repeatable; later files win){recorded}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set ingest.limit=100 (repeatable; applied last)")


def add_storage_option(p: argparse.ArgumentParser) -> None:
    """--storage-option for every command that reads or writes OUT (kept out of config.yaml: secrets)."""
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec storage option for OUT/inputs, e.g. anon=false or client_kwargs.region_name=x "
                   "(repeatable; also $EDITGEN_STORAGE_OPTIONS as JSON); never written to OUT")


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    from editgen.pipeline.storage import parse_storage_options

    return parse_storage_options(getattr(args, "storage_option", None))


def _build_config(args: argparse.Namespace) -> Any:
    from editgen.pipeline.config import build_config

    extra: dict[str, Any] = {}
    if getattr(args, "input", None):
        extra.setdefault("ingest", {})["input"] = args.input
    if getattr(args, "limit", None) is not None:
        extra.setdefault("ingest", {})["limit"] = args.limit
    if getattr(args, "ray_address", None):
        extra.setdefault("ray", {})["address"] = args.ray_address
    if args.command == "run":  # a rerun starts from the config recorded in OUT (pipeline.rerun)
        from editgen.pipeline.rerun import run_config
        from editgen.pipeline.storage import Storage

        cfg, args.config_base = run_config(Storage(args.out, storage_options(args)), args.profile, args.config,
                                           args.overrides, extra)
        return cfg
    return build_config(profile=args.profile, files=args.config, overrides=args.overrides, extra=extra)


def _announce(args: argparse.Namespace, cfg: Any) -> None:
    """Before any work, on the terminal and in the run log: which config a rerun starts from, and which
    completed stages a changed config recomputes, and why."""
    from editgen.pipeline.rerun import recompute_notice
    from editgen.pipeline.runner import select_stages, stage_hashes
    from editgen.pipeline.storage import Storage

    log = logging.getLogger("editgen")
    if args.config_base:
        log.info("%s", args.config_base)
    if getattr(args, "from") is None:  # --from recomputes its stages by request
        selected = select_stages(args.only, None, args.to, cfg)
        notice = recompute_notice(Storage(args.out, storage_options(args)), cfg, selected, stage_hashes(cfg))
        if notice:
            log.warning("%s", notice)


def _ray_output_to_run_log(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`command` with Ray's own output routed to the run log (pipeline.logs.ray_output_to_run_log)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from editgen.pipeline.logs import ray_output_to_run_log

        with ray_output_to_run_log():
            return command(args)

    return run


@_ray_output_to_run_log
def cmd_run(args: argparse.Namespace) -> int:
    from editgen.pipeline.logs import RunLog
    from editgen.pipeline.progress import Progress
    from editgen.pipeline.runner import Runner

    cfg = _build_config(args)
    runlog = RunLog(cfg.run.log_level, console_level="WARNING" if args.quiet else "INFO")
    _announce(args, cfg)
    progress = Progress(enabled=cfg.run.progress and not args.no_progress and not args.quiet)
    runner = Runner(cfg, args.out, storage_options=storage_options(args), progress=progress, runlog=runlog)
    try:
        result = runner.run(only=args.only, from_stage=getattr(args, "from"), to_stage=args.to)
    finally:
        progress.stop()
    progress.console.print(summary_table(result))
    if result.lease_note:
        progress.console.print(redact_text(f"lease: {result.lease_note}"))
    for s in result.stages:
        if s.note:
            progress.console.print(redact_text(f"{s.name}: {s.note}"))
    if any(s.name == "render" for s in result.stages) and cfg.render.model_edits:  # docs/model_edits.md
        from editgen.cli.edit_model import write_run_report

        progress.console.print(redact_text(write_run_report(cfg, args.out, storage_options(args)) or ""))
    if any(s.name == "shard" for s in result.stages):
        for line in where_shards(args.out, storage_options(args)):
            progress.console.print(redact_text(line), markup=False, highlight=False, soft_wrap=True)
    return 0


def where_shards(out: str, options: dict[str, Any]) -> list[str]:
    """The end-of-run lines saying where the published shards are (none when nothing is published)."""
    import shlex

    from editgen.output.manifest import manifest_url, read_manifest
    from editgen.pipeline.storage import Storage

    storage = Storage(out, options)
    try:
        m = read_manifest(storage)
        folders = sorted({e["name"].rsplit("/", 1)[0] for e in m["shards"]})
    except (FileNotFoundError, ValueError, TypeError, KeyError, AttributeError):
        return []
    where = ", ".join(storage.url(f) + "/" for f in folders) or "no folder (no kept samples)"
    held_out = m.get("eval") or {}
    held = f" (+ eval: {len(held_out['shards'])} tars, {held_out['samples']} samples)" if held_out.get("shards") else ""
    return [f"shards: {len(m['shards'])} tars, {m.get('samples')} samples{held} in {where}; manifest "
            f"{manifest_url(storage)}; card {storage.url('shards', 'README.md')}",
            f"their URLs (webdataset, Ray Data, datasets): editgen shards {shlex.quote(out)}"]


def summary_table(result: RunResult) -> Any:
    """The end-of-run table: per stage partitions, rows, drops and speed."""
    from rich.table import Table

    from editgen.pipeline.progress import human_rate

    table = Table(title=f"editgen run: {redact_text(result.out)}")
    for col in ("stage", "partitions", "computed", "rows in", "kept", "dropped", "s", "speed", "top drop reasons"):
        table.add_column(col, justify="right" if col not in ("stage", "top drop reasons") else "left",
                         no_wrap=col != "top drop reasons")
    for s in result.stages:
        dropped = sum(s.dropped.values())
        top = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped.items(), key=lambda kv: -kv[1])[:4])
        # rows_in counts resumed partitions too: a rate only when this run computed them all, for a while
        rate = human_rate(s.rows_in / s.seconds) if s.computed == s.partitions and s.seconds >= 1 else "-"
        table.add_row(
            s.name, str(s.partitions), str(s.computed), str(s.rows_in), str(s.rows_out), str(dropped),
            f"{s.seconds:.1f}", rate, top,
        )
    return table


#: Columns `editgen status` may use when its output is not a terminal: lines are as long as the table.
PIPED_WIDTH = 1000


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from editgen.cli.status import collect, render_table, survival_table, types_table
    from editgen.pipeline.storage import Storage

    options = storage_options(args)
    storage = Storage(args.out, options)
    if not storage.exists():
        raise UserError(f"{args.out}: no such output directory")
    status = collect(args.out, options)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:  # piped: as wide as the table needs (rich would cut it at 80 columns)
        console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
        console.print(render_table(status))
        funnel = survival_table(status)  # rows and compute per stage, kept per GPU-hour (output/survival.py)
        if funnel is not None:
            console.print(funnel)
        types = types_table(status)  # requested vs achieved shares per edit type (docs/edit_types.md)
        if types is not None:
            console.print(types)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from editgen.pipeline.config import config_to_yaml, profile_names

    if args.list_profiles:
        print("\n".join(profile_names()))
        return 0
    print(config_to_yaml(_build_config(args)), end="")
    return 0


def _delegate(module: str) -> tuple[Callable[[argparse.ArgumentParser], None] | None, Callable[..., int] | None]:
    """Subcommands owned by other packages; absent (with a clear message) if their stack isn't installed."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None, None
    return getattr(mod, "add_arguments", None), getattr(mod, "main", None)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {redact_text(message)}\n")


#: Subcommands owned by other modules: (name, module, one-line summary).
DELEGATED = (
    ("pair", "editgen.cli.pair", "render one Prompt-to-Prompt pair by hand"),
    ("edit-model", "editgen.cli.edit_model", "apply TIME / erase / debias / forget edits, save the model"),
    ("preview", "editgen.cli.preview", "write OUT/preview.html"),
    ("validate", "editgen.cli.validate", "check shards against the manifest"),
    ("shards", "editgen.cli.shards", "print the published shard URLs (one per line, --brace, --json)"),
    ("export-hf", "editgen.cli.export_hf", "export the shards as a Hugging Face dataset folder (train, rejected)"),
    ("judge-agreement", "editgen.cli.judge_agreement",
     "agreement of every stored score with human labels (accuracy at the threshold, Spearman)"),
    ("train-probe", "editgen.cli.train_probe", "fine-tune InstructPix2Pix on OUT's shards (a probe model)"),
    ("evaluate", "editgen.cli.evaluate",
     "InstructPix2Pix's CLIP curve and MagicBrush's metrics of a model on an eval set (docs/evaluate.md)"),
)


def chosen_command(argv: list[str]) -> str:
    """The command word of `argv` ("" for none: `editgen -h`, `editgen --version`); the top-level parser
    has no option that takes a value, so it is the first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), "")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, the delegated modules of other commands are not imported
    (torch, torchvision: seconds per process), so `editgen status` does not pay for `train-probe`."""
    parser = _Parser(prog="editgen", usage="editgen [-h] [--version] COMMAND ...",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"editgen {editgen_version()}",
                        help="print editgen's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="editgen",
                                help=argparse.SUPPRESS)  # listed with summaries in the description

    _add_run(sub)

    st = _command(sub, "status", "per-stage progress and row accounting of an output directory",
                  "What each stage of OUT has done (from its completion records), a stage whose upstream or config "
                  "changed since it ran shown stale, and the live progress of a running `editgen run`.")
    st.add_argument("out", metavar="OUT", help="editgen output directory or URL")
    st.add_argument("--json", action="store_true", help="print the status as JSON (for scripts) instead of a table")
    add_storage_option(st)
    st.set_defaults(func=cmd_status)

    cf = _command(sub, "config", "print the effective config",
                  "Print the config a run with these flags would use (secrets redacted), or the profile names.")
    _config_args(cf)
    cf.add_argument("--list-profiles", action="store_true", help="print the profile names, one per line, and exit")
    cf.set_defaults(func=cmd_config)

    for name, module, help_text in DELEGATED:
        p = _command(sub, name, help_text, help_text)
        if name not in ("pair", "edit-model"):
            add_storage_option(p)
        if only is not None and name != only:
            continue  # another command's parser: never parsed in this process, its module never imported
        add, main = _delegate(module)
        p.description = _module_doc(module) or help_text
        if add and main:
            add(p)
            p.set_defaults(func=main)
        else:
            p.set_defaults(func=_missing(name, module))
    parser.description = _overview(sub)
    return parser


def _add_run(sub: Any) -> None:
    """`editgen run` and its flags."""
    run = _command(sub, "run", "run the pipeline (resumes where it stopped)",
                   "Run ingest -> [fetch] -> instruct -> render -> filter -> shard into OUT, resuming what an earlier "
                   "run left. On an existing OUT, a run without --profile/--config starts from the config recorded "
                   "in OUT (--set and --input apply on top) and says which stages a change recomputes, and why.")
    _config_args(run, rerun=True)
    run.add_argument("--input", action="append",
                     help="input path/glob/dir/URL (repeatable); omitted on a rerun: the recorded input")
    run.add_argument("--out", required=True, help="output directory or URL (s3://...)")
    run.add_argument("--limit", type=int, help="seeded sample of N input rows (sets ingest.limit)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--only", metavar="STAGE", help="run just this stage")
    group.add_argument("--from", metavar="STAGE", help="recompute this stage and everything downstream")
    run.add_argument("--to", metavar="STAGE", help="stop after this stage")
    run.add_argument("--ray-address", help="join an existing Ray cluster (else RAY_ADDRESS, else local)")
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no progress display and no info lines: warnings, errors and the final table only")
    add_storage_option(run)
    run.set_defaults(func=cmd_run)


def _command(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (the top-level list) and its description (`editgen NAME -h`)."""
    return sub.add_parser(name, help=help_text, description=description)


def _module_doc(module: str) -> str:
    """The first paragraph of a delegated tool's docstring: its `-h` description."""
    mod = sys.modules.get(module)
    doc = (mod.__doc__ or "") if mod else ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _overview(sub: Any) -> str:
    """The top-level description: what editgen is, then every command with its one-line summary."""
    width = max(len(a.dest) for a in sub._choices_actions)
    lines = [f"  {a.dest:<{width}}  {a.help}" for a in sub._choices_actions]
    return (f"{__doc__.splitlines()[0]}\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`editgen COMMAND -h` describes a command and its flags.")


def editgen_version() -> str:
    """The installed distribution's version, else (a source checkout not installed) pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("editgen")
    except PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"))
    except OSError:
        match = None
    return match[1] if match else "unknown"


def _missing(name: str, module: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        raise UserError(f"`editgen {name}` needs {module}, which is not installed in this environment "
                        "(install editgen[render])")

    return run


#: Commands whose OUT (and export-hf's DEST) must be a directory or not exist yet.
OUT_COMMANDS = ("run", "status", "validate", "preview", "shards", "export-hf", "judge-agreement", "train-probe")


def check_out_paths(args: argparse.Namespace) -> None:
    """An existing regular file named as OUT (or DEST) is one line and exit 2, before any work."""
    if args.command not in OUT_COMMANDS:
        return
    from editgen.pipeline.storage import Storage

    options = storage_options(args)
    for attr, what in (("out", "output directory"), ("dest", "export directory")):
        if getattr(args, attr, None):
            Storage(getattr(args, attr), options).check_not_a_file(what)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM: unwind the main thread like Ctrl-C (actors killed, lease released, log written) instead
    of dying mid-write; further SIGTERMs are ignored so that cleanup runs to its end."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Terminated.received = signal.Signals(signum).name
    raise Terminated(Terminated.received)


@contextlib.contextmanager
def _orderly_sigterm() -> Iterator[None]:
    """SIGTERM handled by `_terminate` while a command runs (in the main thread only, where signal
    handlers live; tests call main() in-process, so the previous handler comes back after). Ray's own
    SIGTERM handlers, installed by ray.init, are undone by pipeline.executor.own_sigterm."""
    Terminated.received = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=chosen_command(argv))
    args = parser.parse_args(argv)
    with _orderly_sigterm():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, its errors as one line and an exit code."""
    try:
        check_out_paths(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"editgen: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except StageFailed as exc:
        print(f"editgen: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (which Ray may hand on as a plain KeyboardInterrupt)
        if Terminated.received:
            print(f"editgen: terminated ({Terminated.received}); rerun the same command to resume", file=sys.stderr)
            return Terminated.exit_code
        print("editgen: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
