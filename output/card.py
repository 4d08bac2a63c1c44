"""The dataset card: OUT/shards/README.md in the Hugging Face dataset-card format, from the manifest and the
run's config alone (a pure function: the shard stage writes it after every manifest, and its resume check
rebuilds it and rewrites a card that differs; export-hf reads its sections; docs/dataset_card.md says what
each number means).

The YAML header is what `datasets` and the hub read: `configs` (one config whose `data_files` map the splits
to the published generation's tar globs, relative to OUT/shards: train -> `gen-<G>/<prefix>-*.tar`, test ->
`gen-<G>/eval-*.tar` when the run held some out), `license` (shard.card.license), task category, size
category, tags, `dataset_info.features` and `dataset_info.splits` (each split's samples, which `datasets`
checks on load, and its tar bytes). The features are the manifest's schema of the splits the card lists
(output/features.py: every member any sample has, and the `json` member's fields and types joined over all
samples), so `datasets` reads every sample against them instead of guessing a schema from the first five
(which fails on a member or a JSON field those lack); a manifest without a schema (written before one was
recorded) gets no features. Every count in the body is the manifest's; the survival funnel is its untimed
`survival` section, so the card of a resumed run is the same bytes as an uninterrupted one's. Nothing from
the config that is not a hub id, a number or a name goes in, and the text passes through the redactor like
everything editgen writes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from editgen.engines.base import engine_names, needs_of, reconstructs
from editgen.filters.pairs.score_registry import SCORES, thresholds
from editgen.output.eval_split import EVAL_PREFIX, EVAL_SECTION
from editgen.output.features import FEATURES, SplitSchema, from_manifest, members_in_order, yaml_features
from editgen.output.inverse import INVERSE_METRIC
from editgen.pipeline.config import EditgenConfig
from editgen.pipeline.redact import redact_text
from editgen.pipeline.settings.model_edits import REPORT_HTML, RUN_REPORT_DIR

CARD = "README.md"
#: The card's split names: the train tars, and the eval tars as the hub's conventional `test` split.
TRAIN_SPLIT, TEST_SPLIT = "train", "test"
#: The hub's size buckets (upper bounds, exclusive) and their names.
SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
#: The members every sample has (output/shard_writer.sample_members): the body's feature list.
MEMBERS = (("input.png", "image", "the image before the edit (.jpg with render.image_format jpeg)"),
           ("edited.png", "image", "the image after the edit"),
           ("mask.png", "image", "the edit region (white = may change; all white where the engine gave none)"),
           ("txt", "string", "the edit instruction"),
           ("json", "struct", "everything else: captions, seed, scores, the engine's record (`params`), mask "
            "geometry (docs: output/shard_writer.sample_metadata)"))


def size_category(n: int) -> str:
    return next((name for bound, name in SIZE_BUCKETS if n < bound), "n>1B")


def split_counts(manifest: Mapping[str, Any]) -> dict[str, int]:
    """{card split: samples}: train always, test only when the run held samples out."""
    held_out = manifest.get(EVAL_SECTION) or {}
    counts = {TRAIN_SPLIT: int(manifest.get("samples", 0))}
    if held_out.get("samples"):
        counts[TEST_SPLIT] = int(held_out["samples"])
    return counts


def data_files(manifest: Mapping[str, Any]) -> list[dict[str, str]]:
    """The card's `data_files`: each split's tar glob in the published generation (relative to OUT/shards)."""
    gen, prefix = manifest.get("generation", ""), manifest.get("prefix", "edits")
    files = [{"split": TRAIN_SPLIT, "path": f"{gen}/{prefix}-*.tar"}]
    if TEST_SPLIT in split_counts(manifest):
        files.append({"split": TEST_SPLIT, "path": f"{gen}/{EVAL_PREFIX}-*.tar"})
    return files


def split_schema(manifest: Mapping[str, Any]) -> SplitSchema | None:
    """The schema of the splits the card lists, joined (one config: one set of features for every split);
    None when a listed split's is not in the manifest."""
    parts = {TRAIN_SPLIT: manifest, TEST_SPLIT: manifest.get(EVAL_SECTION) or {}}
    found = [from_manifest(parts[split].get(FEATURES)) for split in split_counts(manifest)]
    known = [f for f in found if f is not None]
    return functools.reduce(SplitSchema.join, known, SplitSchema()) if len(known) == len(found) else None


def features(manifest: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The header's `dataset_info.features` (module doc), None without a schema."""
    schema = split_schema(manifest)
    return yaml_features(schema) if schema is not None else None


def header(manifest: Mapping[str, Any], config: EditgenConfig) -> dict[str, Any]:
    """The YAML header as data (module doc)."""
    counts = split_counts(manifest)
    split_bytes = {TRAIN_SPLIT: int(manifest.get("bytes", 0)),
                   TEST_SPLIT: int((manifest.get(EVAL_SECTION) or {}).get("bytes", 0))}
    real = needs_of(config.render).real_image
    source = "real photographs" if real else "synthetic images"
    declared = features(manifest)
    return {
        "license": config.shard.card.license,
        "task_categories": ["image-to-image"],
        "size_categories": [size_category(sum(counts.values()))],
        "tags": ["image-editing", "instruction-based-image-editing", "webdataset", "editgen",
                 "real-images" if real else "synthetic"],
        "pretty_name": f"editgen instruction-based image edits ({source})",
        "configs": [{"config_name": "default", "data_files": data_files(manifest)}],
        "dataset_info": {**({"features": declared} if declared else {}),
                         "splits": [{"name": s, "num_bytes": split_bytes[s], "num_examples": n}
                                    for s, n in counts.items()]},
    }


def build_card(manifest: Mapping[str, Any], config: EditgenConfig) -> str:
    """README.md's text: the YAML header, then the body's sections (module doc)."""
    head = yaml.safe_dump(header(manifest, config), sort_keys=False, allow_unicode=True, width=1000)
    body = [*_summary(manifest, config), *_made(manifest, config), *_thresholds(config), *_types(manifest),
            *_funnel(manifest), *_features(manifest), *_loading(manifest), *_regenerating(config),
            *_limitations(manifest, config)]
    return redact_text(f"---\n{head}---\n\n" + "\n".join(body) + "\n", known=False)


def _summary(manifest: Mapping[str, Any], config: EditgenConfig) -> list[str]:
    counts = split_counts(manifest)
    held_out = manifest.get(EVAL_SECTION) or {}
    lines = ["# editgen instruction-based image edits", "",
             "Image-editing pairs (input image, instruction, edited image, edit mask) made by editgen "
             "from captions: an LLM writes the edit, an edit engine renders it, "
             "scores filter it. This card is written by the run's shard stage from its manifest "
             "(`manifest.json`, generation `{}`) and config; every count below is the manifest's.".format(
                 manifest.get("generation", "")), "",
             "| split | samples | tars | forward pairs | inverse pairs |", "|---|---|---|---|---|"]
    parts = {TRAIN_SPLIT: manifest, TEST_SPLIT: held_out}
    for split, n in counts.items():
        part = parts[split]
        inverse = int(part.get(INVERSE_METRIC, 0))
        lines.append(f"| `{split}` | {n} | {len(part.get('shards', []))} | {n - inverse} | {inverse} |")
    fraction = config.shard.eval_fraction
    lines += ["", f"`test` is the eval split (`eval-*.tar`): {fraction:g} of the kept pairs (shard.eval_fraction), "
              "drawn by a hash of each pair's id, so a pair's candidates, its inverse and a session's turns are "
              "never on both sides." if fraction else "No eval split (shard.eval_fraction is 0).", ""]
    sessions = manifest.get("sessions")
    if sessions:
        lines += [f"Multi-turn sessions: {sessions['sessions']} sessions, samples per turn "
                  f"{sessions['turn_samples']} (both splits; docs/sessions.md).", ""]
    return lines


def _made(manifest: Mapping[str, Any], config: EditgenConfig) -> list[str]:
    """Models, engines and their ids."""
    r, ins, judge = config.render, config.instruct, config.judge
    llm = "none (rule templates)" if ins.backend == "template" else f"`{ins.model}` ({ins.backend})"
    rows = [("render model", f"`{r.model}`"), ("edit engines", ", ".join(f"`{e}`" for e in engine_names(r))),
            ("image source", "real photographs" if needs_of(r).real_image else "generated"),
            ("render size, steps", f"{r.width}x{r.height}, {r.steps} steps"),
            ("candidates per pair", str(r.candidates)), ("instruction LLM", llm),
            ("CLIP (filter)", f"`{config.filter.clip_model}`"),
            ("VLM judge", f"`{judge.model}` ({judge.backend})" if judge.enabled else "none (judge.enabled is off)")]
    for name in engine_names(r):  # an engine with a model of its own (an edit model, an inpainting UNet)
        model = getattr(getattr(r, name, None), "model", None)
        if isinstance(model, str):
            rows.append((f"`{name}` engine's model", f"`{model}`"))
    edits = manifest.get("model_edits") or []
    report = f"[report](../{RUN_REPORT_DIR}/{REPORT_HTML})"
    rows.append(("model edits", "; ".join(f"{e.get('applied')} {str(e.get('checksum', ''))[:12]}" for e in edits)
                 + f" (what they changed and preserved: {report}, written by `editgen run`)" if edits else "none"))
    if config.profile:
        rows.append(("config profile", f"`{config.profile}`"))
    return ["## How it was made", "", "| what | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _applies(score: str, config: EditgenConfig) -> bool:
    """Whether the run checked this score at all (a threshold set for a score it never computed is no filter)."""
    if score.startswith("recon_"):
        return reconstructs(config.render)
    if score == "dinov2_sim":
        return config.filter.dino_model is not None
    return config.judge.enabled if score.startswith("judge_") else True


def _thresholds(config: EditgenConfig) -> list[str]:
    """Every score threshold the run applied (filter, and the judge's when it ran)."""
    rows = []
    for score in SCORES:
        low, high = thresholds(config, score)
        if (low is None and high is None) or not _applies(score.name, config):
            continue
        rows.append(f"| `{score.name}` | {score.what} | {'' if low is None else f'>= {low:g}'} "
                    f"| {'' if high is None else f'<= {high:g}'} |")
    top_k = config.filter.top_k
    return ["## Thresholds", "", "| score | what | kept when | and |", "|---|---|---|---|", *rows, "",
            f"Then at most {top_k} candidates per pair by `sim_direction` (filter.top_k)." if top_k
            else "Every candidate that passes is kept (filter.top_k is null).", ""]


def _types(manifest: Mapping[str, Any]) -> list[str]:
    """The edit-type mix: requested, rendered and kept per type (the manifest's `edit_types`)."""
    section = manifest.get("edit_types")
    if not section:
        return ["## Edit types", "", "Not recorded (a run without edit types).", ""]
    lines = ["## Edit types", "", "| type | asked | answers kept | candidates | passed filter | kept samples |",
             "|---|---|---|---|---|---|"]
    for name, row in section["types"].items():
        asked = "" if row.get("asked") is None else row["asked"]
        lines.append(f"| {name} | {asked} | {row['answers_kept']} | {row['candidates']} | {row['passed_filter']} "
                     f"| {row['kept_samples']} |")
    return [*lines, "", "Kept samples per type count forward pairs of both splits (docs/edit_types.md).", ""]


def _funnel(manifest: Mapping[str, Any]) -> list[str]:
    """The survival funnel (rows and work per stage) and compute per kept sample."""
    section = manifest.get("survival")
    lines = ["## Survival funnel", ""]
    if not section:
        return [*lines, "Not recorded.", ""]
    lines += ["| stage | rows in | rows out | dropped | top drop reasons | ran on | work |",
              "|---|---|---|---|---|---|---|"]
    for s in section["stages"]:
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(s["dropped"].items(), key=lambda kv: -kv[1])[:4])
        work = "; ".join(w for w in (f"{s['unet_flops']:.3g} UNet FLOPs" if s.get("unet_flops") else "",
                                     f"{s['generated_tokens']} tokens out" if s.get("generated_tokens") else "") if w)
        lines.append(f"| {s['stage']} | {s['rows_in']} | {s['rows_out']} | {s['rows_dropped']} | {reasons} "
                     f"| {s['device']} | {work} |")
    lines += ["", f"Kept samples (the shard stage's rows out, both splits): {section.get('kept_samples')}.", ""]
    return lines + _compute(manifest.get("compute"))


def _compute(report: Mapping[str, Any] | None) -> list[str]:
    if not report:
        return ["Compute per kept sample: not recorded (render reported none).", ""]
    kept, gpu = report.get("kept_samples") or 0, report.get("gpu_seconds")
    per_hour = f"{kept / (gpu / 3600.0):.4g}" if gpu and kept else "n/a (no GPU time recorded: a CPU run)"
    steps = report.get("unet_row_steps_per_kept")
    return [f"Compute (render): {report.get('unet_flops', 0):.3g} UNet FLOPs, "
            f"{report.get('unet_row_steps', 0):.0f} UNet row-steps for {kept} kept forward samples "
            f"({'n/a' if steps is None else f'{steps:.0f}'} row-steps each; InstructPix2Pix's recipe needs at "
            f"least 10000); render GPU-seconds {'n/a' if gpu is None else f'{gpu:.4g}'}; kept samples per render "
            f"GPU-hour: {per_hour}. Every stage's time, and kept samples per GPU-hour over the whole run, are in "
            "`editgen status OUT` (timings are not in the manifest: they differ between a run and its resume).", ""]


def _features(manifest: Mapping[str, Any]) -> list[str]:
    rows = [f"| `{name}` | {dtype} | {what} |" for name, dtype, what in MEMBERS]
    schema, found = split_schema(manifest), ""
    if schema is not None:
        found = ("This dataset's members: " + ", ".join(f"`{m}`" for m in members_in_order(schema)) + ". The "
                 "header's `dataset_info.features` declares each of them and every field of `json` with its type, "
                 "over every sample of the splits above: None where a sample lacks one; `Json` for a field whose "
                 "values have no common type.")
    return ["## Features", "", "Each sample's tar members (the WebDataset key is `<id>-cNNNN`, `-inv` for an inverse "
            "pair); `datasets` names the columns after them:", "", "| member | type | what |", "|---|---|---|", *rows,
            "", "A real-image run adds `reconstruction.png`, a multi-turn session dataset `first_input.png`. "
            + found, ""]


def _loading(manifest: Mapping[str, Any]) -> list[str]:
    train = data_files(manifest)[0]["path"]
    return ["## Load it", "", "With `datasets` (this card's `configs` name the splits; `test` is the eval split):", "",
            "    from datasets import load_dataset, load_dataset_builder",
            "    ds = load_dataset(\"OUT/shards\")  # this folder",
            f"    ds = load_dataset(\"webdataset\", data_files={{\"train\": \"OUT/shards/{train}\"}},",
            "                      features=load_dataset_builder(\"OUT/shards\").info.features)", "",
            "(the second form reads no card: without `features=` it guesses them from the first samples, and fails "
            "where later ones have another member or set a field those leave null).", "",
            "With editgen's training loader (the manifest's exact tar list, paired augmentation, diffusers' keys):",
            "", "    from editgen.output.loader import instruct_pix2pix_dataset",
            "    train = instruct_pix2pix_dataset(\"OUT\")",
            "    held_out = instruct_pix2pix_dataset(\"OUT\", split=\"eval\")",
            "", "`editgen shards OUT` prints the tar URLs; `editgen export-hf OUT DEST` writes parquet in the hub "
            "layout.", ""]


def _regenerating(config: EditgenConfig) -> list[str]:
    real = " and the photograph (`image=` the source image's bytes)" if needs_of(config.render).real_image else ""
    return ["## Regenerate a sample", "",
            "Each sample's `json` holds the engine's record (`params`): the model, seed and every drawn parameter. "
            f"It re-renders the same bytes on the same device and dtype from the record alone{real}:", "",
            "    import json", "    from editgen.engines.regenerate import regenerate",
            "    out = regenerate(json.loads(sample_json)[\"params\"])  # out.input_image, out.edited_image", "",
            "`editgen pair` renders one new Prompt-to-Prompt pair from flags (docs/p2p.md).", ""]


def _limitations(manifest: Mapping[str, Any], config: EditgenConfig) -> list[str]:
    lines: Sequence[str] = [
        "Scores are automatic (CLIP, and the VLM judge where it ran): a pair that passes them can still be a poor "
        "edit; docs/calibration.md measures them against human labels.",
        "The images are generated by the render model" + (" from real photographs" if needs_of(config.render).real_image
                                                           else "") + ": they carry its biases and artefacts.",
        "The instructions are an LLM's (or templates'), not people's.",
        "`test` is held out from this run's own pairs: it measures fit to this data, not to a public benchmark.",
        f"The license is the run's setting (`{config.shard.card.license}`); the data's terms also follow from its "
        "captions' sources and the models' licenses.",
    ]
    if manifest.get(INVERSE_METRIC):
        lines = [*lines, "Inverse pairs are the forward pairs reversed (no new rendering): filter on `json.inverse`."]
    return ["## Known limitations", "", *(f"- {line}" for line in lines), ""]


def card_problems(text: str, manifest: Mapping[str, Any]) -> list[str]:
    """Why a card does not describe this manifest (`editgen validate`): its YAML header must parse, name the
    published generation's split globs, count each split's samples as the manifest does and declare its
    features."""
    try:
        head = yaml.safe_load(text.split("---\n", 2)[1]) if text.startswith("---\n") else None
    except (yaml.YAMLError, IndexError):
        head = None
    if not isinstance(head, dict):
        return [f"{CARD}: no YAML header (rerun `editgen run` to rewrite the card)"]
    problems = []
    configs = head.get("configs") if isinstance(head.get("configs"), list) else []
    found = configs[0].get("data_files") if configs and isinstance(configs[0], dict) else None
    if found != data_files(manifest):
        problems.append(f"{CARD}: data_files {found} are not the published generation's {data_files(manifest)}")
    info = head.get("dataset_info") if isinstance(head.get("dataset_info"), dict) else {}
    splits = info.get("splits") if isinstance(info.get("splits"), list) else []
    counts = {s.get("name"): s.get("num_examples") for s in splits if isinstance(s, dict)}
    if counts != split_counts(manifest):
        problems.append(f"{CARD}: split sizes {counts} != the manifest's {split_counts(manifest)}")
    if info.get("features") != features(manifest):
        problems.append(f"{CARD}: dataset_info.features are not the manifest's schema of its splits")
    return problems


#: Header fields and body sections another card of the same data (export-hf's parquet card) takes over; the
#: fields (`dataset_info`: the tars' features and sizes) and sections left out describe the tars, which such a
#: copy does not hold.
SHARED_FIELDS = ("license", "task_categories", "size_categories", "tags", "pretty_name")
TAR_SECTIONS = ("Features", "Load it")


def shared_parts(text: str | None) -> tuple[dict[str, Any], str]:
    """(header fields, body) of a run's card that describe the data whatever its file format (module doc of
    output/export_hf.py); ({}, "") for no card or one without a YAML header."""
    if not text or not text.startswith("---\n") or text.count("---\n") < 2:
        return {}, ""
    _, head_text, body = text.split("---\n", 2)
    try:
        head = yaml.safe_load(head_text)
    except yaml.YAMLError:
        return {}, ""
    fields = {k: head[k] for k in SHARED_FIELDS if isinstance(head, dict) and k in head}
    sections = body.split("\n## ")
    kept = [s for s in sections[1:] if s.split("\n", 1)[0].strip() not in TAR_SECTIONS]
    return fields, "".join(f"\n## {s}" for s in kept).strip() + "\n"
