"""Step 1: exact attention over the anchor region (sink tokens + local window).

One program per (query tile, query heads of one KV head when GQA lists are shared, else one
query head): rows are tokens x packed heads, so each K/V row loaded serves them all. Queries attend, causally, to the keys
``[0, sink)`` and ``[max(sink, g*G - local), i]``; the kernel writes the fp32 online-softmax
state (row max ``m`` in log2 units = the anchor, row sum ``l``, unnormalized ``acc``) that the
sparse step continues, plus per-tile sums of the queries and anchors for the stripe pooling.
"""
import triton
import triton.language as tl

from .triton_common import (TILE_NROWS, TILE_POS0, TILE_ROW0, TILE_SEQ, load_kv_rows,
                            online_softmax_update, packed_rows, paged_row_offsets)


@triton.jit
def _attend_span(acc, m_i, l_i, q, pos_i, lo, hi,
                 KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Causal attention of the tile to keys ``[lo, hi)``."""
    offs_n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + offs_n
        valid = j < hi
        offs = paged_row_offsets(bt_row, j, valid, PAGE, stride_kv_block, stride_kv_tok, head_off)
        k, v = load_kv_rows(KV, offs, valid, d, HEAD_DIM)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        keep = valid[None, :] & (j[None, :] <= pos_i[:, None])
        qk = tl.where(keep, qk, float("-inf"))
        acc, m_i, l_i = online_softmax_update(acc, m_i, l_i, qk, v)
    return acc, m_i, l_i


@triton.jit
def anchor_kernel(
    Q, stride_q_tok, stride_q_head,
    KV, stride_kv_block, stride_kv_head, stride_kv_tok, PAGE,
    BT, stride_bt,
    TILES,
    M_OUT, L_OUT, ACC_OUT,            # [T, H], [T, H], [T, H, BLOCK_D] fp32, contiguous
    QSUM, MSUM,                        # [n_tiles, H, BLOCK_D], [n_tiles, H] fp32
    qk_scale, sink, local, group,
    NUM_HEADS: tl.constexpr, KV_REP: tl.constexpr, HEADS: tl.constexpr, PACK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TILE_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    hbase = tl.program_id(1) * HEADS
    seq = tl.load(TILES + tile * 6 + TILE_SEQ)
    row0 = tl.load(TILES + tile * 6 + TILE_ROW0)
    pos0 = tl.load(TILES + tile * 6 + TILE_POS0)
    nrows = tl.load(TILES + tile * 6 + TILE_NROWS)

    tok, head, row_ok, rows = packed_rows(row0, nrows, hbase, TILE_M, PACK, HEADS)
    d = tl.arange(0, BLOCK_D)
    pos_i = pos0 + tok
    q = tl.load(Q + rows[:, None] * stride_q_tok + head[:, None] * stride_q_head + d[None, :],
                mask=row_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)

    m_i = tl.full([TILE_M * PACK], float("-inf"), tl.float32)
    l_i = tl.zeros([TILE_M * PACK], tl.float32)
    acc = tl.zeros([TILE_M * PACK, BLOCK_D], tl.float32)
    bt_row = BT + seq.to(tl.int64) * stride_bt
    head_off = (hbase // KV_REP) * stride_kv_head
    hi = pos0 + nrows
    acc, m_i, l_i = _attend_span(acc, m_i, l_i, q, pos_i, 0, tl.minimum(sink, hi),
                                 KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok,
                                 qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N)
    local_lo = tl.maximum(sink, (pos0 // group) * group - local)
    acc, m_i, l_i = _attend_span(acc, m_i, l_i, q, pos_i, local_lo, hi,
                                 KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok,
                                 qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N)

    ml = rows * NUM_HEADS + head
    tl.store(M_OUT + ml, m_i, mask=row_ok)
    tl.store(L_OUT + ml, l_i, mask=row_ok)
    tl.store(ACC_OUT + ml[:, None] * BLOCK_D + d[None, :], acc, mask=row_ok[:, None])
    # Per-head sums over the tile's tokens, for the stripe pooling (invalid rows add zero).
    qs = tl.sum(tl.reshape(q.to(tl.float32), (TILE_M, PACK, BLOCK_D)), 0)
    ms = tl.sum(tl.reshape(tl.where(row_ok, m_i, 0.0), (TILE_M, PACK)), 0)
    p = tl.arange(0, PACK)
    th = tile.to(tl.int64) * NUM_HEADS + hbase + p
    tl.store(QSUM + th[:, None] * BLOCK_D + d[None, :], qs, mask=(p < HEADS)[:, None])
    tl.store(MSUM + th, ms, mask=p < HEADS)
