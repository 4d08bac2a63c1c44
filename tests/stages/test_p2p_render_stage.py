"""Render stage bookkeeping owned by the P2P work: truncated no-op edits and the stage hash."""

from __future__ import annotations

import pyarrow as pa

from editgen.pipeline.config import build_config, section_hash
from editgen.pipeline.runner import stage_hashes
from editgen.stages.render import RenderStage

LONG = "a cat " + "on the grass " * 26  # ~80 CLIP tokens: what follows is cut off by the text encoder


def test_truncated_edit_dropped_before_rendering():
    cfg = build_config(profile="tiny", overrides=["render.steps=2", "render.candidates=1", "render.local_blend=false",
                                                  "render.device=cpu"])
    stage = RenderStage(cfg)
    stage.setup()
    rows = [
        {"id": "ok", "caption": "a photo of a cat", "edited_caption": "a photo of a dog"},
        {"id": "cut", "caption": LONG + "with a red ball", "edited_caption": LONG + "with a blue ball"},
    ]
    out = {r["id"]: r for r in stage.process_partition(pa.Table.from_pylist(rows)).to_pylist()}
    assert out["cut"]["status"] == "dropped" and out["cut"]["drop_reason"] == "render_edit_truncated"
    assert out["cut"]["input_image"] is None and out["cut"]["candidates_drawn"] == -1
    assert out["ok"]["status"] == "kept" and out["ok"]["input_image"]
    assert stage.metrics["candidates"] == 1  # only the real edit was rendered


def _render_hash(*overrides: str) -> str:
    return stage_hashes(build_config(profile="tiny", overrides=list(overrides)))["render"]


def test_render_hash_covers_what_early_stop_reads():
    on = ["render.early_stop=true"]
    base = _render_hash(*on)
    for change in ("filter.min_sim_direction=0.3", "filter.min_sim_image=0.5", "filter.top_k=2",
                   "filter.clip_model=ViT-B-32", "filter.clip_pretrained=laion2b_s34b_b79k"):
        assert _render_hash(*on, change) != base, change
    assert _render_hash(*on, "filter.resources.batch_size=3") == base  # scheduling only
    assert _render_hash(*on, "filter.cache_scores=false") == base  # not read by early stop
    off = _render_hash()
    assert _render_hash("filter.min_sim_direction=0.3") == off  # without early stop render reads no filter key


def test_stages_reading_only_their_section_keep_their_hash():
    from editgen.stages.ingest import IngestStage

    cfg = build_config(profile="tiny")
    assert stage_hashes(cfg)["ingest"] == section_hash(cfg, "ingest", "", IngestStage.version)
