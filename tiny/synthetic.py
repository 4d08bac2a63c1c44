"""Synthetic instruct/render/filter rows in the exact column contract, for tests and benchmarks.

Images are small deterministic PNG/JPEG arrays (no model needed), so shard, loader, preview and
validate can be exercised without rendering anything; instruct rows are the bundled few-shot edits,
one of each requested edit type, so the render stage (and its routing by type) runs without an LLM.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

RENDER_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("candidate", pa.int32()), ("caption", pa.string()),
        ("edited_caption", pa.string()), ("instruction", pa.string()), ("edit_kind", pa.string()),
        ("url", pa.string()), ("source", pa.string()), ("source_row", pa.int64()),
        ("input_image", pa.binary()), ("edited_image", pa.binary()), ("mask", pa.binary()),
        ("image_format", pa.string()), ("seed", pa.int64()), ("params", pa.string()),
        ("render_model", pa.string()), ("status", pa.string()), ("drop_reason", pa.string()),
    ]
)


INSTRUCT_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("caption", pa.string()), ("edited_caption", pa.string()),
        ("instruction", pa.string()), ("edit_type", pa.string()), ("type_requested", pa.string()),
        ("type_fallback", pa.bool_()), ("edit_kind", pa.string()), ("status", pa.string()),
        ("drop_reason", pa.string()),
    ]
)


def instruct_table(types: Sequence[str | None], id_prefix: str = "pair") -> pa.Table:
    """Kept instruct rows, one per entry of `types`: the first bundled few-shot example of that edit type
    (a real edit of that kind: its captions pass the type's rule); None: the first example, its type
    left empty (an answer from before the taxonomy); "": the same, an empty type."""
    from editgen.prompts.builder import load_fewshot

    examples = load_fewshot()
    rows = []
    for i, name in enumerate(types):
        ex = next(e for e in examples if not name or e.edit_type == name)
        rows.append({"id": f"{id_prefix}{i:04d}", "caption": ex.caption, "edited_caption": ex.edited_caption,
                     "instruction": ex.instruction, "edit_type": name, "type_requested": None,
                     "type_fallback": None, "edit_kind": None, "status": "kept", "drop_reason": None})
    return pa.Table.from_pylist(rows, schema=INSTRUCT_SCHEMA)


def encode(array: np.ndarray, fmt: str = "png") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buf.getvalue()


def render_table(
    n_pairs: int = 4,
    candidates: int = 3,
    size: int = 32,
    seed: int = 0,
    fmt: str = "png",
    with_mask: bool = True,
    id_prefix: str = "row",
    start: int = 0,
) -> pa.Table:
    """One row per candidate; edited image = input with a coloured square (the "edit")."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(start, start + n_pairs):
        base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for c in range(candidates):
            edited = base.copy()
            lo = size // 4 + c % max(1, size // 4)
            edited[lo : lo + size // 4, lo : lo + size // 4] = (255, 40 * c % 256, 0)
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[lo : lo + size // 4, lo : lo + size // 4] = 255
            rows.append({
                "id": f"{id_prefix}{p:05d}", "candidate": c,
                "caption": f"a photo of thing {p}", "edited_caption": f"a photo of thing {p} with a red box",
                "instruction": f"add a red box to thing {p}", "edit_kind": "add",
                "url": f"https://example.com/{p}.jpg", "source": "synthetic", "source_row": p,
                "input_image": encode(base, fmt), "edited_image": encode(edited, fmt),
                "mask": encode(mask, "png") if with_mask else None, "image_format": fmt,
                "seed": 1000 * p + c,
                "params": json.dumps({"guidance_scale": 7.5, "steps": 20, "scheduler": "ddim",
                                      "cross_replace": [0.0, 0.8], "self_replace": 0.4, "mode": "replace",
                                      "model": "tiny-sd"}, sort_keys=True),
                "render_model": "tiny-sd", "status": "kept", "drop_reason": None,
            })
    return pa.Table.from_pylist(rows, schema=RENDER_SCHEMA)


def filter_table(render: pa.Table, seed: int = 0, keep_fraction: float = 0.6) -> pa.Table:
    """Render rows + made-up scores and statuses, as the filter stage would write them."""
    rng = np.random.default_rng(seed)
    n = render.num_rows
    kept = rng.random(n) < keep_fraction
    out = render.drop_columns(["status", "drop_reason"])
    for name, lo in (("sim_0", 0.2), ("sim_1", 0.2), ("sim_direction", 0.1), ("sim_image", 0.7)):
        out = out.append_column(name, pa.array(rng.uniform(lo, lo + 0.3, n).astype(np.float32)))
    out = out.append_column("filter_rank", pa.array([0 if k else None for k in kept], pa.int32()))
    out = out.append_column("clip_model", pa.array(["tiny-clip/seed:0"] * n))
    out = out.append_column("status", pa.array(["kept" if k else "dropped" for k in kept]))
    return out.append_column("drop_reason", pa.array([None if k else "below_sim_direction" for k in kept],
                                                     pa.string()))
