"""Shared sources: k edit candidates of a pair drawn from one source image, rendered as one P2P group.

InstructPix2Pix rendered every candidate as its own (source, edit) pair: 2 prompts, so 4 UNet rows with
CFG. Candidates that share the seed and guidance scale would render the same source image k times;
with ``render.shared_sources: k`` they share it: one group of 1 source + k edit rows (each edit with its
own P2P windows), ``2 (1 + k)`` rows per k candidates instead of ``4 k``. Each candidate's record carries
the whole group (``shared_source.group_edits``), so ``regenerate`` of any one candidate re-renders the
same group layout and returns its row bit for bit. Every sample of a group stores the same input image
(the documented choice: a shard sample stays self-contained; the record says which samples share it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from editgen.p2p.candidates import CandidateOutput, encode_image, encode_mask, record_to_request
from editgen.p2p.generate import P2PPipeline, render

KEY = "shared_source"


def share_sources(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Give each run of ``k`` consecutive candidates (by candidate index) its group leader's seed and
    guidance and the group's edits; records stay one per candidate. ``k = 1`` returns them unchanged."""
    if k <= 1:
        return records
    by_group: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault(int(r["candidate"]) // k, []).append(r)
    for g, members in by_group.items():
        members.sort(key=lambda r: int(r["candidate"]))
        lead = members[0]
        edits = [m["edits"][0] for m in members]
        for m in members:
            m["seed"], m["guidance"] = lead["seed"], lead["guidance"]
            m[KEY] = {"group": g, "size": k, "members": [int(x["candidate"]) for x in members],
                      "group_edits": edits}
    return records


def group_records(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r.get("pair_id")), int(r[KEY]["group"])), []).append(r)
    return groups


def render_shared(p2p: P2PPipeline, records: Sequence[Mapping[str, Any]], fmt: str = "png",
                  quality: int = 95) -> list[CandidateOutput]:
    """Render shared-source records (input order kept): one UNet group per (pair, group), whichever of
    its members are asked for."""
    out: dict[int, CandidateOutput] = {}
    index = {id(r): i for i, r in enumerate(records)}
    for members in group_records(records).values():
        meta = members[0][KEY]
        request = record_to_request({**members[0], "edits": meta["group_edits"]})
        res = render(p2p, [request])[0]
        source = encode_image(res.images[0], fmt, quality)
        hw = (request.height, request.width)
        for m in members:
            row = meta["members"].index(int(m["candidate"]))
            mask = res.masks[row]
            out[index[id(m)]] = CandidateOutput(
                record=dict(m), input_image=source, edited_images=[encode_image(res.images[1 + row], fmt, quality)],
                masks=[None if mask is None else encode_mask(mask, hw)],
                image_format="jpeg" if fmt.lower() in ("jpg", "jpeg") else "png", result=res)
    return [out[i] for i in range(len(records))]
