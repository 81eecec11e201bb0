"""The work planner as it was written first (kernels/plan.py at c2f9acd): one Python loop step per
tile, segment and tail block; its arguments are resolved by the same kernels.plan helpers.
kernels/plan.py now builds the same tables per group with numpy (the loop cost 2.4 ms per 32k plan
on the host, time the GPU sat idle at the start of each step); this one is kept as the reference
its tables must equal (tests/test_plan_vectorized.py)."""
from __future__ import annotations

import torch

from vllm_anchor.kernels.config import AnchorConfig
from vllm_anchor.kernels.plan import ITEM_COLS, ITEM_SEG0, TAIL_BLOCK_TOKENS, host_lengths, launch_sizes


def _group_tiles(g: int, g_lo: int, g_hi: int, group_size: int, tile_m: int):
    """``(lo, hi)`` token spans of the tiles of group ``g`` that hold chunk tokens ``[g_lo, g_hi)``.

    Tiles sit on absolute multiples of ``tile_m`` from the group start, so a token's tile does
    not depend on where the chunk begins."""
    g0 = g * group_size
    for t0 in range(g0 + (g_lo - g0) // tile_m * tile_m, g_hi, tile_m):
        yield max(t0, g_lo), min(t0 + tile_m, g_hi)


def reference_plan_tables(query_start_loc: torch.Tensor | list[int], seq_lens: torch.Tensor | list[int],
                          cfg: AnchorConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                          device: torch.device | str, rows: int | None = None,
                          segment_tokens: int | None = None, sparse_rows: int | None = None) -> tuple:
    """The plan's host tables, ``list_capacity`` and ``num_pools``, built one tile at a time."""
    qsl, sls = host_lengths(query_start_loc, seq_lens)
    pack, rows, tile_m, sparse_rows, sparse_tile_m, segment_tokens = launch_sizes(
        cfg, num_heads, num_kv_heads, head_dim, device, rows, segment_tokens, sparse_rows)
    G, b = cfg.group_size, cfg.pool_block
    tiles, items, segs, pool_rows, tile_pool, tile_pool_next, item_q = [], [], [], [], [], [], []
    # twin_segs: the tail items' segments that their group's other item's scan writes (seg_twin
    # holds their index there, -1 for none); they follow the scanned segments in the table
    twin_segs, seg_twin, twin_items = [], [], []
    # the tail items' sparse tiles go first: a tail list can be far longer than its group's
    # pooled one (one query keeps more columns than a block mean), and started last such a
    # tile would run alone at the end of the launch
    sparse_tiles, tail_sparse_tiles, tail_blocks = [], [], []
    # the sparse step reuses the anchor's tiles when they are the same size and no tail cuts a
    # group into two list owners (an anchor tile may hold rows of both)
    split_sparse = sparse_tile_m != tile_m or cfg.tail_tokens > 0
    list_off = 0
    for s, seq_len in enumerate(sls):
        q_len = qsl[s + 1] - qsl[s]
        if q_len <= 0:
            continue
        if q_len > seq_len:
            raise ValueError(f"sequence {s}: query length {q_len} exceeds seq_len {seq_len}")
        start = seq_len - q_len
        for g in range(start // G, (seq_len - 1) // G + 1):
            g_lo, g_hi = max(start, g * G), min(seq_len, (g + 1) * G)
            cand_end = cfg.candidate_end(g)
            n_cand = cand_end - cfg.sink_tokens
            pool0 = len(pool_rows)
            for p0 in range(g_lo // b * b, g_hi, b):
                pool_rows.append(min(p0 + b, g_hi) - max(p0, g_lo))
            for t_lo, t_hi in _group_tiles(g, g_lo, g_hi, G, tile_m):
                first, last = pool0 + t_lo // b - g_lo // b, pool0 + (t_hi - 1) // b - g_lo // b
                tiles.append((s, qsl[s] + t_lo - start, t_lo, t_hi - t_lo, len(items), first))
                tile_pool.append(first)
                tile_pool_next.append(last)
            # The chunk's last tail_tokens queries that fall in this group own a second list, the
            # pooled hits plus their own one-by-one hits; the group's other rows keep the pooled
            # list, so the columns only the tail wants cost nothing for the rest of the group.
            tail_lo = min(g_hi, max(g_lo, seq_len - cfg.tail_tokens))
            owners = [o for o in ((g_lo, tail_lo, 0), (tail_lo, g_hi, g_hi - tail_lo)) if o[1] > o[0]]
            for owner, (o_lo, o_hi, n_tail) in enumerate(owners):
                item = len(items)
                own = [(item, lo, min(lo + segment_tokens, cand_end), list_off + lo - cfg.sink_tokens)
                       for lo in range(cfg.sink_tokens, cand_end, segment_tokens)]
                if owner == 0:  # scanned by programs of its own
                    seg0 = main_seg0 = len(segs)
                    segs += own
                    seg_twin += [-1] * len(own)
                else:  # the group's tail after other rows: written by the first owner's programs
                    seg0 = len(twin_segs)
                    for k in range(len(own)):
                        seg_twin[main_seg0 + k] = len(twin_segs) + k
                    twin_segs += own
                    twin_items.append(item)
                items.append([s, cand_end, list_off, pool0, len(pool_rows) - pool0, seg0, len(own),
                              qsl[s] + o_lo - start if n_tail else 0, n_tail])
                item_q.append(o_hi - o_lo)
                if n_tail:
                    for lo in range(cfg.sink_tokens, cand_end, TAIL_BLOCK_TOKENS):
                        tail_blocks.append((item, lo, min(lo + TAIL_BLOCK_TOKENS, cand_end),
                                            list_off + lo - cfg.sink_tokens))
                list_off += n_cand
                if split_sparse:
                    for t_lo, t_hi in _group_tiles(g, o_lo, o_hi, G, sparse_tile_m):
                        (tail_sparse_tiles if n_tail else sparse_tiles).append(
                            (s, qsl[s] + t_lo - start, t_lo, t_hi - t_lo, item, pool0 + t_lo // b - g_lo // b))

    n_scan = len(segs)
    segs += twin_segs
    seg_twin = [n_scan + t if t >= 0 else -1 for t in seg_twin]
    for item in twin_items:
        items[item][ITEM_SEG0] += n_scan

    def table(rows, width):
        return torch.tensor(rows, dtype=torch.int32).reshape(-1, width)

    # the anchor tiles holding rows of each pooling block: a contiguous run, since tiles and
    # pools are both in token order
    pool_tiles = [[len(tiles), 0] for _ in pool_rows]
    for t, (first, last) in enumerate(zip(tile_pool, tile_pool_next)):
        for p in {first, last}:
            pool_tiles[p][0] = min(pool_tiles[p][0], t)
            pool_tiles[p][1] += 1

    tables = dict(tiles=table(tiles, 6), items=table(items, ITEM_COLS), segments=table(segs, 4),
                  tail_blocks=table(tail_blocks, 4), seg_twin=torch.tensor(seg_twin, dtype=torch.int32),
                  pool_rows=torch.tensor(pool_rows, dtype=torch.float32),
                  tile_pool_next=torch.tensor(tile_pool_next, dtype=torch.int64), pool_tiles=table(pool_tiles, 2),
                  item_queries=torch.tensor(item_q, dtype=torch.float64))
    tables["sparse_tiles"] = table(tail_sparse_tiles + sparse_tiles, 6) if split_sparse else tables["tiles"]
    return tables, list_off, len(pool_rows)
