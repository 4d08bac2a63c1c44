"""Word attention maps gathered while a group renders: what edit masks are made of, at no UNet cost.

LocalBlend gathers its words' conditional cross-attention maps to mask latents during a render. A
`WordMaps` recorder gathers the same maps and touches nothing: the attention processors read the layer's
fresh query/key projections before they edit them, so the images are those of the render without it.
`MapRequest` asks for one group's maps: the words in the source row (row 0) and in each edit row (the
edited maps, as LocalBlend records them), and, with `probe`, the words of another prompt (the edited
caption) scored against the source row's queries: where a word the source caption lacks would attend in
the source image (a source pass has no row for it). After the render, `regions` turns the accumulated
maps into bool latent-grid masks (p2p.masks.attention_region with the request's settings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from editgen.p2p.masks import attention_region, union
from editgen.p2p.seq_align import PromptTokens, locate_word, tokenize


@dataclass(frozen=True)
class MapRequest:
    """One group's word maps and how they become a mask (LocalBlend's settings by default)."""

    words: tuple[str, ...]
    threshold: float = 0.3
    dilate: int = 3
    smooth: float = 0.0
    normalize: str = "max"
    downscale: int = 4  # the cross-attention layers whose query grid is latent / downscale
    probe: str | None = None  # a prompt whose `words` are read with the source row's queries
    #: A session's group (docs/sessions.md): edit row j's mask is turn j's words in rows j-1 and j (its own
    #: pair's before and after), not `words` against the source row. One entry per edit row.
    turn_words: tuple[tuple[str, ...], ...] = ()


@dataclass
class Probe:
    """A probe entry: the batch row whose queries are used, the prompt's word columns, its text states."""

    row: int
    cols: torch.Tensor  # (L,)
    states: torch.Tensor  # (1, L, D): the prompt's conditional encoder hidden states


class WordMaps:
    """Accumulates, over steps and the layers of the chosen downscales, the conditional cross-attention
    maps of (batch row, token columns) entries, then of the probes (LocalBlend's recording)."""

    def __init__(self, rows: list[int], cols: torch.Tensor, latent_hw: tuple[int, int], downscales: set[int],
                 device: torch.device, probes: Sequence[Probe] = ()) -> None:
        self.row_list = rows  # batch rows whose maps are recorded
        self.rows = torch.tensor(self.row_list, dtype=torch.long, device=device)
        self.cols = cols.to(device)  # (P, L): the words' tokens in each recorded row's prompt
        self.probes = list(probes)
        self.latent_hw = latent_hw
        self.downscales = downscales
        f = min(downscales)
        self.work_hw = (max(latent_hw[0] // f, 1), max(latent_hw[1] // f, 1))
        self.acc: torch.Tensor | None = None

    def downscale_of(self, n_tokens: int) -> int:
        h, w = self.latent_hw
        return max(1, round((h * w / n_tokens) ** 0.5))

    def wants(self, n_tokens: int) -> bool:
        return self.downscale_of(n_tokens) in self.downscales

    def record(self, maps: torch.Tensor) -> None:
        """Add per-entry maps ``(P, N)`` of one layer (already head-averaged)."""
        f = self.downscale_of(maps.shape[1])
        h, w = max(self.latent_hw[0] // f, 1), max(self.latent_hw[1] // f, 1)
        grid = maps.float().reshape(maps.shape[0], 1, h, w)
        if (h, w) != self.work_hw:
            grid = F.interpolate(grid, size=self.work_hw, mode="bilinear", align_corners=False)
        self.acc = grid if self.acc is None else self.acc + grid


def word_cols(tokens: PromptTokens, words: Sequence[str]) -> torch.Tensor | None:
    """(L,) 1.0 on the tokens of those `words` found in the prompt (within its 77 tokens), or None. A
    mask is an observer: a word it cannot find is skipped, never an error."""
    pos: set[int] = set()
    for w in words:
        try:
            pos.update(locate_word(tokens, w, "mask"))
        except ValueError:  # absent, or past the truncation (TruncatedWord is a ValueError)
            continue
    if not pos:
        return None
    cols = torch.zeros(tokens.length)
    cols[sorted(pos)] = 1.0
    return cols


@dataclass
class GroupMaps:
    """Which recorded entries belong to one group: its source row's, each edit row's, its probe's."""

    request: MapRequest
    source: int | None = None
    edits: list[int | None] = field(default_factory=list)
    probe: int | None = None
    words: list[str] = field(default_factory=list)  # the words found in some prompt
    chain: list[tuple[int | None, int | None]] = field(default_factory=list)  # turn_words: (row j-1, row j)


def build_recorder(tokenizer: object, groups: Sequence[tuple[int, int]], prompts: Sequence[str],
                   maps: Sequence[MapRequest | None], cond_offset: int, latent_hw: tuple[int, int],
                   available: set[int], device: torch.device,
                   encode: Callable[[str], torch.Tensor]) -> tuple[WordMaps | None, list[GroupMaps | None]]:
    """The recorder for a batch's map requests (one per group, None for none) and each group's entries.
    `groups[g]` is the group's row range in `prompts`; `encode(prompt)` gives a probe's text states."""
    rows: list[int] = []
    cols: list[torch.Tensor] = []
    probes: list[Probe] = []
    plans: list[GroupMaps | None] = []
    for (a, b), req in zip(groups, maps, strict=True):
        if req is None:
            plans.append(None)
            continue
        plan = GroupMaps(req)
        tokens = [tokenize(tokenizer, p) for p in prompts[a:b]]
        if req.turn_words:
            plan.chain = _chain_entries(tokens, req.turn_words, cond_offset + a, rows, cols)
            plan.words = [w for ws in req.turn_words for w in ws if any(word_cols(t, [w]) is not None for t in tokens)]
            plans.append(plan)
            continue
        for offset, tok in enumerate(tokens):
            found = word_cols(tok, req.words)
            index = None if found is None else len(rows)
            if found is not None:
                rows.append(cond_offset + a + offset)
                cols.append(found)
            if offset == 0:
                plan.source = index
            else:
                plan.edits.append(index)
        if req.probe is not None:
            tokens.append(tokenize(tokenizer, req.probe))
            found = word_cols(tokens[-1], req.words)
            if found is not None:
                plan.probe = len(probes)
                probes.append(Probe(cond_offset + a, found.to(device), encode(req.probe)))
        plan.words = [w for w in req.words if any(word_cols(t, [w]) is not None for t in tokens)]
        plans.append(plan)
    wanted = {p.request.downscale for p in plans if p is not None}
    if len(wanted) > 1:
        raise ValueError(f"map requests in one batch must share their downscale, got {sorted(wanted)}")
    if not rows and not probes:
        return None, plans
    table = torch.stack(cols) if cols else torch.zeros(0, 1)
    scales = (wanted & available) or set(available) or {1}
    return WordMaps(rows, table, latent_hw, scales, device, probes), plans


def _chain_entries(tokens: Sequence[PromptTokens], turn_words: Sequence[Sequence[str]], first_row: int,
                   rows: list[int], cols: list[torch.Tensor]) -> list[tuple[int | None, int | None]]:
    """Entries of a session group: turn j's words in the row before it and in its own row (appended to
    `rows`/`cols`); their indices per edit row."""
    if len(turn_words) != len(tokens) - 1:
        raise ValueError(f"{len(turn_words)} turns' words for a group of {len(tokens) - 1} edit rows")
    chain: list[tuple[int | None, int | None]] = []
    for j, words in enumerate(turn_words, start=1):
        pair: list[int | None] = []
        for r in (j - 1, j):
            found = word_cols(tokens[r], words)
            pair.append(None if found is None else len(rows))
            if found is not None:
                rows.append(first_row + r)
                cols.append(found)
        chain.append((pair[0], pair[1]))
    return chain


def regions(recorder: WordMaps | None, plan: GroupMaps | None
            ) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """A group's masks: (source row's words OR the probe's, [source's OR edit row e's words, ...])."""
    if plan is None:
        return None, []
    n_rows = len(recorder.row_list) if recorder is not None else 0

    def mask(index: int | None) -> torch.Tensor | None:
        if recorder is None or recorder.acc is None or index is None:
            return None
        r = plan.request
        return attention_region(recorder.acc[index], recorder.latent_hw, r.threshold, r.dilate, r.smooth,
                                r.normalize).cpu()

    if plan.chain:
        return None, [union([mask(a), mask(b)]) for a, b in plan.chain]
    source = mask(plan.source)
    probe = mask(None if plan.probe is None else n_rows + plan.probe)
    return union([source, probe]), [union([source, mask(e)]) for e in plan.edits]
