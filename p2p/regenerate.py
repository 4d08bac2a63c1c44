"""Re-render one stored candidate record, generated or real-image, bit for bit on the same device/dtype.

A generated record holds every input of its render (a shared-source one, its whole group's edits); a
real-image record (``render.source=real``) also names its source photograph by a SHA-256 of its pixels,
so the image must be given back (the shard's ``input`` member or the fetch partition's ``image``) and
the inversion is recomputed deterministically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from editgen.p2p.candidates import PACKED, CandidateOutput, pipeline_for_record, render_records, replay_packed
from editgen.p2p.generate import P2PPipeline
from editgen.p2p.real import SOURCE_KEY, regenerate_real
from editgen.p2p.shared import KEY as SHARED_KEY
from editgen.p2p.shared import render_shared


def regenerate(
    record: Mapping[str, Any],
    p2p: P2PPipeline | None = None,
    device: str | torch.device | None = None,
    image_format: str = "png",
    image: bytes | None = None,
) -> CandidateOutput:
    """Re-render one stored record; identical bytes to the original render on the same device/dtype.
    ``image``: the source photograph's bytes, required for (and only for) real-image records."""
    if p2p is None:
        p2p = pipeline_for_record(record, device)
    if SOURCE_KEY in record:
        if image is None:
            raise ValueError("a real-image record regenerates only with its source image (image=...)")
        return regenerate_real(record, image, p2p, image_format)
    if PACKED in record:  # rendered in a packed batch: replay the batch (neighbours change the rounding)
        return replay_packed(p2p, record, image_format)
    if SHARED_KEY in record:  # the whole shared-source group, from the group edits the record carries
        return render_shared(p2p, [record], image_format)[0]
    return render_records(p2p, [record], image_format=image_format)[0]
