"""Step 3: continue the anchor softmax over the gathered stripe columns, normalize once.

One program per (query tile, query heads sharing one list: all of a KV head's with shared GQA
lists, else one). The tile's group owns a compacted list of absolute
key positions (per KV head when GQA lists are shared), which the pack step also stored as cache
slots; each chunk of ``BLOCK_N`` slots is gathered straight from the paged cache. Every listed key
lies before the group's local window, so no causal mask is needed, and only the list's last,
partial chunk needs bounds checks.
"""
import triton
import triton.language as tl

from .triton_common import (ITEM_COLS, ITEM_LIST_OFF, TILE_ITEM, TILE_NROWS, TILE_ROW0, load_kv_rows,
                            load_q_rows, online_softmax_update, packed_rows)


@triton.jit
def _slot_offsets(slot, PAGE, stride_kv_block, stride_kv_tok, head_off, LINEAR_SLOTS: tl.constexpr):
    """Element offsets of cache slots ``page * PAGE + offset``; ``LINEAR_SLOTS`` when pages are
    contiguous (``stride_kv_block == PAGE * stride_kv_tok``, vLLM's layout): no division."""
    if LINEAR_SLOTS:
        return slot.to(tl.int64) * stride_kv_tok + head_off
    return (slot // PAGE).to(tl.int64) * stride_kv_block + (slot % PAGE).to(tl.int64) * stride_kv_tok + head_off


@triton.jit
def _attend_listed(acc, m_i, l_i, q, slot_ptr, n0, count, KV, PAGE, stride_kv_block, stride_kv_tok, head_off,
                   qk_scale, LINEAR_SLOTS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, MASKED: tl.constexpr, RESCALE_TAU: tl.constexpr):
    """Continue the softmax over list entries ``[n0, n0 + BLOCK_N)``; ``MASKED`` only for the
    list's last, partial chunk (entries ``>= count`` are skipped), so whole chunks carry no
    predicate on the slot, K or V loads."""
    offs_n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    if MASKED:
        valid = n0 + offs_n < count
        slot = tl.load(slot_ptr + n0 + offs_n, mask=valid, other=0)
    else:
        valid = offs_n >= 0
        slot = tl.load(slot_ptr + n0 + offs_n)
    offs = _slot_offsets(slot, PAGE, stride_kv_block, stride_kv_tok, head_off, LINEAR_SLOTS)
    k, v = load_kv_rows(KV, offs, valid, d, HEAD_DIM, BLOCK_D, MASKED)
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        s = tl.where(valid[None, :], s, float("-inf"))
    acc, m_i, l_i, _m = online_softmax_update(acc, m_i, l_i, s, v, qk_scale, RESCALE_TAU)
    return acc, m_i, l_i


@triton.jit
def sparse_kernel(
    Q, stride_q_tok, stride_q_head,
    KV, stride_kv_block, stride_kv_head, stride_kv_tok, PAGE,
    BT, stride_bt,
    TILES, ITEMS,
    SLOTS, stride_list_head, COUNTS, NUM_SEL,   # int32 [NUM_SEL, cap] cache slots, [n_items, NUM_SEL]
    M_IN, L_IN, ACC_IN,                         # anchor state from step 1
    OUT, stride_o_tok, stride_o_head,
    qk_scale,
    NUM_HEADS: tl.constexpr, KV_REP: tl.constexpr, HEADS: tl.constexpr,
    SEL_DIV: tl.constexpr, LINEAR_SLOTS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    RESCALE_TAU: tl.constexpr = 0.0,
):
    tile = tl.program_id(0)
    hbase = tl.program_id(1) * HEADS
    row0 = tl.load(TILES + tile * 6 + TILE_ROW0)
    nrows = tl.load(TILES + tile * 6 + TILE_NROWS)
    item = tl.load(TILES + tile * 6 + TILE_ITEM)
    hs = hbase // SEL_DIV
    slot_ptr = SLOTS + hs.to(tl.int64) * stride_list_head + tl.load(ITEMS + item * ITEM_COLS + ITEM_LIST_OFF)
    count = tl.load(COUNTS + item * NUM_SEL + hs)

    tok, head, row_ok, rows = packed_rows(row0, nrows, hbase, ROWS, HEADS)
    d = tl.arange(0, BLOCK_D)
    ml = rows * NUM_HEADS + head
    m_i = tl.load(M_IN + ml, mask=row_ok, other=0.0)
    l_i = tl.load(L_IN + ml, mask=row_ok, other=1.0)
    acc = tl.load(ACC_IN + ml[:, None] * BLOCK_D + d[None, :], mask=row_ok[:, None], other=0.0)
    q = load_q_rows(Q, rows, head, row_ok, d, stride_q_tok, stride_q_head, HEAD_DIM)

    head_off = (hbase // KV_REP) * stride_kv_head
    full = count // BLOCK_N * BLOCK_N
    for n0 in range(0, full, BLOCK_N):
        acc, m_i, l_i = _attend_listed(acc, m_i, l_i, q, slot_ptr, n0, count, KV, PAGE, stride_kv_block,
                                       stride_kv_tok, head_off, qk_scale, LINEAR_SLOTS, HEAD_DIM, BLOCK_D,
                                       BLOCK_N, False, RESCALE_TAU)
    if full < count:
        acc, m_i, l_i = _attend_listed(acc, m_i, l_i, q, slot_ptr, full, count, KV, PAGE, stride_kv_block,
                                       stride_kv_tok, head_off, qk_scale, LINEAR_SLOTS, HEAD_DIM, BLOCK_D,
                                       BLOCK_N, True, RESCALE_TAU)

    out = acc / l_i[:, None]
    tl.store(OUT + rows[:, None] * stride_o_tok + head[:, None] * stride_o_head + d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & (d[None, :] < HEAD_DIM))
