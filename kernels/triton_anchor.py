"""Step 1: exact attention over the anchor region (sink tokens + local window).

One program per (query tile, query heads of one KV head when GQA lists are shared, else one
query head): rows are tokens x packed heads, so each K/V row loaded serves them all. Queries
attend, causally, to the keys ``[0, sink)`` and ``[max(sink, g*G - local), i]``; the kernel
writes the fp32 online-softmax state (row max ``m`` in log2 units = the anchor, row sum ``l``,
unnormalized ``acc``) that the sparse step continues, plus per-tile sums of the queries and
anchors for the stripe pooling (two per tile: its rows before and after a pooling-block edge).

The whole key blocks that every row of the tile may see (no causal mask, no bounds checks) of
both spans run first, in one loop, then the masked remainders: the sink's partial block and the
blocks that reach the tile's own diagonal. ``MERGE_BULK=False`` gives each span its own loops
and ``SPLIT_DIAGONAL=False`` one masked loop per span (both launch options; the merged loop
measured 2% faster for the anchor step at head_dim 64 and the same at 128 on the H100,
bench/results/ab_merge_bulk_h100/).
"""
import triton
import triton.language as tl

from .triton_common import (TILE_NROWS, TILE_POS0, TILE_ROW0, TILE_SEQ, rescale_state, load_kv_rows,
                            load_q_rows, online_softmax_update, packed_rows, paged_row_offsets)


@triton.jit
def _attend_block(acc, m_i, l_i, m_max, q, pos_i, j0, hi,
                  KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr, RESCALE_TAU: tl.constexpr):
    """One key block ``[j0, j0 + BLOCK_N)``; ``MASKED`` applies the causal mask and ``< hi``."""
    j = j0 + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    valid = j < hi
    offs = paged_row_offsets(bt_row, j, valid, PAGE, stride_kv_block, stride_kv_tok, head_off, MASKED)
    k, v = load_kv_rows(KV, offs, valid, d, HEAD_DIM, BLOCK_D, MASKED)
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        keep = valid[None, :] & (j[None, :] <= pos_i[:, None])
        s = tl.where(keep, s, float("-inf"))
    acc, m_i, l_i, m_blk = online_softmax_update(acc, m_i, l_i, s, v, qk_scale, RESCALE_TAU)
    return acc, m_i, l_i, tl.maximum(m_max, m_blk)


@triton.jit
def _attend_blocks(acc, m_i, l_i, m_max, q, pos_i, lo, hi,
                   KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   MASKED: tl.constexpr, RESCALE_TAU: tl.constexpr):
    """Attention of the tile to keys ``[lo, hi)``; ``MASKED=False`` only when ``hi - lo`` is
    a multiple of ``BLOCK_N`` and every key precedes every row (no causal or bounds mask).
    ``m_max`` is the true row max (the anchor), which the lazy stabilizer ``m_i`` may lag."""
    for j0 in range(lo, hi, BLOCK_N):
        acc, m_i, l_i, m_max = _attend_block(acc, m_i, l_i, m_max, q, pos_i, j0, hi, KV, bt_row, head_off,
                                             PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                                             HEAD_DIM, BLOCK_D, BLOCK_N, MASKED, RESCALE_TAU)
    return acc, m_i, l_i, m_max


@triton.jit
def _attend_two_runs(acc, m_i, l_i, m_max, q, pos_i, lo_a, n_a, lo_b, n_b,
                     KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     RESCALE_TAU: tl.constexpr):
    """Unmasked whole blocks of two key runs (``n_a`` blocks from ``lo_a``, then ``n_b`` from
    ``lo_b``) in one loop, so the sink's few blocks do not get a pipeline of their own."""
    for it in range(0, n_a + n_b):
        j0 = tl.where(it < n_a, lo_a + it * BLOCK_N, lo_b + (it - n_a) * BLOCK_N)
        acc, m_i, l_i, m_max = _attend_block(acc, m_i, l_i, m_max, q, pos_i, j0, j0 + BLOCK_N, KV, bt_row,
                                             head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                                             HEAD_DIM, BLOCK_D, BLOCK_N, False, RESCALE_TAU)
    return acc, m_i, l_i, m_max


@triton.jit
def _bulk_end(lo, hi, pos0, BLOCK_N: tl.constexpr):
    """End of the whole blocks from ``lo`` that every row of a tile starting at ``pos0`` sees."""
    return lo + tl.maximum(tl.minimum(hi, pos0 + 1) - lo, 0) // BLOCK_N * BLOCK_N


@triton.jit
def _attend_span(acc, m_i, l_i, m_max, q, pos_i, pos0, lo, hi,
                 KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 SPLIT_DIAGONAL: tl.constexpr, RESCALE_TAU: tl.constexpr):
    """Causal attention of the tile (first row at ``pos0``) to keys ``[lo, hi)``."""
    # keys < pos0 + 1 are visible to every row: that many whole blocks need no mask
    if SPLIT_DIAGONAL:
        bulk_hi = _bulk_end(lo, hi, pos0, BLOCK_N)
    else:  # one masked loop (a launch option: bench/tune.py times both)
        bulk_hi = lo
    acc, m_i, l_i, m_max = _attend_blocks(acc, m_i, l_i, m_max, q, pos_i, lo, bulk_hi, KV, bt_row,
                                          head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                                          HEAD_DIM, BLOCK_D, BLOCK_N, False, RESCALE_TAU)
    acc, m_i, l_i, m_max = _attend_blocks(acc, m_i, l_i, m_max, q, pos_i, bulk_hi, hi, KV, bt_row,
                                          head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                                          HEAD_DIM, BLOCK_D, BLOCK_N, True, RESCALE_TAU)
    return acc, m_i, l_i, m_max


@triton.jit
def anchor_kernel(
    Q, stride_q_tok, stride_q_head,
    KV, stride_kv_block, stride_kv_head, stride_kv_tok, PAGE,
    BT, stride_bt,
    TILES,
    M_OUT, L_OUT, ACC_OUT,            # [T, H], [T, H], [T, H, BLOCK_D] fp32, contiguous
    QSUM, MSUM,                        # [n_tiles, 2, H, BLOCK_D], [n_tiles, 2, H] fp32
    qk_scale, sink, local, group, pool_block,
    NUM_HEADS: tl.constexpr, KV_REP: tl.constexpr, HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_DIAGONAL: tl.constexpr = True, RESCALE_TAU: tl.constexpr = 0.0, MERGE_BULK: tl.constexpr = True,
):
    tile = tl.program_id(0)
    hbase = tl.program_id(1) * HEADS
    seq = tl.load(TILES + tile * 6 + TILE_SEQ)
    row0 = tl.load(TILES + tile * 6 + TILE_ROW0)
    pos0 = tl.load(TILES + tile * 6 + TILE_POS0)
    nrows = tl.load(TILES + tile * 6 + TILE_NROWS)

    tok, head, row_ok, rows = packed_rows(row0, nrows, hbase, ROWS, HEADS)
    d = tl.arange(0, BLOCK_D)
    pos_i = pos0 + tok
    q = load_q_rows(Q, rows, head, row_ok, d, stride_q_tok, stride_q_head, HEAD_DIM)

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    m_max = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    bt_row = BT + seq.to(tl.int64) * stride_bt
    head_off = (hbase // KV_REP) * stride_kv_head
    hi = pos0 + nrows
    sink_hi = tl.minimum(sink, hi)
    local_lo = tl.maximum(sink, (pos0 // group) * group - local)
    if MERGE_BULK and SPLIT_DIAGONAL:
        # the unmasked blocks of the sink and of the local span in one pipelined loop, then
        # the two masked remainders (the same keys, in another order)
        sink_bulk = _bulk_end(0, sink_hi, pos0, BLOCK_N)
        local_bulk = _bulk_end(local_lo, hi, pos0, BLOCK_N)
        acc, m_i, l_i, m_max = _attend_two_runs(acc, m_i, l_i, m_max, q, pos_i, 0, sink_bulk // BLOCK_N, local_lo,
                                                (local_bulk - local_lo) // BLOCK_N, KV, bt_row, head_off, PAGE,
                                                stride_kv_block, stride_kv_tok, qk_scale, HEAD_DIM, BLOCK_D,
                                                BLOCK_N, RESCALE_TAU)
        acc, m_i, l_i, m_max = _attend_blocks(acc, m_i, l_i, m_max, q, pos_i, sink_bulk, sink_hi, KV, bt_row,
                                              head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, True, RESCALE_TAU)
        acc, m_i, l_i, m_max = _attend_blocks(acc, m_i, l_i, m_max, q, pos_i, local_bulk, hi, KV, bt_row,
                                              head_off, PAGE, stride_kv_block, stride_kv_tok, qk_scale,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, True, RESCALE_TAU)
    else:
        acc, m_i, l_i, m_max = _attend_span(acc, m_i, l_i, m_max, q, pos_i, pos0, 0, sink_hi,
                                            KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok,
                                            qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, SPLIT_DIAGONAL, RESCALE_TAU)
        acc, m_i, l_i, m_max = _attend_span(acc, m_i, l_i, m_max, q, pos_i, pos0, local_lo, hi,
                                            KV, bt_row, head_off, PAGE, stride_kv_block, stride_kv_tok,
                                            qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, SPLIT_DIAGONAL, RESCALE_TAU)
    if RESCALE_TAU > 0:
        # the stored m is the anchor (the true row max over the region), and the sparse step
        # continues from it: move the lazy stabilizer there once
        acc, m_i, l_i = rescale_state(acc, m_i, l_i, m_max)

    ml = rows * NUM_HEADS + head
    tl.store(M_OUT + ml, m_i, mask=row_ok)
    tl.store(L_OUT + ml, l_i, mask=row_ok)
    tl.store(ACC_OUT + ml[:, None] * BLOCK_D + d[None, :], acc, mask=row_ok[:, None])

    # Per-head sums of the tile's queries and anchors, for the stripe pooling, split at the
    # tile's pooling-block edge (a tile spans at most two blocks). A 0/1 head-selection matrix
    # times q sums each head's rows on the tensor cores: the products are exact and accumulate
    # in fp32 (fp32 queries take the exact FMA path, not tf32).
    edge = (pos0 // pool_block + 1) * pool_block
    hh = tl.arange(0, HEADS_PAD)
    r_head = head - hbase
    is_head = (r_head[None, :] == hh[:, None]) & row_ok[None, :]
    th = tile.to(tl.int64) * 2 * NUM_HEADS + hbase + hh
    h_ok = hh < HEADS
    for part in tl.static_range(2):
        if part == 0:
            sel = is_head & (pos_i < edge)[None, :]
        else:
            sel = is_head & (pos_i >= edge)[None, :]
        if q.dtype == tl.float32:
            qs = tl.dot(sel.to(tl.float32), q, input_precision="ieee")
        else:
            qs = tl.dot(sel.to(q.dtype), q)
        ms = tl.sum(tl.where(sel, m_i[None, :], 0.0), 1)
        tl.store(QSUM + (th + part * NUM_HEADS)[:, None] * BLOCK_D + d[None, :], qs, mask=h_ok[:, None])
        tl.store(MSUM + th + part * NUM_HEADS, ms, mask=h_ok)
