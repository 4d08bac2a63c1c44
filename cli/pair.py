"""``editgen pair``: render one Prompt-to-Prompt before/after pair to a folder.

The flags make one P2P candidate record (engines/p2p_records.py), which the engine renders as it would
regenerate a stored one: from a seed, or from the ``--image`` it names (cli/pair_real.py). Writes
``input.png``, ``edited.png``, ``mask.png`` (only with a mask) and ``params.json`` (the record;
``engines.regenerate.regenerate`` reproduces the images from it). Also runnable as
``python -m editgen.cli.pair``. Invalid arguments print one ``error:`` line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editgen.cli.pair_real import RealImageError, check_real_args, real_source, summary, write_outputs
from editgen.cli.render_model import PROFILE_NAMES, profile_render, quiet_libraries, resolve_model
from editgen.p2p.controls import MODES, BlendConfig, EditControl, parse_window
from editgen.pipeline.settings.render import check_values

if TYPE_CHECKING:
    from editgen.engines.runtime import Runtime
    from editgen.p2p.generate import RenderRequest
    from editgen.pipeline.settings.model_edits import EditSet

PROG = "editgen pair"


class UsageError(ValueError):
    """A bad command-line value: reported as one line, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pair`` options on ``parser`` (the lead wires this into the ``editgen`` CLI)."""
    parser.add_argument("--prompt", required=True, help="source caption")
    parser.add_argument("--edit-prompt", help="edited caption (defaults to --prompt for reweight)")
    parser.add_argument("--mode", default="auto", choices=MODES, help="auto: replace if word counts match")
    parser.add_argument("--edit-kind", help="instruct-stage edit kind hint used by --mode auto")
    parser.add_argument("--cross-replace", default="0.8", help="cross-attn window: fraction p or start,end")
    parser.add_argument(
        "--cross-replace-word",
        action="append",
        default=[],
        metavar="WORD=WINDOW",
        help="per-word cross window (repeatable), e.g. dog=0.4 or dog=0.1,0.5",
    )
    parser.add_argument("--self-replace", default="0.4", help="self-attn window: fraction p or start,end")
    parser.add_argument(
        "--self-max-res", default="32", help="inject self-attn only where query grid <= RES^2 tokens ('all')"
    )
    parser.add_argument("--blend-words", help="LocalBlend words (source and/or edit prompt), e.g. cat,dog")
    parser.add_argument("--blend-threshold", type=float, default=0.3,
                        help="LocalBlend mask: attention above this fraction of its maximum (default %(default)s)")
    parser.add_argument("--blend-start", type=float, default=0.2, help="fraction of steps before blending")
    parser.add_argument("--blend-downscale", type=int, default=4, help="read cross-attn at latent/N")
    parser.add_argument("--reweight", action="append", default=[], metavar="WORD=FACTOR", help="repeatable")
    parser.add_argument("--seed", type=int, default=0, help="noise seed shared by both images (default %(default)s)")
    parser.add_argument("--steps", type=int, help="denoising steps (profile default)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance (default %(default)s)")
    parser.add_argument("--size", help="N or WIDTHxHEIGHT (profile default)")
    parser.add_argument("--scheduler", default="ddim", help="ddim, euler, euler_a, dpmpp_2m, ...")
    parser.add_argument("--negative-prompt", help="negative prompt of both images")
    parser.add_argument("--model", help="hub id or local diffusers folder (overrides the profile's)")
    parser.add_argument("--profile", default="sd15", choices=PROFILE_NAMES,
                        help="pipeline profile whose render settings (model, size, steps) are the defaults "
                        "(default %(default)s; --model tiny-sdxl for the tiny SDXL model)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--format", default="png", choices=("png", "jpeg"), help="image format (default %(default)s)")
    parser.add_argument("--explicit", action="store_true", help="use the explicit-probability reference path")
    from editgen.cli.edit_model import add_edit_flags

    add_edit_flags(parser)  # closed-form model edits (docs/model_edits.md), applied after loading
    parser.add_argument("--image", metavar="PATH_OR_URL", help="edit this real image instead of generating one: "
                        "resized like the fetch stage, inverted (--inversion), then edited with P2P")
    parser.add_argument("--inversion", default="negative_prompt", choices=("ddim", "null_text", "negative_prompt"),
                        help="real images: how the image is inverted to noise (default %(default)s)")
    parser.add_argument("--inner-steps", type=int, default=10, help="null_text: Adam steps per denoising step")
    parser.add_argument("--mask", default="none", choices=("none", "local_blend", "diffedit"),
                        help="real images: keep the reconstruction outside this mask (local_blend needs --blend-words)")
    parser.add_argument("--resize-mode", default="center_crop", choices=("center_crop", "border", "keep_ratio"),
                        help="real images: how the image is fitted to the render size (default %(default)s)")
    parser.add_argument("--out", required=True, help="output folder")


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        word, sep, value = item.rpartition("=")
        if not sep or not word.strip() or not value.strip():
            raise UsageError(f"{what} expects WORD=VALUE, got {item!r}")
        out.append((word.strip(), value.strip()))
    return out


def _window(text: str, what: str) -> Any:
    try:
        start, end = parse_window(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None
    return end if start == 0.0 else [start, end]


def _size(text: str) -> tuple[int, int]:
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise UsageError(f"--size expects N or WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UsageError(f"--size must be positive, got {text!r}")
    return h, w


#: render config key -> the `editgen pair` flag that sets it (for error messages)
PAIR_FLAGS = {"guidance_range": "--guidance", "height": "--size", "width": "--size", "steps": "--steps",
              "seed": "--seed"}


def _edit_prompt(args: argparse.Namespace) -> str:
    edit_prompt = args.edit_prompt
    if edit_prompt is None:
        if args.mode != "reweight":
            raise UsageError("--edit-prompt is required unless --mode reweight")
        edit_prompt = args.prompt
    if not args.prompt.strip() or not edit_prompt.strip():
        raise UsageError("prompts must not be empty")
    return edit_prompt


def _cross_and_reweight(args: argparse.Namespace) -> tuple[Any, dict[str, float]]:
    cross: Any = _window(args.cross_replace, "--cross-replace")
    if args.cross_replace_word:
        cross = {"default_": cross}
        for word, value in _pairs(args.cross_replace_word, "--cross-replace-word"):
            cross[word] = _window(value, "--cross-replace-word")
    reweight = {}
    for word, value in _pairs(args.reweight, "--reweight"):
        try:
            reweight[word] = float(value)
        except ValueError:
            raise UsageError(f"--reweight factor must be a number, got {value!r}") from None
    return cross, reweight


def _self_max_res(text: str) -> int | None:
    if text.lower() in ("all", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--self-max-res expects an integer or 'all', got {text!r}") from None


def _shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """(steps, height, width) from the flags or the profile, within the render config's limits."""
    prof = profile_render(args.profile)
    steps = args.steps if args.steps is not None else prof.steps
    if steps < 1:
        raise UsageError("--steps must be >= 1")
    height, width = _size(args.size) if args.size else (prof.height, prof.width)
    try:  # the same rules as the render config: finite guidance, sizes and steps within limits
        check_values(PAIR_FLAGS, guidance_range=(args.guidance, args.guidance), height=height, width=width,
                     steps=steps, seed=args.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return steps, height, width


def _control(args: argparse.Namespace, edit_prompt: str) -> EditControl:
    cross, reweight = _cross_and_reweight(args)
    self_max_res = _self_max_res(args.self_max_res)
    try:
        blend = None
        if args.blend_words:
            blend = BlendConfig(words=args.blend_words, threshold=args.blend_threshold, start=args.blend_start,
                                downscale=args.blend_downscale)
        return EditControl(
            prompt=edit_prompt, mode=args.mode, cross_replace=cross,
            self_replace=_window(args.self_replace, "--self-replace"), self_max_res=self_max_res,
            reweight=reweight, blend=blend, edit_kind=args.edit_kind,
        ).resolve(args.prompt)
    except UsageError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def build_request(args: argparse.Namespace) -> RenderRequest:
    """Turn parsed arguments into a ``RenderRequest`` (no model needed); raises ``UsageError``."""
    from editgen.p2p.generate import RenderRequest

    edit_prompt = _edit_prompt(args)
    control = _control(args, edit_prompt)
    steps, height, width = _shape(args)
    return RenderRequest(source=args.prompt, edits=[control], seed=args.seed, steps=steps, guidance=args.guidance,
                         height=height, width=width, scheduler=args.scheduler, negative_prompt=args.negative_prompt)


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def _model_edits(args: argparse.Namespace) -> EditSet | None:
    from editgen.cli.edit_model import edit_set_from_args

    try:
        return edit_set_from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _runtime(args: argparse.Namespace, model: str, variant: str | None) -> Runtime:
    """The model loaded as the flags say; what its records name (the profile, a tiny model's variant)."""
    from editgen.engines.record import ModelRef
    from editgen.engines.runtime import Runtime
    from editgen.p2p.generate import dtype_name, load_pipeline

    p2p = load_pipeline(model, args.device, args.dtype, args.scheduler, compile=args.compile)
    ref = ModelRef(model, dtype_name(p2p.dtype), profile="tiny" if variant else args.profile, tiny_variant=variant)
    return Runtime.wrap(p2p, ref)


def main(args: argparse.Namespace) -> int:
    """Run ``editgen pair``; returns the process exit code."""
    try:
        request = build_request(args)
        if args.format not in ("png", "jpeg"):
            raise UsageError("--format must be png or jpeg")
        if args.dtype not in ("auto", "float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16"):
            raise UsageError(f"unknown --dtype {args.dtype!r}")
        edits = _model_edits(args)
        if args.image:
            request = check_real_args(args, request)
    except (UsageError, RealImageError) as exc:
        return _fail(str(exc))

    from editgen.engines.p2p_records import p2p_record
    from editgen.engines.regenerate import engine_for

    quiet_libraries()
    model, variant = resolve_model(args)
    if args.model and not os.path.isdir(args.model) and "/" not in args.model:
        return _fail(f"--model {args.model!r} is neither a local folder nor a hub id (owner/name)")
    try:
        runtime = _runtime(args, model, variant)
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(f"cannot load model {model!r}: {exc}")
    try:
        params: dict[str, Any] = {"explicit": bool(args.explicit), **(real_source(args) if args.image else {})}
        first = p2p_record(request, runtime.model, **params)
        engine = engine_for(first, runtime)
        engine.check(first)
        if edits is not None:
            runtime.apply_edits(edits)
    except ValueError as exc:
        return _fail(str(exc))
    record = p2p_record(request, runtime.model, **params)  # after the edits: the record names them
    out = engine.regenerate(record, image=getattr(args, "image_bytes", None), image_format=args.format)
    modes = [engine.mode(out.record)]
    files = write_outputs(Path(args.out), out, out.record.to_row(), modes)
    print(f"wrote {', '.join(files)} and params.json to {args.out} ({summary(out, modes)})")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; the spec wants one clear line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
