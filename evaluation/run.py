"""One evaluation from start to end: read the eval set, load the model and the scorers, sweep, measure,
write the report (docs/evaluate.md)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editgen.evaluation.data import EvalReader, EvalSample
from editgen.evaluation.metrics import CURVE_METRICS, TARGET_METRICS, Measurer, summarize
from editgen.evaluation.report import CURVE_PNG, plot_curve, versions, write_json
from editgen.evaluation.sweep import (
    DEFAULT_IMAGE_GUIDANCE,
    RESIZE_RULE,
    TEXT_GUIDANCE,
    LoadedModel,
    check_model,
    load_model,
    sweep,
)
from editgen.pipeline.errors import ConfigError, InputError

if TYPE_CHECKING:
    from editgen.filters.pairs.dino_score import DinoScorer

DEFAULT_CLIP = ("ViT-L-14", "openai")
DEFAULT_DINO = "facebook/dinov2-base"
NO_DINO = "none"
#: CLIP names that carry their weights (no --clip-pretrained needed): a hub repo, a folder, the tiny one.
WEIGHTS_INCLUDED = ("hf-hub:", "local-dir:", "tiny-clip")
#: Samples swept and measured together: bounds the images held (CHUNK x grid points).
CHUNK = 16
SEED_RULE = 'sha256(f"{seed}:{key}"), first 8 bytes big-endian, top bit cleared; the same at every grid point'


@dataclass(frozen=True)
class EvalOptions:
    """What `editgen evaluate` was asked (cli/evaluate.py); None = the default documented there."""

    model: str
    data: tuple[str, ...]
    report: str
    grid: tuple[float, ...]
    steps: int = 20
    seed: int = 0
    resolution: int | None = None
    limit: int | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    dino_model: str | None = None
    device: str = "auto"
    threads: int | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for --data (never written)


def scorer_names(opts: EvalOptions, source: dict[str, Any]) -> tuple[str, str, str | None, str]:
    """(CLIP model, CLIP pretrained, its cache dir, DINO model): the flags, else, for an OUT's eval split,
    the run's own filter CLIP/DINO (so a tiny run's offline models), else ViT-L-14/openai and DINOv2-base."""
    model, pretrained, cache, dino = *DEFAULT_CLIP, None, DEFAULT_DINO
    if source.get("kind") == "editgen-eval-split":
        from editgen.pipeline.config import out_config
        from editgen.pipeline.storage import Storage
        from editgen.tiny.clip import TINY_CLIP_NAME
        from editgen.tiny.dino import TINY_DINO_NAME

        f = out_config(Storage(opts.data[0], opts.storage_options)).filter
        model, pretrained, cache = f.clip_model, f.clip_pretrained, f.clip_cache_dir
        dino = f.dino_model or (TINY_DINO_NAME if model == TINY_CLIP_NAME else DEFAULT_DINO)
    if opts.clip_model is not None and opts.clip_model != model:
        model, pretrained = opts.clip_model, ""
        if opts.clip_pretrained is None and not model.startswith(WEIGHTS_INCLUDED):
            raise InputError(f"--clip-model {model}: name its weights with --clip-pretrained (e.g. openai); "
                             "without them open_clip builds a random-weight CLIP")
    if opts.clip_pretrained is not None:
        pretrained = opts.clip_pretrained
    return model, pretrained, cache, opts.dino_model or dino


class Scorers:
    """CLIP, loaded at once; DINOv2 loaded at the first sample with a target (never with --dino-model none).
    A model that does not load is one line."""

    def __init__(self, opts: EvalOptions, source: dict[str, Any]) -> None:
        from editgen.filters.pairs.clip_score import ClipScorer, ClipSpec

        model, pretrained, cache, self.dino_name = scorer_names(opts, source)
        self.device = opts.device
        spec = ClipSpec(model, pretrained, opts.device, "auto", cache)
        try:
            self.clip = ClipScorer(spec)
        except Exception as exc:  # noqa: BLE001 - unknown model, no hub, pickled weights: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"--clip-model {spec.model_id()}: cannot load: {first}") from None
        self.dino: DinoScorer | None = None
        if self.dino_name != NO_DINO:
            from editgen.filters.pairs.dino_score import check_dino_model

            try:
                check_dino_model(self.dino_name)  # before the sweep: a typo fails in a second, not an hour
            except ValueError as exc:
                raise ConfigError(f"--dino-model: {exc}") from None

    def dino_for(self, samples: Sequence[EvalSample]) -> DinoScorer | None:
        if self.dino is None and self.dino_name != NO_DINO and any(s.target_image is not None for s in samples):
            from editgen.filters.pairs.dino_score import DinoScorer, DinoSpec

            try:
                self.dino = DinoScorer(DinoSpec(self.dino_name, self.device, "auto"))
            except ConfigError as exc:
                raise ConfigError(f"--dino-model: {str(exc).removeprefix('filter.dino_model: ')}") from None
        return self.dino


def torch_threads() -> int:
    """torch's intra-op threads: on CPU the order of a sum, and so the last bits of a score, can follow it."""
    import torch

    return torch.get_num_threads()


def provenance(opts: EvalOptions, data: dict[str, Any], loaded: LoadedModel, scorers: Scorers,
               sizes: list[str]) -> dict[str, Any]:
    """Everything that decides the numbers, as both JSON files record it."""
    found = versions()
    clip, dino = scorers.clip, scorers.dino
    return {
        "model": loaded.info,
        "clip": {"model": clip.spec.model, "pretrained": clip.spec.pretrained, "open_clip": found["open_clip_torch"],
                 "precision": clip.precision, "device": clip.device.type},
        "dino": None if dino is None else {"model": dino.spec.model, "transformers": found["transformers"],
                                           "embedding": "pooler_output (CLS)", "device": dino.device.type},
        "versions": found,
        "cpu_threads": torch_threads(),
        "preprocessing": {"resize": RESIZE_RULE, "resolution": opts.resolution, "input_sizes": sizes,
                          "clip": "open_clip's preprocess for the model", "dino": "the model's AutoImageProcessor",
                          "l1": "output resized (PIL bicubic) to the target's size, RGB in [0, 1]"},
        "sampling": {"text_guidance": TEXT_GUIDANCE, "image_guidance": list(opts.grid),
                     "default_image_guidance": DEFAULT_IMAGE_GUIDANCE, "steps": opts.steps, "seed": opts.seed,
                     "seed_rule": SEED_RULE, "scheduler": loaded.info["scheduler"]},
        "data": data,
    }


def _report_dir(path: str) -> Path:
    report = Path(path)
    if report.exists() and not report.is_dir():
        raise InputError(f"{path}: exists and is not a directory; expected a report directory (--out)")
    try:
        report.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the report directory ({exc.strerror or exc})") from None
    return report


def _notes(prov: dict[str, Any], dino: DinoScorer | None, opts: EvalOptions) -> tuple[list[str], list[str]]:
    """What a reader must know about the numbers: counts short of the eval set, what is null and why."""
    data = prov["data"]
    n, captioned, targets = data["samples"], data["samples_with_captions"], data["samples_with_target"]
    curve_notes, metric_notes = [], []
    if captioned == 0:
        curve_notes.append("no sample has both an input and an edited caption: CLIP direction similarity is null "
                           f"and {CURVE_PNG} is not drawn (InstructPix2Pix's direction needs both captions)")
    elif captioned < n:
        curve_notes.append(f"CLIP direction similarity over the {captioned} of {n} samples with both captions")
    if targets == 0:
        metric_notes.append("no sample has a target image: L1, CLIP-I and DINO are null")
    elif targets < n:
        metric_notes.append(f"L1, CLIP-I and DINO over the {targets} of {n} samples with a target image")
    if targets and dino is None:
        metric_notes.append(f"DINO not computed (--dino-model {opts.dino_model})")
    if data["samples_with_mask"]:
        metric_notes.append("masks are read but no number here uses them (whole-image metrics, as MagicBrush's)")
    if DEFAULT_IMAGE_GUIDANCE not in opts.grid:
        metric_notes.append(f"the grid lacks the default image guidance {DEFAULT_IMAGE_GUIDANCE:g}: at_default is "
                            "the nearest grid point")
    return curve_notes, metric_notes


def _chunks(samples: Iterator[EvalSample]) -> Iterator[list[EvalSample]]:
    while chunk := list(itertools.islice(samples, CHUNK)):
        yield chunk


def measure(opts: EvalOptions, reader: EvalReader, loaded: LoadedModel, scorers: Scorers,
            progress: Callable[[str], None] | None) -> tuple[dict[float, dict[str, list[float]]], set[str]]:
    """Sweep and measure CHUNK samples at a time (memory: one chunk's images): grid point -> metric ->
    per-sample values, and the model's input sizes."""
    values: dict[float, dict[str, list[float]]] = {g: {} for g in opts.grid}
    sizes: set[str] = set()
    done = 0
    for chunk in _chunks(iter(reader)):
        outputs = sweep(loaded, chunk, opts.grid, opts.steps, opts.seed, opts.resolution)
        measurer = Measurer(chunk, scorers.clip, scorers.dino_for(chunk))
        for g in opts.grid:
            for name, per_sample in measurer.point(outputs[g]).items():
                values[g].setdefault(name, []).extend(per_sample)
        sizes |= {f"{im.size[0]}x{im.size[1]}" for im in outputs[opts.grid[0]]}
        done += len(chunk)
        if progress is not None:
            progress(f"evaluate: {done} samples edited at {len(opts.grid)} image guidances and measured")
    return values, sizes


def evaluate(opts: EvalOptions, progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Run the evaluation and write REPORT/curve.json, curve.png and metrics.json; returns (curve, metrics)."""
    check_model(opts.model)
    with _threads(opts.threads):
        return _evaluate(opts, progress)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to `n` for the evaluation (None: left as they are), restored after."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate(opts: EvalOptions, progress: Callable[[str], None] | None) -> tuple[dict, dict]:
    report = _report_dir(opts.report)
    reader = EvalReader(list(opts.data), opts.limit, opts.storage_options)
    reader.check()  # every sample, before any model loads: a bad one late in the set must not cost the sweep
    scorers = Scorers(opts, reader.origin)
    loaded = load_model(opts.model, opts.device)
    values, sizes = measure(opts, reader, loaded, scorers, progress)
    points = [{"image_guidance": g, "text_guidance": TEXT_GUIDANCE, **summarize(values[g], CURVE_METRICS)}
              for g in opts.grid]
    rows = [{"image_guidance": g, **summarize(values[g], TARGET_METRICS)} for g in opts.grid]
    prov = provenance(opts, reader.summary(), loaded, scorers, sorted(sizes))
    curve_notes, metric_notes = _notes(prov, scorers.dino, opts)
    nearest = min(rows, key=lambda r: (abs(r["image_guidance"] - DEFAULT_IMAGE_GUIDANCE), r["image_guidance"]))
    drawn = plot_curve(points, f"{opts.model}: {prov['data']['samples']} samples, {opts.steps} steps",
                       report / CURVE_PNG)
    if not drawn:
        (report / CURVE_PNG).unlink(missing_ok=True)  # an earlier run's plot would not be this run's
    curve = {"provenance": prov, "points": points, "notes": curve_notes, "plot": CURVE_PNG if drawn else None}
    metrics = {"provenance": prov, "default_image_guidance": DEFAULT_IMAGE_GUIDANCE, "at_default": nearest,
               "per_image_guidance": rows, "notes": metric_notes}
    write_json(report, curve, metrics)
    return curve, metrics
