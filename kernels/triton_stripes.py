"""Step 2: difference-aware stripe identification, compacted into bounded per-group lists.

Pool: one program per (pooling block, block of query heads) adds up the anchor step's per-tile
sums of the block's queries and anchors and divides by its rows, giving the mean query and
mean anchor the scan scores with (one launch; the sums are added in tile order, so the result
does not depend on scheduling).

Scan: one program per (candidate segment, selector head). It loads the group's pooled queries
(``pools x query heads`` rows; with shared GQA lists all query heads of the KV head) and their
pooled anchors, scores every key of its segment, keeps column ``j`` when any row has
``qbar . k_j * scale >= abar - theta`` (log2 units) and appends the kept positions, in order,
to the segment's slice of a scratch list (compaction by prefix sum inside the tile). For an
item that lists a chunk's last ``tail_tokens`` queries, the columns those queries keep one by
one (tail hits, below) join before the compaction. Where a group has both (its other rows, then
the tail), the tail item shares the group's pooled queries and candidates: the other item's
program also compacts the pooled hits ORed with the tail hits into the tail item's matching
segment (its twin), so no key is loaded or scored twice.

Tail hits: one program per (short slice of a tail item's candidates, selector head) scores the
tail's queries one by one against their own anchors (the same test, unpooled), in passes of as
many rows as the scan's pools take, and writes a 0/1 byte per column. A separate launch, so the
tail's extra scoring (several passes over each key) is spread over many short programs instead
of lengthening the scan programs of one item, which ran last and set the scan's time.

Pack: one program per (group item, selector head) concatenates its segments' runs into the
item's final list and writes the count. Capacity per item = its candidate count, so memory is
bounded by the candidates, never by ``N^2``.
"""
import triton
import triton.language as tl

from .triton_common import (ITEM_COLS, ITEM_LIST_OFF, ITEM_NPOOL, ITEM_NSEG, ITEM_NTAIL, ITEM_POOL0, ITEM_SEG0,
                            ITEM_SEQ, ITEM_TAIL_ROW0, SEG_HI, SEG_ITEM, SEG_LO, SEG_OFF, TILE_POOL,
                            load_q_rows, paged_row_offsets)


@triton.jit
def pool_queries_kernel(QSUM, MSUM, POOL_TILES, TILES, TILE_POOL_NEXT, POOL_ROWS, QBAR, ABAR, SELECTED,
                        NUM_HEADS: tl.constexpr, HEAD_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                        COUNT_SELECTED: tl.constexpr):
    """``QBAR[p] = sum of the pool's query rows / rows``, the same for ``ABAR`` (log2 anchors).

    ``QSUM``/``MSUM`` hold, per anchor tile, the sums of its rows before (part 0) and after
    (part 1) its pooling-block edge, which belong to the pools ``TILES[t, TILE_POOL]`` and
    ``TILE_POOL_NEXT[t]``; ``POOL_TILES[p]`` is the run of tiles touching pool ``p``.
    With ``COUNT_SELECTED``, program (0, 0) also zeroes ``SELECTED``, which the pack step, later
    on the same stream, adds the call's selected pairs to.
    """
    pool = tl.program_id(0)
    if COUNT_SELECTED:
        if (pool == 0) & (tl.program_id(1) == 0):
            tl.store(SELECTED, 0.0)
    h = tl.program_id(1) * HEAD_BLOCK + tl.arange(0, HEAD_BLOCK)
    d = tl.arange(0, BLOCK_D)
    h_ok = h < NUM_HEADS
    t0 = tl.load(POOL_TILES + pool * 2)
    n = tl.load(POOL_TILES + pool * 2 + 1)
    qs = tl.zeros([HEAD_BLOCK, BLOCK_D], tl.float32)
    ms = tl.zeros([HEAD_BLOCK], tl.float32)
    for k in range(0, n):
        t = (t0 + k).to(tl.int64)
        for part in tl.static_range(2):
            if part == 0:
                mine = tl.load(TILES + t * 6 + TILE_POOL) == pool
            else:
                mine = tl.load(TILE_POOL_NEXT + t) == pool
            base = (t * 2 + part) * NUM_HEADS + h
            ok = h_ok & mine
            qs += tl.load(QSUM + base[:, None] * BLOCK_D + d[None, :], mask=ok[:, None], other=0.0)
            ms += tl.load(MSUM + base, mask=ok, other=0.0)
    rows = tl.load(POOL_ROWS + pool)
    out = pool.to(tl.int64) * NUM_HEADS + h
    tl.store(QBAR + out[:, None] * BLOCK_D + d[None, :], qs / rows, mask=h_ok[:, None])
    tl.store(ABAR + out, ms / rows, mask=h_ok)


@triton.jit
def _key_slice(TABLE, i):
    """``(item, lo, hi, out_off)`` of row ``i`` of a segment table (scan segments or tail blocks):
    keys ``[lo, hi)`` of ``item``, whose per-key output starts at ``out_off`` of its head's row."""
    return (tl.load(TABLE + i * 4 + SEG_ITEM), tl.load(TABLE + i * 4 + SEG_LO),
            tl.load(TABLE + i * 4 + SEG_HI), tl.load(TABLE + i * 4 + SEG_OFF))


@triton.jit
def _key_block(KV, bt_row, j0, hi, offs_n, d, PAGE, stride_kv_block, stride_kv_tok, head_off,
               HEAD_DIM: tl.constexpr):
    """Positions ``j`` of the key block from ``j0``, which of them are ``< hi``, and their K rows
    read through the block table (zero past ``hi``)."""
    j = j0 + offs_n
    valid = j < hi
    offs = paged_row_offsets(bt_row, j, valid, PAGE, stride_kv_block, stride_kv_tok, head_off)
    k = tl.load(KV + offs[:, None] + d[None, :], mask=valid[:, None] & (d[None, :] < HEAD_DIM), other=0.0)
    return j, valid, k


@triton.jit
def stripe_scan_kernel(
    QBAR, ABAR,                       # [n_pools, H, BLOCK_D] fp32, [n_pools, H] fp32 (log2)
    KV, stride_kv_block, stride_kv_head, stride_kv_tok, PAGE,
    BT, stride_bt,
    ITEMS, SEGS, SEG_TWIN,            # SEG_TWIN[seg]: the tail segment this program also fills, or -1
    TAIL_HITS,                        # int8, laid out like SCRATCH: the tail items' tail hits
    SCRATCH, stride_list_head, SEG_COUNTS, NUM_SEL,
    qk_scale, theta_log2,
    NUM_HEADS: tl.constexpr, KV_REP: tl.constexpr, SEL_HEADS: tl.constexpr,
    SEL_HEADS_PAD: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seg = tl.program_id(0)
    hs = tl.program_id(1)
    item, lo, hi, out_off = _key_slice(SEGS, seg)
    seq = tl.load(ITEMS + item * ITEM_COLS + ITEM_SEQ)
    pool0 = tl.load(ITEMS + item * ITEM_COLS + ITEM_POOL0)
    npool = tl.load(ITEMS + item * ITEM_COLS + ITEM_NPOOL)
    has_tail = tl.load(ITEMS + item * ITEM_COLS + ITEM_NTAIL) > 0

    r = tl.arange(0, ROWS)
    pool = r // SEL_HEADS_PAD
    qh = hs * SEL_HEADS + r % SEL_HEADS_PAD
    row_ok = (pool < npool) & (r % SEL_HEADS_PAD < SEL_HEADS)
    d = tl.arange(0, BLOCK_D)
    pr = (pool0 + pool).to(tl.int64) * NUM_HEADS + qh
    qbar = tl.load(QBAR + pr[:, None] * BLOCK_D + d[None, :], mask=row_ok[:, None], other=0.0)
    qbar = qbar.to(KV.dtype.element_ty)
    abar = tl.load(ABAR + pr, mask=row_ok, other=0.0)
    thr = tl.where(row_ok, abar - theta_log2, float("inf"))

    bt_row = BT + seq.to(tl.int64) * stride_bt
    head_off = ((hs * SEL_HEADS) // KV_REP) * stride_kv_head
    dst = SCRATCH + hs.to(tl.int64) * stride_list_head + out_off
    tail_src = TAIL_HITS + hs.to(tl.int64) * stride_list_head + out_off
    twin = tl.load(SEG_TWIN + seg)
    has_twin = twin >= 0
    twin_off = tl.load(SEGS + tl.maximum(twin, 0) * 4 + SEG_OFF)
    twin_dst = SCRATCH + hs.to(tl.int64) * stride_list_head + twin_off
    twin_src = TAIL_HITS + hs.to(tl.int64) * stride_list_head + twin_off
    offs_n = tl.arange(0, BLOCK_N)
    count = 0
    twin_count = 0
    for j0 in range(lo, hi, BLOCK_N):
        j, valid, k = _key_block(KV, bt_row, j0, hi, offs_n, d, PAGE, stride_kv_block, stride_kv_tok, head_off,
                                 HEAD_DIM)
        s = tl.dot(qbar, tl.trans(k)) * qk_scale
        pooled = tl.max((s >= thr[:, None]).to(tl.int32), 0)
        hit = tl.maximum(pooled, tl.load(tail_src + (j - lo), mask=valid & has_tail, other=0).to(tl.int32))
        keep = (hit > 0) & valid
        keep_i = keep.to(tl.int32)
        slot = tl.cumsum(keep_i, 0) - keep_i
        tl.store(dst + count + slot, j, mask=keep)
        count += tl.sum(keep_i, 0)
        if has_twin:
            t_hit = tl.maximum(pooled, tl.load(twin_src + (j - lo), mask=valid, other=0).to(tl.int32))
            t_keep = (t_hit > 0) & valid
            t_keep_i = t_keep.to(tl.int32)
            t_slot = tl.cumsum(t_keep_i, 0) - t_keep_i
            tl.store(twin_dst + twin_count + t_slot, j, mask=t_keep)
            twin_count += tl.sum(t_keep_i, 0)
    tl.store(SEG_COUNTS + seg * NUM_SEL + hs, count)
    tl.store(SEG_COUNTS + tl.maximum(twin, 0) * NUM_SEL + hs, twin_count, mask=has_twin)


@triton.jit
def tail_hits_kernel(
    Q, stride_q_tok, stride_q_head, M,  # the chunk's queries and anchors [T, H] (log2)
    KV, stride_kv_block, stride_kv_head, stride_kv_tok, PAGE,
    BT, stride_bt,
    ITEMS, TAIL_BLOCKS,               # [n_blocks, 4] int32: item, lo, hi, offset (like SEGS)
    TAIL_HITS, stride_list_head,      # int8 [NUM_SEL, capacity]: 1 where a tail query keeps the column
    qk_scale, theta_log2,
    NUM_HEADS: tl.constexpr, KV_REP: tl.constexpr, SEL_HEADS: tl.constexpr,
    SEL_HEADS_PAD: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    blk = tl.program_id(0)
    hs = tl.program_id(1)
    item, lo, hi, out_off = _key_slice(TAIL_BLOCKS, blk)
    seq = tl.load(ITEMS + item * ITEM_COLS + ITEM_SEQ)
    tail_row0 = tl.load(ITEMS + item * ITEM_COLS + ITEM_TAIL_ROW0)
    ntail = tl.load(ITEMS + item * ITEM_COLS + ITEM_NTAIL)

    r = tl.arange(0, ROWS)
    qh = hs * SEL_HEADS + r % SEL_HEADS_PAD
    d = tl.arange(0, BLOCK_D)
    bt_row = BT + seq.to(tl.int64) * stride_bt
    head_off = ((hs * SEL_HEADS) // KV_REP) * stride_kv_head
    dst = TAIL_HITS + hs.to(tl.int64) * stride_list_head + out_off
    offs_n = tl.arange(0, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        j, valid, k = _key_block(KV, bt_row, j0, hi, offs_n, d, PAGE, stride_kv_block, stride_kv_tok, head_off,
                                 HEAD_DIM)
        hit = tl.zeros([BLOCK_N], tl.int32)
        # ROWS // SEL_HEADS_PAD tail tokens x their query heads per pass
        for t0 in range(0, ntail, ROWS // SEL_HEADS_PAD):
            tok = t0 + r // SEL_HEADS_PAD
            t_ok = (tok < ntail) & (r % SEL_HEADS_PAD < SEL_HEADS)
            row = (tail_row0 + tok).to(tl.int64)
            qt = load_q_rows(Q, row, qh, t_ok, d, stride_q_tok, stride_q_head, HEAD_DIM)
            t_thr = tl.where(t_ok, tl.load(M + row * NUM_HEADS + qh, mask=t_ok, other=0.0) - theta_log2,
                             float("inf"))
            st = tl.dot(qt.to(KV.dtype.element_ty), tl.trans(k)) * qk_scale
            hit = tl.maximum(hit, tl.max((st >= t_thr[:, None]).to(tl.int32), 0))
        tl.store(dst + (j - lo), hit.to(tl.int8), mask=valid)


@triton.jit
def stripe_pack_kernel(ITEMS, SEGS, SCRATCH, LISTS, SLOTS, stride_list_head, SEG_COUNTS, COUNTS, NUM_SEL,
                       BT, stride_bt, PAGE, ITEM_Q, SELECTED, BLOCK: tl.constexpr, COUNT_SELECTED: tl.constexpr):
    """Concatenate the segments' runs; also write each position's cache slot
    (``page * PAGE + pos % PAGE``) so the sparse step gathers without a page-table lookup.

    With ``COUNT_SELECTED``, each program adds its list's (query, key) pairs, ``count x
    ITEM_Q[item]``, to the fp64 ``SELECTED``: the density guard's numerator, ready on the GPU
    without the four tensor ops (and their host time, per layer call) that compute it from
    ``COUNTS`` afterwards (``kernels.api.PACK_COUNTS_SELECTED``)."""
    item = tl.program_id(0)
    hs = tl.program_id(1)
    bt_row = BT + tl.load(ITEMS + item * ITEM_COLS + ITEM_SEQ).to(tl.int64) * stride_bt
    list_off = tl.load(ITEMS + item * ITEM_COLS + ITEM_LIST_OFF)
    seg0 = tl.load(ITEMS + item * ITEM_COLS + ITEM_SEG0)
    nseg = tl.load(ITEMS + item * ITEM_COLS + ITEM_NSEG)
    src_base = SCRATCH + hs.to(tl.int64) * stride_list_head
    dst = LISTS + hs.to(tl.int64) * stride_list_head + list_off
    dst_slot = SLOTS + hs.to(tl.int64) * stride_list_head + list_off
    offs = tl.arange(0, BLOCK)
    total = 0
    for s in range(0, nseg):
        c = tl.load(SEG_COUNTS + (seg0 + s) * NUM_SEL + hs)
        src = src_base + tl.load(SEGS + (seg0 + s) * 4 + SEG_OFF)
        for k0 in range(0, c, BLOCK):
            ok = k0 + offs < c
            pos = tl.load(src + k0 + offs, mask=ok, other=0)
            page = tl.load(bt_row + pos // PAGE, mask=ok, other=0)
            tl.store(dst + total + k0 + offs, pos, mask=ok)
            tl.store(dst_slot + total + k0 + offs, page * PAGE + pos % PAGE, mask=ok)
        total += c
    tl.store(COUNTS + item * NUM_SEL + hs, total)
    if COUNT_SELECTED:
        tl.atomic_add(SELECTED, total.to(tl.float64) * tl.load(ITEM_Q + item))
