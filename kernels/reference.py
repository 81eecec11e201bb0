"""Plain PyTorch reference of every AnchorAttention step, for one sequence's query chunk.

Everything here is written for clarity, not speed: float32 (or float64) math on small shapes,
explicit masks, natural-log units. The Triton kernels (log2 units, paged gathers, compacted
stripe lists) are tested against these functions.

Shapes: the chunk holds the queries at absolute positions ``[P, P + C)`` of a sequence whose
keys ``[0, P + C)`` live in a paged KV cache. ``q`` is ``[C, H, D]``; gathered ``k``/``v`` are
``[S, Hkv, D]`` with ``S = P + C``. GQA: query head ``h`` reads KV head ``h // (H // Hkv)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import AnchorConfig


def gather_paged_kv(kv_cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one sequence's K and V out of vLLM's FlashAttention cache.

    ``kv_cache`` is the logical view ``[num_blocks, Hkv, block_size, 2*D]`` (K and V packed in
    the last dimension); its strides may be any permutation (vLLM's NHD layout stores it as
    ``[num_blocks, block_size, Hkv, 2*D]``). Returns ``k, v`` as ``[seq_len, Hkv, D]``.
    """
    _, _, block_size, two_d = kv_cache.shape
    d = two_d // 2
    pos = torch.arange(seq_len, device=kv_cache.device)
    pages = block_table_row.to(torch.long)[pos // block_size]
    rows = kv_cache[pages, :, pos % block_size, :].to(dtype)  # [S, Hkv, 2D]
    return rows[..., :d], rows[..., d:]


def _expand_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)


def scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled scores ``s[h, i, j] = q_i . k_j * scale`` in natural-log units, ``[H, C, S]``."""
    ke = _expand_kv(k.to(q.dtype), q.shape[1])
    return torch.einsum("chd,shd->hcs", q, ke) * scale


def causal_mask(q_start: int, num_q: int, seq_len: int, device=None) -> torch.Tensor:
    i = torch.arange(q_start, q_start + num_q, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return j <= i


def anchor_region_mask(q_start: int, num_q: int, seq_len: int, cfg: AnchorConfig,
                       device=None) -> torch.Tensor:
    """``[C, S]`` bool: keys in the sink or the local window of each query (causal)."""
    i = torch.arange(q_start, q_start + num_q, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    local_start = torch.clamp(torch.div(i, cfg.group_size, rounding_mode="floor") * cfg.group_size
                              - cfg.local_tokens, min=cfg.sink_tokens)
    return (j <= i) & ((j < cfg.sink_tokens) | (j >= local_start))


def candidate_mask(q_start: int, num_q: int, seq_len: int, cfg: AnchorConfig,
                   device=None) -> torch.Tensor:
    """``[C, S]`` bool: stripe candidates, the causal keys outside the anchor region."""
    return causal_mask(q_start, num_q, seq_len, device) & ~anchor_region_mask(
        q_start, num_q, seq_len, cfg, device)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Softmax attention restricted to ``key_mask`` (``[C, S]`` or ``[H, C, S]``); ``[C, H, D]``."""
    s = scores(q, k, scale)
    s = s.masked_fill(~key_mask.expand_as(s), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hcs,shd->chd", p, _expand_kv(v.to(q.dtype), q.shape[1]))


def dense_causal_attention(q, k, v, q_start: int, scale: float) -> torch.Tensor:
    """Dense causal attention of the chunk (bottom-right aligned); ``[C, H, D]``."""
    return masked_attention(q, k, v, causal_mask(q_start, q.shape[0], k.shape[0], q.device), scale)


@dataclass
class SoftmaxState:
    """Unnormalized online-softmax state in natural-log units: ``out = acc / l``."""

    m: torch.Tensor  # [C, H] running row max (the anchor after step 1)
    l: torch.Tensor  # [C, H] sum of exp(s - m)
    acc: torch.Tensor  # [C, H, D] sum of exp(s - m) * v


def anchor_step(q, k, v, q_start: int, scale: float, cfg: AnchorConfig) -> SoftmaxState:
    """Step 1: exact attention over the anchor region, keeping the softmax state."""
    s = scores(q, k, scale)
    mask = anchor_region_mask(q_start, q.shape[0], k.shape[0], cfg, q.device)
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1)  # [H, C]
    p = torch.exp(s - m[..., None])
    acc = torch.einsum("hcs,shd->chd", p, _expand_kv(v.to(q.dtype), q.shape[1]))
    return SoftmaxState(m=m.T.contiguous(), l=p.sum(-1).T.contiguous(), acc=acc)


def chunk_groups(q_start: int, num_q: int, cfg: AnchorConfig) -> list[int]:
    """Absolute group indices that the chunk ``[q_start, q_start + num_q)`` touches."""
    return list(range(q_start // cfg.group_size, (q_start + num_q - 1) // cfg.group_size + 1))


def _pooled_hits(q, k, anchor_m, q_start: int, g: int, scale: float, cfg: AnchorConfig) -> torch.Tensor:
    """``[H, S]`` bool: columns some pooling block of group ``g``'s chunk rows keeps."""
    num_q, num_heads, _ = q.shape
    b = cfg.pool_block
    hit = torch.zeros(num_heads, k.shape[0], dtype=torch.bool, device=q.device)
    g_lo, g_hi = max(q_start, g * cfg.group_size), min(q_start + num_q, (g + 1) * cfg.group_size)
    for p0 in range(g_lo // b * b, g_hi, b):
        lo, hi = max(p0, g_lo) - q_start, min(p0 + b, g_hi) - q_start
        q_bar = q[lo:hi].float().mean(0)  # [H, D]
        a_bar = anchor_m[lo:hi].float().mean(0)  # [H]
        s_bar = torch.einsum("hd,shd->hs", q_bar, _expand_kv(k.float(), num_heads)) * scale
        hit |= s_bar >= (a_bar - cfg.theta)[:, None]
    return hit


def _to_selectors(hit: torch.Tensor, g: int, num_kv_heads: int, cfg: AnchorConfig) -> torch.Tensor:
    """Restrict ``[H, S]`` hits to group ``g``'s candidates; union over a KV head's query heads
    with ``share_gqa``."""
    num_heads, seq_len = hit.shape
    cand = torch.zeros(seq_len, dtype=torch.bool, device=hit.device)
    cand[cfg.sink_tokens:cfg.candidate_end(g)] = True
    hit = hit & cand
    if cfg.share_gqa:
        hit = hit.view(num_kv_heads, num_heads // num_kv_heads, seq_len).any(1)
    return hit


def tail_start(q_start: int, num_q: int, cfg: AnchorConfig) -> int:
    """Absolute position of the chunk's first tail query (``q_start + num_q`` when none)."""
    return max(q_start, q_start + num_q - cfg.tail_tokens)


def stripe_step(q, k, anchor_m: torch.Tensor, q_start: int, scale: float,
                cfg: AnchorConfig) -> dict[int, torch.Tensor]:
    """Step 2: pick stripe columns per group (the pooled lists).

    Queries are averaged in absolute-aligned pooling blocks (only the rows present in the
    chunk), the anchors likewise; candidate column ``j`` of group ``g`` is kept when, for some
    pooled block (and with ``share_gqa`` some query head of the KV head),
    ``mean(q) . k_j * scale >= mean(anchor) - theta``. Every row of the group attends to this
    list, except the chunk's tail rows: see :func:`tail_stripe_step`.

    Returns ``{g: bool [Hsel, S]}`` with ``Hsel = Hkv`` when sharing, else ``H``.
    """
    return {g: _to_selectors(_pooled_hits(q, k, anchor_m, q_start, g, scale, cfg), g, k.shape[1], cfg)
            for g in chunk_groups(q_start, q.shape[0], cfg)}


def tail_stripe_step(q, k, anchor_m: torch.Tensor, q_start: int, scale: float,
                     cfg: AnchorConfig) -> dict[int, torch.Tensor]:
    """Step 2 for the chunk's last ``tail_tokens`` queries: their group's pooled columns plus
    every column one of them keeps on its own, ``q_i . k_j * scale >= anchor_i - theta``.

    The end of a prompt is usually its question; pooling it with the text before it can drop
    the one far-back column it needs. Only the tail's rows attend to this list.
    Returns ``{g: bool [Hsel, S]}`` for the groups that hold tail rows.
    """
    num_q = q.shape[0]
    t0 = tail_start(q_start, num_q, cfg)
    out: dict[int, torch.Tensor] = {}
    for g in chunk_groups(t0, q_start + num_q - t0, cfg) if t0 < q_start + num_q else []:
        hit = _pooled_hits(q, k, anchor_m, q_start, g, scale, cfg)
        for i in range(max(t0, g * cfg.group_size), min(q_start + num_q, (g + 1) * cfg.group_size)):
            r = i - q_start
            s_i = torch.einsum("hd,shd->hs", q[r].float(), _expand_kv(k.float(), q.shape[1])) * scale
            hit |= s_i >= (anchor_m[r].float() - cfg.theta)[:, None]
        out[g] = _to_selectors(hit, g, k.shape[1], cfg)
    return out


def selection_to_key_mask(selection: dict[int, torch.Tensor], q_start: int, num_q: int,
                          num_heads: int, cfg: AnchorConfig,
                          tail: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Expand per-group stripe selections to a per-query key mask ``[H, C, S]``; the rows from
    :func:`tail_start` on take their group's ``tail`` selection instead, where one is given."""
    any_sel = next(iter({**selection, **(tail or {})}.values()))
    hsel, seq_len = any_sel.shape
    mask = torch.zeros(num_heads, num_q, seq_len, dtype=torch.bool, device=any_sel.device)
    pos = torch.arange(q_start, q_start + num_q)
    groups = torch.div(pos, cfg.group_size, rounding_mode="floor")
    is_tail = pos >= tail_start(q_start, num_q, cfg)
    for g, sel in selection.items():
        rows = (groups == g).nonzero().flatten().to(mask.device)
        per_head = sel.repeat_interleave(num_heads // hsel, dim=0)  # [H, S]
        mask[:, rows, :] = per_head[:, None, :]
    for g, sel in (tail or {}).items():
        rows = ((groups == g) & is_tail).nonzero().flatten().to(mask.device)
        mask[:, rows, :] = sel.repeat_interleave(num_heads // hsel, dim=0)[:, None, :]
    return mask


def sparse_step(q, k, v, state: SoftmaxState, stripe_key_mask: torch.Tensor,
                scale: float) -> torch.Tensor:
    """Step 3: continue the anchor's softmax over the selected stripes and normalize once."""
    s = scores(q, k, scale).masked_fill(~stripe_key_mask, float("-inf"))  # [H, C, S]
    m_anchor = state.m.T  # [H, C]
    m = torch.maximum(m_anchor, s.amax(-1))
    alpha = torch.exp(m_anchor - m)
    p = torch.exp(s - m[..., None])
    l = state.l.T * alpha + p.sum(-1)
    acc = state.acc * alpha.T[..., None] + torch.einsum(
        "hcs,shd->chd", p, _expand_kv(v.to(q.dtype), q.shape[1]))
    return acc / l.T[..., None]


def anchor_attention(q, k, v, q_start: int, scale: float, cfg: AnchorConfig):
    """All three steps; returns ``(out [C, H, D], stripe key mask [H, C, S])``."""
    state = anchor_step(q, k, v, q_start, scale, cfg)
    sel = stripe_step(q, k, state.m, q_start, scale, cfg)
    tail = tail_stripe_step(q, k, state.m, q_start, scale, cfg)
    mask = selection_to_key_mask(sel, q_start, q.shape[0], q.shape[1], cfg, tail)
    return sparse_step(q, k, v, state, mask, scale), mask


# --- metrics ---------------------------------------------------------------------------------

def attention_mass_recall(q, k, q_start: int, scale: float, attended: torch.Tensor) -> torch.Tensor:
    """Share of the dense causal softmax mass on the attended keys, per (head, query) ``[H, C]``.

    ``attended`` is ``[H, C, S]`` or ``[C, S]`` bool (anchor region | selected stripes).
    """
    s = scores(q, k, scale)
    s = s.masked_fill(~causal_mask(q_start, q.shape[0], k.shape[0], q.device), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return (p * attended.expand_as(p)).sum(-1)


def density(attended: torch.Tensor, q_start: int, seq_len: int) -> float:
    """Attended (query, key) pairs over causal pairs."""
    num_q = attended.shape[-2]
    causal = causal_mask(q_start, num_q, seq_len, attended.device)
    return float(attended.sum() / (causal.sum() * (attended.numel() // causal.numel())))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())
