"""LocalBlend: confine an edit to where the blend words attend, keep the source everywhere else.

Maps are the blend words' conditional cross-attention probabilities *after* the P2P edit (the
reference stores the maps its edit then overwrites in place), summed over the words' tokens,
averaged over heads and the selected layers, accumulated over steps as in the reference. After each step from
``start_step`` the mask is max-pooled (3x3), upsampled to the latent grid, normalised by its maximum
and thresholded; the source row's mask (its words) is OR-ed with the edit row's, and latents outside
the mask are *set* to the source latents (``torch.where``, so they are bit-identical, not blended).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editgen.p2p.controls import CompiledBlend
from editgen.p2p.masks import attention_region
from editgen.p2p.word_maps import WordMaps


@dataclass
class _Target:
    row: int  # edit row (cond-half index)
    src: int  # its source row
    src_pair: int | None  # index into the recorded maps, or None
    edit_pair: int | None
    threshold: float
    start_step: int


class LocalBlend(WordMaps):
    """Collects blend-word attention maps during the UNet pass and masks latents after each step."""

    def __init__(
        self,
        targets: list[tuple[int, int, CompiledBlend]],
        cond_offset: int,
        latent_hw: tuple[int, int],
        downscales: set[int],
        device: torch.device,
    ) -> None:
        pairs: list[tuple[int, tuple[float, ...]]] = []

        def pair(row: int, cols: torch.Tensor | None) -> int | None:
            if cols is None:
                return None
            key = (row, tuple(cols.tolist()))
            if key not in pairs:
                pairs.append(key)
            return pairs.index(key)

        self.targets = [
            _Target(row, src, pair(src, b.src_cols), pair(row, b.edit_cols), b.threshold, b.start_step)
            for row, src, b in targets
        ]
        cols = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
        super().__init__([cond_offset + p[0] for p in pairs], cols, latent_hw, downscales, device)
        self.masks: dict[int, torch.Tensor] = {}

    def _word_mask(self, pair: int, threshold: float) -> torch.Tensor:
        assert self.acc is not None
        return attention_region(self.acc[pair : pair + 1], self.latent_hw, threshold)  # dilate 3, max-normalised

    def apply(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        """Masks edit rows' latents (``(n_rows, C, h, w)``, cond-half indexing) after step ``step``."""
        if self.acc is None:
            return latents
        out = latents
        for t in self.targets:
            if step < t.start_step:
                continue
            parts = [self._word_mask(p, t.threshold) for p in (t.src_pair, t.edit_pair) if p is not None]
            mask = parts[0] if len(parts) == 1 else parts[0] | parts[1]
            self.masks[t.row] = mask
            if out is latents:
                out = latents.clone()
            out[t.row] = torch.where(mask, latents[t.row], latents[t.src])
        return out
