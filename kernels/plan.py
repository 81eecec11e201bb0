"""Host-side work planning for a varlen batch of prefill chunks (FlashInfer-style ``plan``).

The Triton kernels never branch on sequence boundaries: they read small int32 work lists
built here once per batch (in vLLM: once per step, shared by every layer). Work is cut on
*absolute* positions, so a chunk that starts mid-group or mid-tile gets partial tiles and a
partial group instead of a dense side path.

* tiles   - ``tile_m`` consecutive query rows of one sequence inside one group (anchor and
            sparse kernels run one program per tile and query head);
* pools   - the pooling blocks (``pool_block`` rows, absolute-aligned) made of whole tiles;
* items   - one (sequence, group) pair: the unit that owns a stripe list;
* segments- fixed-size slices of an item's candidate range, so the stripe scan of late groups
            (up to the whole context) is spread over many programs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import AnchorConfig

# Column layouts of the packed int32 work tables.
TILE_SEQ, TILE_ROW0, TILE_POS0, TILE_NROWS, TILE_ITEM, TILE_POOL = range(6)
ITEM_SEQ, ITEM_CAND_END, ITEM_LIST_OFF, ITEM_POOL0, ITEM_NPOOL, ITEM_SEG0, ITEM_NSEG = range(7)
SEG_ITEM, SEG_LO, SEG_HI, SEG_OFF = range(4)


def heads_per_program(cfg: AnchorConfig, num_heads: int, num_kv_heads: int) -> int:
    """Query heads packed into one program's rows (padded to a power of two).

    With shared GQA lists every query head of a KV head reads the same gathered K/V rows, so
    one program takes them all: each row it gathers feeds ``H/Hkv`` heads from registers.
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    rep = num_heads // num_kv_heads
    return 1 << (rep - 1).bit_length() if cfg.share_gqa else 1


def default_rows(head_dim: int, device) -> int:
    """Rows per program: 128 fits the registers for head_dim <= 128, 64 above; 16 on the CPU."""
    if torch.device(device).type != "cuda":
        return 16
    return 128 if head_dim <= 128 else 64


@dataclass
class AnchorPlan:
    cfg: AnchorConfig
    tile_m: int  # query tokens per tile; a program holds tile_m * pack rows
    pack: int  # query heads per program (see heads_per_program)
    num_heads: int
    num_kv_heads: int
    segment_tokens: int
    num_tokens: int
    tiles: torch.Tensor  # [n_tiles, 6] int32
    items: torch.Tensor  # [n_items, 7] int32
    segments: torch.Tensor  # [n_segs, 4] int32
    pool_rows: torch.Tensor  # [n_pools] float32, rows present in each pooling block
    tile_pool: torch.Tensor  # [n_tiles] int64, pooling block of each tile
    list_capacity: int  # stripe-list entries per selector head (sum of candidates)
    num_pools: int
    # host copies, for statistics and tests
    items_cpu: torch.Tensor
    item_queries_cpu: torch.Tensor  # [n_items] queries of the chunk in each item

    @property
    def num_tiles(self) -> int:
        return self.tiles.shape[0]

    @property
    def num_items(self) -> int:
        return self.items.shape[0]

    @property
    def num_segments(self) -> int:
        return self.segments.shape[0]


def plan_anchor_prefill(query_start_loc: torch.Tensor | list[int], seq_lens: torch.Tensor | list[int],
                        cfg: AnchorConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                        device: torch.device | str, tile_m: int | None = None,
                        segment_tokens: int = 4096) -> AnchorPlan:
    """Build the work lists of a batch of prefill chunks.

    Parameters
    ----------
    query_start_loc:
        ``[B + 1]`` cumulative query counts (host values), as vLLM's ``query_start_loc_cpu``
        rebased so that the first prefill token is row 0 of ``q``.
    seq_lens:
        ``[B]`` total tokens of each sequence after this chunk (context + chunk), host values.
        The chunk of sequence ``s`` holds absolute positions ``[seq_len - q_len, seq_len)``.
    """
    qsl = [int(x) for x in query_start_loc]
    sls = [int(x) for x in seq_lens]
    if len(qsl) != len(sls) + 1:
        raise ValueError(f"query_start_loc has {len(qsl)} entries, expected len(seq_lens)+1 = {len(sls) + 1}")
    pack = heads_per_program(cfg, num_heads, num_kv_heads)
    tile_m = tile_m or max(1, min(default_rows(head_dim, device) // pack, cfg.pool_block))
    if tile_m & (tile_m - 1) or cfg.pool_block % tile_m or tile_m * pack < 16:
        raise ValueError(f"tile_m={tile_m} must be a power of two dividing pool_block={cfg.pool_block} "
                         f"with tile_m * {pack} packed heads >= 16")
    if segment_tokens <= 0 or segment_tokens % 16:
        raise ValueError(f"segment_tokens must be a positive multiple of 16, got {segment_tokens}")
    G, b = cfg.group_size, cfg.pool_block
    tiles, items, segs, pool_rows, tile_pool, item_q = [], [], [], [], [], []
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
            item = len(items)
            pool0 = len(pool_rows)
            for p0 in range(g_lo // b * b, g_hi, b):
                p_lo, p_hi = max(p0, g_lo), min(p0 + b, g_hi)
                pool = len(pool_rows)
                pool_rows.append(p_hi - p_lo)
                for t0 in range(p_lo // tile_m * tile_m, p_hi, tile_m):
                    t_lo, t_hi = max(t0, p_lo), min(t0 + tile_m, p_hi)
                    tiles.append((s, qsl[s] + t_lo - start, t_lo, t_hi - t_lo, item, pool))
                    tile_pool.append(pool)
            seg0 = len(segs)
            for lo in range(cfg.sink_tokens, cand_end, segment_tokens):
                segs.append((item, lo, min(lo + segment_tokens, cand_end), list_off + lo - cfg.sink_tokens))
            items.append((s, cand_end, list_off, pool0, len(pool_rows) - pool0, seg0, len(segs) - seg0))
            item_q.append(g_hi - g_lo)
            list_off += n_cand

    def table(rows, width):
        return torch.tensor(rows, dtype=torch.int32).reshape(-1, width)

    items_cpu = table(items, 7)
    to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return AnchorPlan(
        cfg=cfg, tile_m=tile_m, pack=pack, num_heads=num_heads, num_kv_heads=num_kv_heads,
        segment_tokens=segment_tokens, num_tokens=qsl[-1],
        tiles=to(table(tiles, 6)), items=to(items_cpu), segments=to(table(segs, 4)),
        pool_rows=to(torch.tensor(pool_rows, dtype=torch.float32)),
        tile_pool=to(torch.tensor(tile_pool, dtype=torch.int64)),
        list_capacity=list_off, num_pools=len(pool_rows),
        items_cpu=items_cpu, item_queries_cpu=torch.tensor(item_q, dtype=torch.int64),
    )


def stripe_density(plan: AnchorPlan, counts: torch.Tensor) -> float:
    """Selected / candidate (query, key) pairs of the chunk, all selector heads together.

    Reads ``counts`` back to the host: one synchronization per layer, on prefill steps only.
    """
    cand = (plan.items_cpu[:, 1] - plan.cfg.sink_tokens).to(torch.float64)
    q = plan.item_queries_cpu.to(torch.float64)
    total = float((cand * q).sum()) * counts.shape[1]
    if total == 0:
        return 0.0
    return float((counts.cpu().to(torch.float64).sum(1) * q).sum()) / total
