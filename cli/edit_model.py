"""``editgen edit-model``: apply closed-form edits once and save a complete diffusers folder.

The folder (safetensors only) is usable as ``render.model``; ``model_edits.json`` inside it says what was
done. The edit flags are shared with ``editgen pair`` so one pair shows an edit's effect first. Bad
prompts or edits that cannot be aligned print one ``error:`` line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from editgen.cli.render_model import PROFILE_NAMES, quiet_libraries, resolve_model
from editgen.pipeline.settings.model_edits import (
    DebiasEdit,
    EditReportConfig,
    EditSet,
    EraseEdit,
    ForgetEdit,
    ModelEdit,
    TimeEdit,
)

if TYPE_CHECKING:
    from editgen.filters.pairs.clip_score import ClipScorer
    from editgen.p2p.model_edit.solve import EditReport
    from editgen.pipeline.config import EditgenConfig

PROG = "editgen edit-model"
#: --forget-X flags -> ForgetEdit fields (defaults shown in --help).
FORGET_OPTIONS = {name.replace("_", "-"): f.default for name, f in ForgetEdit.model_fields.items()
                  if name not in ("kind", "concept")}
#: which edit flag each attached flag must follow
ATTACH = {"anchor": "erase", "attribute": "debias", "weight": "debias",
          **{f"forget-{opt}": "forget" for opt in FORGET_OPTIONS}}
EDITS_JSON = "model_edits.json"


class _Ordered(argparse.Action):
    """Keeps every edit flag in command-line order, so --anchor / --attribute / --weight attach to the
    --erase / --debias before them."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        flags = list(getattr(namespace, "model_edit_flags", None) or [])
        flags.append((self.dest, str(values)))
        namespace.model_edit_flags = flags


def add_edit_flags(parser: argparse.ArgumentParser) -> None:
    """The model-edit flags shared by ``edit-model`` and ``pair``."""
    parser.set_defaults(model_edit_flags=[])
    for flag, meta, help_text in (
        ("--edit", "SOURCE=>DESTINATION", "TIME edit (repeatable), e.g. 'a pack of roses=>a pack of blue roses'"),
        ("--erase", "CONCEPT", "map CONCEPT onto --anchor (default: the empty prompt); repeatable"),
        ("--anchor", "A", "anchor of the preceding --erase"),
        ("--debias", "CONCEPT", "map CONCEPT onto a mix of the --attribute prompts after it"),
        ("--attribute", "A", "attribute prompt of the preceding --debias (repeatable)"),
        ("--weight", "W", "weight of the preceding --attribute (default: equal shares)"),
        ("--forget", "CONCEPT", "Forget-Me-Not: optimise K/V so CONCEPT's tokens get no attention; repeatable"),
        *((f"--forget-{opt}", opt.upper(), f"{opt} of the preceding --forget (default {default})")
          for opt, default in FORGET_OPTIONS.items()),
    ):
        parser.add_argument(flag, dest=flag[2:], action=_Ordered, metavar=meta, help=help_text)
    parser.add_argument("--lambda", dest="edit_lambda", type=float, default=0.1, help="λ of the closed form")
    parser.add_argument("--preserve", action="append", default=[], metavar="PROMPT",
                        help="prompt whose projections must not move (repeatable)")


def _weights(flags: list[tuple[str, str]]) -> list[float]:
    try:
        return [float(v) for k, v in flags if k == "weight"]
    except ValueError:
        raise ValueError(f"--weight expects numbers, got {[v for k, v in flags if k == 'weight']}") from None


def _group(flags: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    groups: list[list[tuple[str, str]]] = []
    for key, value in flags:
        if key not in ATTACH:
            groups.append([(key, value)])
        elif not groups or groups[-1][0][0] != ATTACH[key]:
            raise ValueError(f"--{key} {value!r} must follow --{ATTACH[key]}")
        else:
            groups[-1].append((key, value))
    return groups


def _forget(concept: str, rest: list[tuple[str, str]]) -> ForgetEdit:
    """A ``--forget`` and its ``--forget-X`` options (numbers checked by the schema: NaN, inf, <= 0 fail)."""
    options: dict[str, object] = {}
    for key, value in rest:
        name = key.removeprefix("forget-")
        kind = float if name == "lr" else int
        try:
            options[name.replace("-", "_")] = kind(value)
        except ValueError:
            raise ValueError(f"--{key} expects {'a number' if kind is float else 'an integer'}, got {value!r}") \
                from None
    return ForgetEdit(concept=concept, **options)  # type: ignore[arg-type]


def _edit(group: list[tuple[str, str]]) -> ModelEdit:
    (key, value), rest = group[0], group[1:]
    if key == "edit":
        source, sep, destination = value.partition("=>")
        if not sep:
            raise ValueError(f"--edit expects SOURCE=>DESTINATION, got {value!r}")
        return TimeEdit(source=source.strip(), destination=destination.strip())
    if key == "forget":
        return _forget(value, rest)
    if key == "erase":
        anchors = [v for _, v in rest]
        if len(anchors) > 1:
            raise ValueError(f"--erase {value!r} has {len(anchors)} anchors")
        return EraseEdit(concept=value, anchor=anchors[0] if anchors else "")
    attributes = [v for k, v in rest if k == "attribute"]
    if not attributes:
        raise ValueError(f"--debias {value!r} needs at least one --attribute")
    weights = _weights(rest)
    return DebiasEdit(concept=value, attributes=attributes, weights=weights or None)


def edit_set_from_args(args: argparse.Namespace) -> EditSet | None:
    """The edit set the flags describe (None without edits); raises ``ValueError`` with one clear line."""
    groups = _group(list(getattr(args, "model_edit_flags", []) or []))
    if not groups:
        if args.preserve:
            raise ValueError("--preserve needs at least one edit (--edit, --erase, --debias or --forget)")
        return None
    try:
        return EditSet(edits=[_edit(g) for g in groups], lam=args.edit_lambda, preserve=args.preserve)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``edit-model`` options (wired into the ``editgen`` CLI)."""

    parser.add_argument("--profile", default="sd15", choices=PROFILE_NAMES,
                        help="pipeline profile whose render model is edited (default %(default)s)")
    parser.add_argument("--model", help="hub id or local diffusers folder (overrides the profile's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (the solve is float64 either way)")
    parser.add_argument("--dtype", default="float32", help="dtype the model is loaded, edited and saved in; "
                        "render in the same dtype for bit-identical weights")
    add_edit_flags(parser)
    parser.add_argument("--report", action="store_true", help="also write REPORT.json and report.html: the same "
                        "seeded prompts from the original and the edited model, compared (docs/model_edits.md)")
    parser.add_argument("--report-steps", type=int, default=None, metavar="N", help="sampler steps per report image")
    parser.add_argument("--report-size", type=int, default=None, metavar="PX", help="report image side")
    parser.add_argument("--report-seed", type=int, action="append", default=None, metavar="S",
                        help="report seed (repeatable; default 0)")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or an earlier edit-model folder)")


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def report_settings(args: argparse.Namespace) -> EditReportConfig | None:
    """The report the flags ask for (None without --report); raises ``ValueError`` with one line."""
    if not args.report:
        return None
    given = {"steps": args.report_steps, "size": args.report_size, "seeds": args.report_seed}
    try:
        return EditReportConfig(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"--report-{err['loc'][0]}: {err['msg']}") from None


def report_scorer(args: argparse.Namespace) -> ClipScorer:
    """The profile's filter CLIP (loaded before any edit, so a missing CLIP fails first)."""
    from editgen.filters.pairs.clip_score import ClipScorer
    from editgen.pipeline.config import build_config

    try:
        return ClipScorer.from_config(build_config(profile=args.profile).filter)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"--report: cannot load the {args.profile} profile's filter CLIP: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def write_edit_report(args: argparse.Namespace, model: str, edited: object, edits: EditSet,
                      cfg: EditReportConfig, scorer: ClipScorer, folder: Path) -> list[str]:
    """Load the original model again, render the report's prompts from both, write it; the flagged prompts."""
    from editgen.p2p.generate import load_pipeline
    from editgen.p2p.model_edit.report import build_report, write_report

    original = load_pipeline(model, args.device, args.dtype)
    report = build_report(original, edited, edits, cfg, scorer)
    write_report(report, folder)
    return list(report.body["flagged"])


def _check_out(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / EDITS_JSON).exists())):
        raise ValueError(f"--out {str(folder)!r} exists and is not an edit-model folder; refusing to overwrite")


def save_edited(p2p: object, folder: Path, report: EditReport, base_model: str, dtype: str) -> None:
    """The whole pipeline as safetensors plus ``model_edits.json`` (written last: its presence means done)."""
    (folder / EDITS_JSON).unlink(missing_ok=True)
    p2p.pipe.save_pretrained(str(folder), safe_serialization=True)  # type: ignore[attr-defined]
    meta = {"base_model": base_model, "dtype": dtype, **report.describe(), "seconds": round(report.seconds, 4)}
    if report.forgets:
        meta["forget"] = report.forgets
    (folder / EDITS_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def main(args: argparse.Namespace) -> int:
    """Run ``editgen edit-model``; returns the process exit code."""

    folder = Path(args.out)
    try:
        edits = edit_set_from_args(args)
        if edits is None:
            raise ValueError("give at least one edit: --edit, --erase, --debias or --forget")
        report_cfg = report_settings(args)
        _check_out(folder)
    except ValueError as exc:
        return _fail(str(exc))
    from editgen.p2p.generate import dtype_name, load_pipeline
    from editgen.p2p.model_edit.solve import apply_edits

    quiet_libraries()
    model, _ = resolve_model(args)
    try:
        p2p = load_pipeline(model, args.device, args.dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(f"cannot load model {model!r}: {exc}")
    try:
        scorer = report_scorer(args) if report_cfg is not None else None
        report = apply_edits(p2p, edits)
    except ValueError as exc:
        return _fail(str(exc))
    folder.mkdir(parents=True, exist_ok=True)
    save_edited(p2p, folder, report, model, dtype_name(p2p.dtype))
    print(f"wrote {folder}: {len(edits.edits)} edits on {report.layers} projections in {report.seconds:.2f}s "
          f"(checksum {report.checksum})")
    for f in report.forgets:
        print(f"forget {f['concept']!r}: concept attention mass {f['mass_before']:.4g} -> {f['mass_after']:.4g}")
    if report_cfg is not None and scorer is not None:
        flagged = write_edit_report(args, model, p2p, edits, report_cfg, scorer, folder)
        print(f"wrote {folder}/REPORT.json and report.html: " + (f"{len(flagged)} prompts moved too far: "
              + "; ".join(flagged) if flagged else "every preserved and neutral prompt within its thresholds"))
    return 0


def write_run_report(cfg: EditgenConfig, out: str, options: dict[str, Any] | None = None) -> str | None:
    """After a run with ``render.model_edits``: the report of those edits (the render model as the actors
    load it, edited as they edit it) in OUT/model_edits/, unless one for the same model and edits is
    there; returns what it did, None without model edits."""
    from editgen.engines.runtime import Runtime
    from editgen.filters.pairs.clip_score import ClipScorer
    from editgen.p2p.generate import load_pipeline
    from editgen.p2p.model_edit.report import build_report, report_files
    from editgen.pipeline.settings.model_edits import REPORT_JSON, RUN_REPORT_DIR
    from editgen.pipeline.storage import Storage

    edits = cfg.render.edit_set()
    if edits is None:
        return None
    storage = Storage(out, options)
    runtime = Runtime.for_stage(cfg.render, None)
    key = {"model": cfg.render.model, "dtype": runtime.model.dtype, "edits": edits.describe(),
           "settings": cfg.render.model_edit_report.model_dump(),
           "clip": f"{cfg.filter.clip_model}/{cfg.filter.clip_pretrained}"}
    if storage.exists(RUN_REPORT_DIR, REPORT_JSON):
        try:
            if json.loads(storage.read_text(RUN_REPORT_DIR, REPORT_JSON)).get("key") == key:
                return f"model edits: report already in {storage.url(RUN_REPORT_DIR)}/"
        except ValueError:
            pass  # damaged: written again
    original = load_pipeline(runtime.model.model, runtime.device, runtime.model.dtype)
    report = build_report(original, runtime.pipeline, edits, cfg.render.model_edit_report,
                          ClipScorer.from_config(cfg.filter))
    report.body["key"] = key
    files = report_files(report)
    for name in sorted(files, key=lambda n: n == REPORT_JSON):  # the JSON last: its presence means done
        storage.write_text(files[name], RUN_REPORT_DIR, name)
    flagged = report.body["flagged"]
    return (f"model edits: report in {storage.url(RUN_REPORT_DIR, REPORT_JSON)}"
            + (f" ({len(flagged)} prompts moved too far)" if flagged else " (every preserved prompt within bounds)"))
