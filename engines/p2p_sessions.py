"""Prompt-to-Prompt sessions: k turns of edits rendered as one group from the same noise (docs/sessions.md).

A session's captions c0 -> c1 -> ... -> ck (turn t edits turn t-1's edited caption) render as one P2P
group: the source row c0 and one edit row per turn, all from candidate c's seed, so every turn's image
shares the source's noise and its attention (edit row t is controlled from c0 with its own window,
drawn from turn t's per-(pair, candidate) RNG; the seed and CFG scale are turn 1's, as a single pair
draws them). Turn t's pair is (row t-1, row t): its input is byte for byte the image turn t-1 published.

Each turn's record is a full P2P record: the group's render inputs (`edits`: one per turn) plus the
layout key `session` = {turn, turns, turn_words}; any one of them regenerates the whole group and returns
its own pair. Its edit mask is turn t's changed words' cross-attention in rows t-1 and t (the region its
own edit changed, not the session's earlier ones), gathered during the same render. UNet row-steps per
turn record: 2 (1 + k) / k x steps with CFG, the group's rows shared by its k turns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from editgen.engines.base import PairRejected, RenderedCandidate, SessionDraw, pair_key
from editgen.engines.p2p_drops import truncation_drops
from editgen.engines.p2p_records import SESSION, check_model, mask_spec, record_request, with_mask
from editgen.engines.record import CandidateRecord, ModelRef
from editgen.p2p.candidates import CandidateSpace, draw_candidate, request_params

if TYPE_CHECKING:
    from editgen.p2p.controls import EditControl
    from editgen.p2p.generate import P2PPipeline, RenderRequest
    from editgen.p2p.word_maps import MapRequest



def _turn_control(row: Mapping[str, Any], pair_id: str, candidate: int, space: CandidateSpace,
                  first: bool) -> EditControl:
    """Turn's edit row: its edited caption with its own P2P windows (turn 1 also keeps its edit kind hint,
    as a single pair's draw does; later turns edit the source c0 by several words: `auto` decides)."""
    from editgen.p2p.controls import EditControl

    _, p_cross, p_self, _ = draw_candidate(pair_id, candidate, space)
    kind = row.get("edit_kind") if first else None
    return EditControl(prompt=row["edited_caption"], mode=space.mode, cross_replace=p_cross, self_replace=p_self,
                       self_max_res=space.self_max_res, edit_kind=kind if kind in ("replace", "refine") else None)


def session_request(rows: Sequence[Mapping[str, Any]], candidate: int, space: CandidateSpace,
                    seed: int) -> RenderRequest:
    """Candidate `candidate`'s group over `rows` (the turns, in order): source c0, one edit row per turn."""
    from editgen.p2p.generate import RenderRequest

    source = rows[0]["caption"]
    first_id = pair_key(str(rows[0]["id"]), seed)
    base_seed, _, _, guidance = draw_candidate(first_id, candidate, space)
    edits = [_turn_control(r, pair_key(str(r["id"]), seed), candidate, space, t == 0).resolve(source)
             for t, r in enumerate(rows)]
    return RenderRequest(source=source, edits=edits, seed=base_seed, steps=space.steps, guidance=guidance,
                         height=space.height, width=space.width, scheduler=space.scheduler,
                         negative_prompt=space.negative_prompt)


def _pair_request(row: Mapping[str, Any], space: CandidateSpace) -> RenderRequest:
    """The turn's own pair (its caption -> its edited caption) as one P2P request: what a single pair's
    draw checks (an edit whose words lie past the 77 tokens is a no-op between rows t-1 and t too)."""
    from editgen.p2p.generate import RenderRequest

    control = _turn_control(row, str(row["id"]), 0, space, True)
    return RenderRequest(source=row["caption"], edits=[control.resolve(row["caption"])], seed=0, steps=space.steps,
                         guidance=1.0, height=space.height, width=space.width, scheduler=space.scheduler)


def renderable_prefix(p2p: P2PPipeline, rows: Sequence[Mapping[str, Any]], space: CandidateSpace,
                      seed: int) -> tuple[int, PairRejected | None]:
    """How many leading turns render (each turn's words within the text encoder's 77 tokens, its windows
    valid against c0), and the refusal of the next one."""
    from editgen.p2p.generate import check_request

    for t in range(1, len(rows) + 1):
        try:
            with truncation_drops():
                check_request(p2p, _pair_request(rows[t - 1], space))  # its own edit is not cut off
                check_request(p2p, session_request(rows[:t], 0, space, seed))  # and renders from c0
        except PairRejected as exc:
            return t - 1, exc
        except (ValueError, KeyError) as exc:
            return t - 1, PairRejected("render_invalid_pair", str(exc))
    return len(rows), None


def session_records(rows: Sequence[Mapping[str, Any]], n: int, space: CandidateSpace, seed: int,
                    model: ModelRef, words: Sequence[Sequence[str]], threshold: float) -> list[list[CandidateRecord]]:
    """Each turn's records of candidates 0..n-1 (`words`: each turn's mask words)."""
    meta_words = [list(w) for w in words]
    out: list[list[CandidateRecord]] = [[] for _ in rows]
    for c in range(n):
        req = session_request(rows, c, space, seed)
        params = request_params(req)
        for t, row in enumerate(rows):
            meta = {"turn": t + 1, "turns": len(rows), "turn_words": meta_words}
            out[t].append(CandidateRecord(
                engine="p2p", version=1, model=model, seed=int(req.seed), params={**params, SESSION: meta},
                pair_id=pair_key(str(row["id"]), seed), candidate=c,
                mask=mask_spec("cross_attention", words[t], threshold)))
    return out


def draw_session(p2p: P2PPipeline, rows: Sequence[Mapping[str, Any]], n: int, space: CandidateSpace, seed: int,
                 model: ModelRef, words: Sequence[Sequence[str]], threshold: float) -> SessionDraw:
    """The session's records for the turns that render, and the first refusal."""
    m, rejected = renderable_prefix(p2p, rows, space, seed)
    if m == 0:
        return SessionDraw([], rejected)
    return SessionDraw(session_records(rows[:m], n, space, seed, model, words[:m], threshold), rejected)


def group_key(record: CandidateRecord) -> tuple[str, int, str] | None:
    """Records of one session candidate share this (its source caption and seed identify the group)."""
    meta = record.params.get(SESSION)
    if meta is None:
        return None
    return (str(record.params["source_prompt"]), int(record.candidate or 0), str(record.seed))


def map_request(record: CandidateRecord) -> MapRequest | None:
    """The word maps of the group: each turn's words in its own pair's two rows."""
    from editgen.p2p.word_maps import MapRequest

    m = record.mask
    if not m or m.get("source") != "cross_attention":
        return None
    words = tuple(tuple(w) for w in record.params[SESSION]["turn_words"])
    return MapRequest(tuple(w for ws in words for w in ws), float(m["threshold"]), int(m["dilate"]),
                      downscale=int(m["downscale"]), turn_words=words)


def render_sessions(p2p: P2PPipeline, records: Sequence[CandidateRecord], fmt: str = "png",
                    quality: int = 95) -> list[RenderedCandidate]:
    """Render session records (input order kept): one UNet group per session candidate, whichever of its
    turns are asked for; turn t's input is row t-1's image, encoded once."""
    from editgen.p2p.candidates import encode_image, encode_mask, image_format_name
    from editgen.p2p.generate import render

    check_model(p2p, records)
    groups: dict[object, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(group_key(r), []).append(i)
    out: dict[int, RenderedCandidate] = {}
    for idx in groups.values():
        first = records[idx[0]]
        request = record_request(first)
        res = render(p2p, [request], maps=[map_request(first)])[0]
        images = [encode_image(img, fmt, quality) for img in res.images]
        hw = (request.height, request.width)
        for i in idx:
            t = int(records[i].params[SESSION]["turn"])
            mask = res.masks[t - 1]
            out[i] = RenderedCandidate(
                record=with_mask(records[i], mask, hw), input_image=images[t - 1], edited_image=images[t],
                image_format=image_format_name(fmt), mask=None if mask is None else encode_mask(mask, hw),
                result=res)
    return [out[i] for i in range(len(records))]

