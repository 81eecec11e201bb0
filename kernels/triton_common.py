"""Triton building blocks shared by the anchor, stripe and sparse kernels.

Import ``triton`` directly (not ``vllm.triton_utils``): vLLM's wrapper is a do-nothing
placeholder on machines without a GPU, where these kernels still run under TRITON_INTERPRET=1.
"""
import triton
import triton.language as tl

from . import plan as _plan

LOG2E = 1.4426950408889634

# Work-table columns (see plan.py) as constexprs, which is how jitted code may read globals.
TILE_SEQ, TILE_ROW0, TILE_POS0, TILE_NROWS, TILE_ITEM, TILE_POOL = (
    tl.constexpr(getattr(_plan, n)) for n in ("TILE_SEQ", "TILE_ROW0", "TILE_POS0", "TILE_NROWS", "TILE_ITEM",
                                              "TILE_POOL"))
ITEM_SEQ, ITEM_LIST_OFF, ITEM_POOL0, ITEM_NPOOL, ITEM_SEG0, ITEM_NSEG, ITEM_TAIL_ROW0, ITEM_NTAIL, ITEM_COLS = (
    tl.constexpr(getattr(_plan, n)) for n in ("ITEM_SEQ", "ITEM_LIST_OFF", "ITEM_POOL0", "ITEM_NPOOL",
                                              "ITEM_SEG0", "ITEM_NSEG", "ITEM_TAIL_ROW0", "ITEM_NTAIL",
                                              "ITEM_COLS"))
SEG_ITEM, SEG_LO, SEG_HI, SEG_OFF = (
    tl.constexpr(getattr(_plan, n)) for n in ("SEG_ITEM", "SEG_LO", "SEG_HI", "SEG_OFF"))


@triton.jit
def paged_row_offsets(bt_row, pos, valid, PAGE, stride_kv_block, stride_kv_tok, head_off,
                      MASKED: tl.constexpr = True):
    """Element offset of K row ``pos`` (V is ``+ HEAD_DIM``) through the block table.

    vLLM's FlashAttention cache is the logical tensor ``[num_blocks, Hkv, PAGE, 2*D]`` with
    K and V packed in the last dimension; strides carry the physical (NHD) order.
    ``MASKED=False`` when every ``pos`` is valid: the page lookup then carries no predicate.
    """
    if MASKED:
        page = tl.load(bt_row + pos // PAGE, mask=valid, other=0)
    else:
        page = tl.load(bt_row + pos // PAGE)
    return page.to(tl.int64) * stride_kv_block + (pos % PAGE).to(tl.int64) * stride_kv_tok + head_off


@triton.jit
def load_kv_rows(KV, offs, valid, d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 MASKED: tl.constexpr):
    """Gather ``[BLOCK_N, BLOCK_D]`` K and V rows at element offsets ``offs``.

    ``MASKED=False`` when the caller knows every row is valid: with a power-of-two head size
    the loads then carry no predicate at all.
    """
    if MASKED:
        mask = valid[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(KV + offs[:, None] + d[None, :], mask=mask, other=0.0)
        v = tl.load(KV + offs[:, None] + HEAD_DIM + d[None, :], mask=mask, other=0.0)
    elif BLOCK_D == HEAD_DIM:
        k = tl.load(KV + offs[:, None] + d[None, :])
        v = tl.load(KV + offs[:, None] + HEAD_DIM + d[None, :])
    else:
        mask = d[None, :] < HEAD_DIM
        k = tl.load(KV + offs[:, None] + d[None, :], mask=mask, other=0.0)
        v = tl.load(KV + offs[:, None] + HEAD_DIM + d[None, :], mask=mask, other=0.0)
    return k, v


@triton.jit
def load_q_rows(Q, rows, heads, ok, d, stride_q_tok, stride_q_head, HEAD_DIM: tl.constexpr):
    """``[len(rows), BLOCK_D]`` query rows ``(rows[r], heads[r])``; rows with ``ok`` false and the
    padding past ``HEAD_DIM`` read 0."""
    return tl.load(Q + rows[:, None] * stride_q_tok + heads[:, None] * stride_q_head + d[None, :],
                   mask=ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def rescale_state(acc, m_i, l_i, m_blk):
    """Move the state's stabilizer to ``max(m_i, m_blk)``. Rows that have seen no key yet keep
    ``m = -inf`` with ``acc = l = 0`` (the guard keeps them from turning into NaN)."""
    m_new = tl.maximum(m_i, m_blk)
    alpha = tl.math.exp2(m_i - tl.where(m_new == float("-inf"), 0.0, m_new))
    return acc * alpha[:, None], m_new, l_i * alpha


@triton.jit
def online_softmax_update(acc, m_i, l_i, s, v, qk_scale, RESCALE_TAU: tl.constexpr):
    """One flash-attention step. ``s`` = raw scores ``q.k`` masked with -inf; ``m_i`` is in
    scaled log2 units (``s * qk_scale``); ``out = acc / l`` at the end.

    ``m_i`` is only the exponent's stabilizer. With ``RESCALE_TAU == 0`` it is the running row
    max, so every step rescales ``acc`` (a [rows, D] multiply waiting on the previous P.V
    product). With ``RESCALE_TAU > 0`` the tile rescales only when some row's block max exceeds
    its stabilizer by more than ``RESCALE_TAU`` (log2 units), as FlashAttention-4 does: ``p``
    then stays <= 2**RESCALE_TAU, which fp32 sums and a 16-bit P.V product hold exactly as well.
    After the anchor state, whose max covers the strongest keys, the sparse step almost never
    rescales. The result is the same softmax; only the rounding differs. Measured slower on the
    H100 (the branch on a tile-wide reduction serializes the loop), so off by default
    (``api.RESCALE_TAU``).

    Returns the new state and the block's row max (scaled): callers that need the true row max
    (the anchor) track it themselves.
    """
    m_blk = tl.max(s, 1) * qk_scale
    if RESCALE_TAU > 0:
        grow = tl.max(tl.where(m_blk > m_i, m_blk - m_i, 0.0), 0)
        if grow > RESCALE_TAU:
            acc, m_i, l_i = rescale_state(acc, m_i, l_i, m_blk)
    else:
        acc, m_i, l_i = rescale_state(acc, m_i, l_i, m_blk)
    # one FMA per score: the scale is folded into the exponent
    p = tl.math.exp2(s * qk_scale - tl.where(m_i == float("-inf"), 0.0, m_i)[:, None])
    l_i = l_i + tl.sum(p, 1)
    acc = acc + tl.dot(p.to(v.dtype), v)
    return acc, m_i, l_i, m_blk


@triton.jit
def packed_rows(row0, nrows, hbase, ROWS: tl.constexpr, HEADS: tl.constexpr):
    """Rows of one program: up to ``ROWS // HEADS`` tokens x ``HEADS`` query heads.

    Row ``r`` is token ``r // HEADS`` and query head ``hbase + r % HEADS``; packing the query
    heads of one KV head lets every K/V row the program loads serve all of them. ``HEADS`` need
    not be a power of two (rows past the last whole token are idle).
    """
    r = tl.arange(0, ROWS)
    tok = r // HEADS
    head = hbase + r % HEADS
    ok = tok < nrows
    return tok, head, ok, (row0 + tok).to(tl.int64)
