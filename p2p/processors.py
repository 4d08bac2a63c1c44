"""Prompt-to-Prompt as diffusers attention processors (one object per attention layer).

Batch layout (as in diffusers pipelines): ``[uncond rows..., cond rows...]`` with CFG, else only cond
rows. Only *cond* rows of edit prompts are modified (as the reference controller, which edits the
second half of the batch), except in ``ip2p`` mode, whose self-attention copy covers both halves as
InstructPix2Pix's script did; source rows always compute plain attention.

Why the fused path is cheap: every edit is linear along the key axis. With ``P = softmax(QK^T)``,
``alpha`` the per-token take-from-source weight (window included), ``M`` the token mapper and ``w``
the reweight vector, the edited attention output is

    (alpha w (P_src M) + own P_edit) V_edit
      = SDPA(Q_src, K_src, M (alpha w V_edit)) + SDPA(Q_edit, K_edit, own V_edit)

and self-attention injection is ``SDPA(Q_src, K_src, V_edit)``. So the fused processor overwrites the
edit rows of the layer's fresh q/k/v projections in place (source query/key; value rescaled by
``alpha * w`` and mapped by ``M``) and makes the one ``scaled_dot_product_attention`` call plain
attention would make. The second term -- only when both are non-zero (refinement's new tokens,
per-word windows, reweighting) -- is a small extra SDPA call over just those rows. Attention
probabilities are never materialised except for LocalBlend, and then only for the blend rows and
their sources at the blend layers, edited as the explicit path does (the reference stores the maps
its edit overwrote in place). The batch is never copied, so memory matches plain attention.

:class:`ExplicitP2PProcessor` is the textbook reference: full probabilities, edited in place. It is
slow and memory hungry and exists to check the fused algebra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from editgen.p2p.controls import CompiledEdit
from editgen.p2p.local_blend import LocalBlend
from editgen.p2p.word_maps import WordMaps


@dataclass
class EditRow:
    """An edit prompt's row in the cond half, the source row it follows, and its compiled controls."""

    row: int
    src: int
    edit: CompiledEdit


@dataclass
class RawEdit:
    """One edit row's cross-attention edit at this step: ``take * (P_src M) + own * P_row``."""

    row: int
    src: int
    take: torch.Tensor  # (L,)
    own: torch.Tensor  # (L,)
    mapper: torch.Tensor | None

    def apply(self, p_src: torch.Tensor, p_row: torch.Tensor) -> torch.Tensor:
        from_src = p_src if self.mapper is None else p_src @ self.mapper
        return self.take * from_src + self.own * p_row


@dataclass
class CrossPlan:
    """What the fused cross-attention does at one step (built once per step, shared by all layers).

    Everything is applied *in place* on the layer's fresh q/k/v projections, touching edit rows only,
    so the fused path allocates nothing batch-sized beyond what plain attention does.
    """

    swap: tuple[torch.Tensor, torch.Tensor] | None  # (edit rows, their source rows) for query/key
    v_ops: list[tuple[int, str, torch.Tensor]]  # (edit row, "mat"|"diag", tensor): value rewrite
    extra_rows: torch.Tensor | None  # (X,) edit rows that also get an own-attention term
    extra: list[tuple[int, torch.Tensor]]  # (edit row, (L,) own-term value scale), same order
    raw: list[RawEdit]  # the same edits for the explicit path and LocalBlend's maps


@dataclass
class P2PController:
    """Shared state of one P2P render: row layout, current step, per-step plans, LocalBlend."""

    n_rows: int  # rows per CFG half
    cfg: bool
    edits: list[EditRow]
    num_steps: int
    latent_hw: tuple[int, int]
    device: torch.device
    dtype: torch.dtype
    blend_downscales: set[int] = field(default_factory=set)
    step: int = 0
    blend: LocalBlend | None = None
    #: Fixed masks (e.g. DiffEdit's), edit row -> (its source row, (h, w) bool mask, first step): outside the
    #: mask the edit row's latents are set to its source row's after every step from the first.
    fixed_masks: dict[int, tuple[int, torch.Tensor, int]] = field(default_factory=dict)
    #: Word maps gathered for edit masks (p2p.word_maps): read-only observers of the attention.
    recorder: WordMaps | None = None
    _cross: CrossPlan | None = None
    _self: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offset = self.n_rows if self.cfg else 0
        self.batch = 2 * self.n_rows if self.cfg else self.n_rows
        dev = self.device
        # Plans are decided on CPU copies (no device syncs); only the per-step tensors go to ``dev``.
        for e in self.edits:
            c = e.edit
            c.alpha = c.alpha.float().cpu()
            c.mapper = None if c.mapper is None else c.mapper.float().cpu()
            c.weights = None if c.weights is None else c.weights.float().cpu()
        targets = [(e.row, e.src, e.edit.blend) for e in self.edits if e.edit.blend is not None]
        if targets:
            wanted = {t[2].downscale for t in targets} & self.blend_downscales
            self.blend = LocalBlend(
                targets, self.offset, self.latent_hw, wanted or set(self.blend_downscales) or {1}, dev
            )
        self.begin_step(0)

    # ---- per-step plans -------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        self.step = step
        self._self = {}
        self._cross = self._build_cross(step)

    def _build_cross(self, step: int) -> CrossPlan | None:
        dst: list[int] = []
        srcs: list[int] = []
        v_ops: list[tuple[int, str, torch.Tensor]] = []
        extra: list[int] = []
        scales: list[torch.Tensor] = []
        raw = []
        t = min(step, self.num_steps - 1)
        for e in self.edits:
            c = e.edit
            row, src = self.offset + e.row, self.offset + e.src
            alpha = c.alpha[t]
            take = alpha if c.weights is None else alpha * c.weights  # source term scale per edit token
            own = 1.0 - alpha if c.own is None else c.own[t]
            has_src, has_own = bool(take.any()), bool(own.any())
            if not has_src and bool((own == 1).all()):
                continue  # plain attention for this row
            raw.append(RawEdit(row, src, self._dev(take), self._dev(own), self._dev(c.mapper)))
            if not has_src:
                v_ops.append((row, "diag", self._dev(own, self.dtype)))
                continue
            if has_own:
                extra.append(row)
                scales.append(self._dev(own, self.dtype))
            dst.append(row)
            srcs.append(src)
            if c.mapper is not None:
                v_ops.append((row, "mat", self._dev(c.mapper * take[None, :], self.dtype)))
            elif not bool((take == 1).all()):
                v_ops.append((row, "diag", self._dev(take, self.dtype)))
        if not raw:
            return None
        return CrossPlan(
            swap=(self._rows(dst), self._rows(srcs)) if dst else None,
            v_ops=v_ops,
            extra_rows=self._rows(extra) if extra else None,
            extra=list(zip(extra, scales, strict=True)),
            raw=raw,
        )

    def _rows(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _dev(self, t: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        return None if t is None else t.to(self.device, dtype)

    def cross_plan(self) -> CrossPlan | None:
        return self._cross

    def self_plan(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(edit rows, source rows) whose query/key are injected at this step and layer size, or None."""
        if n_tokens in self._self:
            return self._self[n_tokens]
        dst, srcs = [], []
        for e in self.edits:
            s, t = e.edit.self_steps
            cap = e.edit.self_max_tokens
            if s <= self.step < t and (cap is None or n_tokens <= cap):
                dst.append(self.offset + e.row)
                srcs.append(self.offset + e.src)
                if self.cfg and e.edit.self_both_halves:  # ip2p: the unconditional half copies too
                    dst.append(e.row)
                    srcs.append(e.src)
        plan = (self._rows(dst), self._rows(srcs)) if dst else None
        self._self[n_tokens] = plan
        return plan

    def end_step(self, latents: torch.Tensor) -> torch.Tensor:
        """Apply LocalBlend, then any fixed masks, to the (cond-half indexed) latents after the step."""
        out = latents if self.blend is None else self.blend.apply(self.step, latents)
        for row, (src, mask, start) in self.fixed_masks.items():
            if self.step >= start:
                out = out.clone() if out is latents else out
                out[row] = torch.where(mask.to(out.device), out[row], out[src])
        return out

    def masks(self) -> dict[int, torch.Tensor]:
        """The mask each masked edit row ended with (LocalBlend's, or the fixed one)."""
        found = dict(self.blend.masks) if self.blend is not None else {}
        found.update({row: m for row, (_, m, _) in self.fixed_masks.items()})
        return found

    def check_batch(self, batch: int) -> None:
        if batch != self.batch:
            raise RuntimeError(f"P2P controller was set up for batch {self.batch}, UNet got {batch}")


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`(B, N, H*D)` -> `(B, H, N, D)`: the per-head view every explicit attention here works on."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _swap_rows(
    swap: tuple[torch.Tensor, torch.Tensor] | None,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Give edit rows their source's query and key, in place (the projections are fresh tensors)."""
    if swap is None:
        return query, key, mask
    dst, src = swap
    query.index_copy_(0, dst, query.index_select(0, src))
    key.index_copy_(0, dst, key.index_select(0, src))
    if mask is not None:
        mask = mask.clone()
        mask.index_copy_(0, dst, mask.index_select(0, src))
    return query, key, mask


def _sdpa(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None):
    """Multi-head SDPA on ``(B, N, C)`` projections, exactly as ``AttnProcessor2_0`` calls it."""
    heads = attn.heads
    q, k, v = split_heads(query, heads), split_heads(key, heads), split_heads(value, heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)


class _P2PProcessorBase:
    """Shared pre/post-processing; mirrors diffusers' ``AttnProcessor2_0`` so plain rows are identical."""

    def __init__(self, controller: P2PController, name: str = "") -> None:
        self.ctrl = controller
        self.name = name

    @torch.compiler.disable
    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = (encoder_hidden_states if is_cross else hidden_states).shape
        self.ctrl.check_batch(batch_size)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        out = self.attend(attn, query, key, value, attention_mask, is_cross)
        out = out.to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def attend(self, attn, query, key, value, mask, is_cross) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def attention_probs(attn, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Float32 attention probabilities ``(B, H, N, L)`` of ``(B, N, C)`` projections."""
    q, k = split_heads(query, attn.heads), split_heads(key, attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores + mask
    return scores.float().softmax(dim=-1)


def _record_blend(blend: WordMaps, probs: dict[int, torch.Tensor], plan: CrossPlan | None,
                  probes: torch.Tensor | None = None) -> None:
    """Store the blend rows' *edited* conditional cross-attention (what the reference's store holds),
    then the probes' maps (`_probe_maps`), if any."""
    found = []
    if blend.row_list:
        edits = {r.row: r for r in plan.raw} if plan is not None else {}
        maps = []
        for row in blend.row_list:
            e = edits.get(row)
            maps.append(probs[row] if e is None else e.apply(probs[e.src], probs[row]))
        stacked = torch.stack(maps)  # (P, H, N, L)
        found.append((stacked * blend.cols[:, None, None, :]).sum(-1).mean(1))
    if probes is not None:
        found.append(probes)
    blend.record(found[0] if len(found) == 1 else torch.cat(found))


def _probe_maps(attn, query: torch.Tensor, maps: WordMaps) -> torch.Tensor | None:
    """(Q, N) maps of each probe's words against its row's queries: the probe prompt's keys through this
    layer's own key projection, the probabilities of that one row only."""
    if not maps.probes:
        return None
    out = []
    for probe in maps.probes:
        states = probe.states.to(query.dtype)
        if attn.norm_cross:
            states = attn.norm_encoder_hidden_states(states)
        p = attention_probs(attn, query[probe.row : probe.row + 1], attn.to_k(states), None)  # (1, H, N, L)
        out.append((p[0] * probe.cols[None, None, :]).sum(-1).mean(0))
    return torch.stack(out)


class FusedP2PProcessor(_P2PProcessorBase):
    """P2P on fused SDPA: edits become query/key row swaps and value rescaling/mixing."""

    def attend(self, attn, query, key, value, mask, is_cross) -> torch.Tensor:
        ctrl = self.ctrl
        batch, n_query, _ = query.shape
        blend = ctrl.blend
        if is_cross and blend is not None and blend.wants(n_query):
            self._blend_maps(attn, query, key, mask, blend, ctrl.cross_plan())  # before the in-place swaps
        rec = ctrl.recorder
        if is_cross and rec is not None and rec.wants(n_query):
            self._blend_maps(attn, query, key, mask, rec, ctrl.cross_plan())  # reads, never writes

        own = None
        if is_cross:
            plan = ctrl.cross_plan()
            if plan is not None:
                if plan.extra_rows is not None:  # own-attention term: copy the few rows it needs first
                    rows = plan.extra_rows
                    own_v = torch.stack([scale[:, None] * value[r] for r, scale in plan.extra])
                    own_mask = None if mask is None else mask.index_select(0, rows)
                    own = (rows, query.index_select(0, rows), key.index_select(0, rows), own_v, own_mask)
                for row, kind, t in plan.v_ops:
                    value[row] = t @ value[row] if kind == "mat" else t[:, None] * value[row]
                query, key, mask = _swap_rows(plan.swap, query, key, mask)
        else:
            query, key, mask = _swap_rows(ctrl.self_plan(n_query), query, key, mask)

        out = _sdpa(attn, query, key, value, mask)
        if own is not None:
            rows, *qkvm = own
            out.index_add_(0, rows, _sdpa(attn, *qkvm))
        return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1])

    @staticmethod
    def _blend_maps(attn, query, key, mask, blend: WordMaps, plan: CrossPlan | None) -> None:
        """Probabilities of just the blend rows and their sources, edited, then recorded."""
        rows = set(blend.row_list)
        if plan is not None:
            rows |= {r.src for r in plan.raw if r.row in rows}
        need = sorted(rows)
        probs: dict[int, torch.Tensor] = {}
        if need:
            idx = torch.tensor(need, dtype=torch.long, device=query.device)
            sub_mask = None if mask is None else mask.index_select(0, idx)
            p = attention_probs(attn, query.index_select(0, idx), key.index_select(0, idx), sub_mask)
            probs = {r: p[i] for i, r in enumerate(need)}
        _record_blend(blend, probs, plan, _probe_maps(attn, query, blend))


class ExplicitP2PProcessor(_P2PProcessorBase):
    """Reference path: materialise attention probabilities and edit them the textbook way."""

    def attend(self, attn, query, key, value, mask, is_cross) -> torch.Tensor:
        ctrl = self.ctrl
        batch, n_query, _ = query.shape
        v = split_heads(value, attn.heads)
        probs = attention_probs(attn, query, key, mask)
        if is_cross:
            plan = ctrl.cross_plan()
            if plan is not None:
                edited = probs.clone()
                for e in plan.raw:
                    edited[e.row] = e.apply(probs[e.src], probs[e.row])
                probs = edited
            for maps in (ctrl.blend, ctrl.recorder):
                if maps is not None and maps.wants(n_query):  # already edited
                    _record_blend(maps, {r: probs[r] for r in maps.row_list}, None, _probe_maps(attn, query, maps))
        else:
            plan = ctrl.self_plan(n_query)
            if plan is not None:
                dst, src = plan
                probs = probs.index_copy(0, dst, probs.index_select(0, src))
        out = torch.matmul(probs.to(v.dtype), v)
        return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1])


def attention_downscales(unet) -> dict[str, int]:
    """Spatial downscale (latent side / layer side) of every attention processor name of a
    ``UNet2DConditionModel``: down block i -> 2**i, mid -> 2**(n-1), up block i -> 2**(n-1-i)."""
    n_down = len(unet.config.block_out_channels)
    out = {}
    for name in unet.attn_processors:
        parts = name.split(".")
        if parts[0] == "down_blocks":
            out[name] = 2 ** int(parts[1])
        elif parts[0] == "up_blocks":
            out[name] = 2 ** (n_down - 1 - int(parts[1]))
        else:
            out[name] = 2 ** (n_down - 1)
    return out
