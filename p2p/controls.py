"""Edit-control configuration (plain, JSON-able dataclasses) and their compilation to per-step tensors.

An :class:`EditControl` describes one edited prompt relative to the source prompt: which mode, the
cross/self-attention replace windows, per-word reweighting and LocalBlend. :func:`compile_edit` turns
it into what the attention processors consume: ``alpha[step, token]`` (how much of edit token's
attention comes from the source), the token mapper, the reweight vector and the self-attention window
in steps. Keeping configuration separate from tensors is what lets a candidate be stored as a dict and
regenerated later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from editgen.p2p.seq_align import (
    Alignment,
    PromptTokens,
    TruncatedWord,
    decide_mode,
    edit_truncated,
    locate_word,
    refine_alignment,
    replace_alignment,
    reweight_vector,
)

MODES = ("auto", "replace", "refine", "reweight", "ip2p")
Window = float | tuple[float, float]
DEFAULT_KEY = "default_"


def parse_window(value: Any) -> tuple[float, float]:
    """``p`` -> ``(0, p)``; ``"a,b"`` / ``(a, b)`` -> ``(a, b)``. Fractions of the denoising steps."""
    if isinstance(value, str):
        parts = [p for p in value.replace(":", ",").split(",") if p.strip()]
        nums = [float(p) for p in parts]
        value = nums[0] if len(nums) == 1 else tuple(nums)
    if isinstance(value, (int, float)):
        start, end = 0.0, float(value)
    elif isinstance(value, Sequence) and len(value) == 2:
        start, end = float(value[0]), float(value[1])
    else:
        raise ValueError(f"window must be a fraction or a (start, end) pair, got {value!r}")
    if not (0.0 <= start <= end <= 1.0):
        raise ValueError(f"window must satisfy 0 <= start <= end <= 1, got ({start}, {end})")
    return start, end


def window_steps(window: Any, num_steps: int) -> tuple[int, int]:
    """Step range ``[start, end)`` of a fractional window: ``int(f * N)``, the reference's rule for the
    self-attention window and LocalBlend's start (``int`` of the same float product, no rounding nudge:
    ``int(0.3 * 10)`` is 2 there, so it is 2 here)."""
    start, end = parse_window(window)
    return int(start * num_steps), int(end * num_steps)


def cross_window_steps(window: Any, num_steps: int) -> tuple[int, int]:
    """Step range of a cross-attention window: the reference builds an ``(N + 1)``-row alpha table
    (``get_time_words_attention_alpha``), so the edit is active for ``int(s * (N + 1)) <= t <
    int(f * (N + 1))``, one step longer than the self window for most ``f``."""
    start, end = parse_window(window)
    return int(start * (num_steps + 1)), int(end * (num_steps + 1))


def few_step_window(window: Any, num_steps: int) -> tuple[int, int]:
    """Step range ``[start, end)`` of a window under a few-step sampler (1-8 steps: LCM, SD/SDXL-Turbo).

    The many-step rules floor ``f * N`` (``int``), which at N = 1..4 drops most windows to nothing (a
    0.3 self window at 2 steps: ``int(0.6) = 0``). Here a window covers the steps it overlaps:
    ``[floor(s * N), ceil(e * N))``, at least one step when ``e > s`` (a non-empty window always acts),
    none when ``e == s`` (a zero window is a plain generation). The same rule for cross and self windows
    (the many-step cross rule's ``N + 1`` table is the reference's quirk, not worth carrying to 2 steps).
    ``ceil`` forgives float noise (``0.3 * 10`` is 3, not 4)."""
    start, end = parse_window(window)
    if end <= start:
        return 0, 0
    a = min(int(math.floor(start * num_steps + 1e-9)), num_steps - 1)
    b = max(a + 1, int(math.ceil(end * num_steps - 1e-9)))
    return a, min(b, num_steps)


def ip2p_steps(window: Any, num_steps: int) -> tuple[int, int]:
    """Steps where InstructPix2Pix's generation script copies self-attention: step ``i`` of ``N`` when
    ``p > i / (N - 1)`` (``prompt2prompt_threshold``); a ``(start, end)`` window also needs
    ``i / (N - 1) >= start``. A single-step render counts as ratio 0."""
    start, end = parse_window(window)
    active = [i for i in range(num_steps) if start <= _ratio(i, num_steps) < end]
    return (active[0], active[-1] + 1) if active else (0, 0)


def _ratio(i: int, num_steps: int) -> float:
    return i / (num_steps - 1) if num_steps > 1 else 0.0


def _plain_window(value: Any) -> float | list[float]:
    start, end = parse_window(value)
    return end if start == 0.0 else [start, end]


@dataclass
class BlendConfig:
    """LocalBlend: keep the source's latents outside the region the blend words attend to.

    ``downscale`` picks the cross-attention layers whose query grid is ``latent / downscale`` (the
    reference reads SD's 16x16 layers at 512 px, i.e. 4); models without such layers fall back to all
    cross-attention layers.
    """

    words: list[str]
    threshold: float = 0.3
    start: float = 0.2
    downscale: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.words, str):
            self.words = [w.strip() for w in self.words.split(",") if w.strip()]
        self.words = list(self.words)
        if not self.words:
            raise ValueError("LocalBlend needs at least one word")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"blend threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.start <= 1.0:
            raise ValueError(f"blend start must be in [0, 1], got {self.start}")
        if int(self.downscale) < 1:
            raise ValueError(f"blend downscale must be >= 1, got {self.downscale}")
        self.downscale = int(self.downscale)


@dataclass
class EditControl:
    """One edited prompt and how its attention is tied to the source prompt.

    ``cross_replace`` is a window (``p`` or ``(start, end)``) or a per-word dict with an optional
    ``"default_"`` entry. ``self_max_res`` limits self-attention injection to layers with at most
    ``self_max_res**2`` query tokens (reference default 32, i.e. not SD's 64x64 layers at 512 px);
    ``None`` means all layers. ``ip2p`` mode ignores the cross window and injects self-attention at
    every resolution and in both CFG halves, as InstructPix2Pix did. ``reweight`` scales the edit
    row's attention only inside the cross window (the reference ``AttentionReweight``);
    ``reweight_all_steps`` also scales it outside. ``edit_kind`` is the instruct stage's hint for ``auto``.
    """

    prompt: str
    mode: str = "auto"
    cross_replace: Any = 0.8
    self_replace: Any = 0.4
    self_max_res: int | None = 32
    reweight: dict[str, float] = field(default_factory=dict)
    blend: BlendConfig | None = None
    edit_kind: str | None = None
    reweight_all_steps: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.blend, Mapping):
            self.blend = BlendConfig(**self.blend)
        self.reweight = {str(k): float(v) for k, v in dict(self.reweight or {}).items()}
        if isinstance(self.cross_replace, Mapping):
            self.cross_replace = {str(k): _plain_window(v) for k, v in self.cross_replace.items()}
        else:
            self.cross_replace = _plain_window(self.cross_replace)
        self.self_replace = _plain_window(self.self_replace)
        if self.self_max_res is not None and self.self_max_res <= 0:
            raise ValueError("self_max_res must be positive or None")

    def resolved_mode(self, source: str) -> str:
        if self.mode != "auto":
            return self.mode
        return decide_mode(source, self.prompt, self.edit_kind)

    def resolve(self, source: str) -> EditControl:
        """Same control with ``auto`` replaced by the concrete mode (what gets stored in records)."""
        return replace(self, mode=self.resolved_mode(source))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditControl:
        return cls(**dict(data))


@dataclass
class CompiledBlend:
    src_cols: torch.Tensor | None  # (L,) 1.0 on the blend words' tokens in the source prompt
    edit_cols: torch.Tensor | None  # (L,) same for the edit prompt
    threshold: float
    start_step: int
    downscale: int


@dataclass
class CompiledEdit:
    """Per-step tensors for one edit row (see module docstring).

    Edited cross-attention at step ``t``: ``alpha[t] * w * (P_src M) + own[t] * P_edit``.
    """

    mode: str
    alpha: torch.Tensor  # (T, L) take-from-source weight, 0 on unmapped tokens / outside the window
    mapper: torch.Tensor | None  # (L, L) or None for identity
    weights: torch.Tensor | None  # (L,) reweight, None if all ones
    self_steps: tuple[int, int]
    self_max_tokens: int | None
    blend: CompiledBlend | None
    own: torch.Tensor | None = None  # (T, L) weight of the edit row's own attention; None: 1 - alpha
    self_both_halves: bool = False  # inject self-attention in the unconditional half too (ip2p)


def _cols(tokens: PromptTokens, words: list[str]) -> tuple[torch.Tensor | None, list[str]]:
    """Blend columns of ``words`` in one prompt, and the words that lie past its truncation."""
    pos: set[int] = set()
    cut: list[str] = []
    for w in words:
        try:
            pos.update(locate_word(tokens, w, "blend"))
        except TruncatedWord:
            cut.append(w)
        except ValueError:
            continue
    if not pos:
        return None, cut
    cols = torch.zeros(tokens.length)
    cols[sorted(pos)] = 1.0
    return cols, cut


def _alignment(mode: str, src: PromptTokens, tgt: PromptTokens) -> Alignment:
    if mode == "replace" or (mode == "reweight" and len(src.words) == len(tgt.words)):
        return replace_alignment(src, tgt)
    return refine_alignment(src, tgt)


def _cross_window(windows: Any, tgt: PromptTokens, num_steps: int, few_step: bool = False) -> torch.Tensor:
    """(T, L) 1 where the cross edit is active; a per-word dict without ``default_`` defaults to the
    whole run, as the reference's ``get_time_words_attention_alpha``."""
    if not isinstance(windows, Mapping):
        windows = {DEFAULT_KEY: windows}
    steps_of = few_step_window if few_step else cross_window_steps
    win = torch.zeros(num_steps, tgt.length)
    s, e = steps_of(windows.get(DEFAULT_KEY, 1.0), num_steps)
    win[s:e] = 1.0
    for word, window in windows.items():
        if word == DEFAULT_KEY:
            continue
        pos = locate_word(tgt, word, "cross_replace")
        s, e = steps_of(window, num_steps)
        win[:, pos] = 0.0
        win[s:e, pos] = 1.0
    return win


def _own_weight(win: torch.Tensor, mapped: torch.Tensor, w: torch.Tensor | None, all_steps: bool) -> torch.Tensor:
    """Weight of the edit row's own attention: 1 outside the window, the unmapped (new) tokens inside
    it; the reweight scales what the window replaces (new tokens included), or everything."""
    alpha = win * mapped
    if w is None:
        return 1.0 - alpha
    if all_steps:
        return (1.0 - alpha) * w
    return (1.0 - win) + (win - alpha) * w


def _compile_blend(b: BlendConfig, src: PromptTokens, tgt: PromptTokens, num_steps: int) -> CompiledBlend:
    (src_cols, src_cut), (edit_cols, edit_cut) = _cols(src, b.words), _cols(tgt, b.words)
    if src_cols is None and edit_cols is None:
        cut = sorted(set(src_cut + edit_cut))
        if cut:
            raise TruncatedWord(f"blend words {cut} lie past the {src.length}-token truncation of both prompts")
        raise ValueError(f"blend words {b.words} found in neither {src.prompt!r} nor {tgt.prompt!r}")
    return CompiledBlend(src_cols, edit_cols, b.threshold, window_steps(b.start, num_steps)[1], b.downscale)


def compile_edit(control: EditControl, src: PromptTokens, tgt: PromptTokens, num_steps: int,
                 few_step: bool = False) -> CompiledEdit:
    """Build the processors' tensors for one edit row over ``num_steps`` denoising steps (``few_step``:
    windows by :func:`few_step_window`, the rule of the few-step samplers).

    Raises :class:`p2p.seq_align.TruncatedWord` when the prompts differ only past the encoder's
    token limit (the pair would be a no-op) or a word the edit names lies past it.
    """
    mode = control.resolved_mode(src.prompt)
    weights = reweight_vector(tgt, control.reweight)
    if mode == "reweight" and not control.reweight:
        raise ValueError("reweight mode needs at least one word=factor")
    if weights is None and edit_truncated(src, tgt):
        raise TruncatedWord(
            f"the edit changes only words past the {src.length}-token truncation: {src.prompt!r} -> {tgt.prompt!r}"
        )
    alpha = torch.zeros(num_steps, src.length)
    own, mapper = None, None
    if mode != "ip2p":
        align = _alignment(mode, src, tgt)
        mapper = None if align.identity else align.mapper
        win = _cross_window(control.cross_replace, tgt, num_steps, few_step)
        alpha = win * align.mapped.to(win.dtype)
        own = _own_weight(win, align.mapped.to(win.dtype), weights, control.reweight_all_steps)
    elif weights is not None and control.reweight_all_steps:
        own = weights.expand(num_steps, -1).clone()
    if mode == "ip2p":
        self_steps, max_res = ip2p_steps(control.self_replace, num_steps), None
    else:
        steps_of = few_step_window if few_step else window_steps
        self_steps, max_res = steps_of(control.self_replace, num_steps), control.self_max_res
    blend = None if control.blend is None else _compile_blend(control.blend, src, tgt, num_steps)
    return CompiledEdit(
        mode=mode,
        alpha=alpha,
        mapper=mapper,
        weights=weights,
        self_steps=self_steps,
        self_max_tokens=None if max_res is None else max_res * max_res,
        blend=blend,
        own=own,
        self_both_halves=mode == "ip2p",
    )
