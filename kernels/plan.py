"""Host-side work planning for a varlen batch of prefill chunks (FlashInfer-style ``plan``).

The Triton kernels never branch on sequence boundaries: they read small int32 work lists
built here once per batch (in vLLM: once per step, shared by every layer). Work is cut on
*absolute* positions, so a chunk that starts mid-group or mid-tile gets partial tiles and a
partial group instead of a dense side path.

* tiles   - ``tile_m`` consecutive query tokens of one sequence inside one group (anchor and
            sparse kernels run one program per tile and list of query heads);
* pools   - the pooling blocks (``pool_block`` rows, absolute-aligned); a tile spans at most
            two, and the anchor kernel sums its rows for each of them separately;
* items   - the units that own a stripe list: one per (sequence, group), two where the
            chunk's last ``tail_tokens`` queries fall in the group (its other rows, then the
            tail's rows, whose list adds the columns the tail's queries keep one by one);
* segments- fixed-size slices of an item's candidate range, so the stripe scan of late groups
            (up to the whole context) is spread over many programs. A group's tail item has
            the same pooled queries and candidates as the group's other item, so its segments
            are not scanned again: each of the other item's scan programs also writes the
            matching tail segment (``seg_twin``), the pooled hits plus the tail's own;
* tail blocks - short slices of the tail items' candidate ranges, one program each for the
            tail's one-by-one scoring (several passes over every key: short slices keep any
            one program from setting the step's time).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .config import AnchorConfig

# Column layouts of the packed int32 work tables.
TILE_SEQ, TILE_ROW0, TILE_POS0, TILE_NROWS, TILE_ITEM, TILE_POOL = range(6)
ITEM_SEQ, ITEM_CAND_END, ITEM_LIST_OFF, ITEM_POOL0, ITEM_NPOOL, ITEM_SEG0, ITEM_NSEG, ITEM_TAIL_ROW0, ITEM_NTAIL = range(9)
ITEM_COLS = ITEM_NTAIL + 1
SEG_ITEM, SEG_LO, SEG_HI, SEG_OFF = range(4)  # also the tail blocks' columns
# Candidate keys per tail-hits program: 4 key blocks of 64, times up to 4 passes of 16 tail
# tokens each at the default tail_tokens 64 / pools_per_group 16.
TAIL_BLOCK_TOKENS = 256


def heads_per_program(cfg: AnchorConfig, num_heads: int, num_kv_heads: int) -> int:
    """Query heads packed into one program's rows: all of a KV head's with shared GQA lists.

    With shared lists every query head of a KV head reads the same gathered K/V rows, so one
    program takes them all and each row it gathers feeds ``H/Hkv`` heads from registers.
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    return num_heads // num_kv_heads if cfg.share_gqa else 1


def default_rows(head_dim: int, device) -> int:
    """Rows (tokens x packed heads) per anchor program; 16 on the CPU, where the interpreter is
    slow. head_dim 128: 256 rows on two warpgroups (128 each) win on the H100 for both kernels
    (bench/results/sparse_tiles_h100/); head_dim 64: 128 (256 measured slower,
    tune_smollm2_shape_rows_h100.json); above 128, 64 fit the registers."""
    if torch.device(device).type != "cuda":
        return 16
    if head_dim <= 64:
        return 128
    return 256 if head_dim <= 128 else 64


def default_sparse_rows(head_dim: int, device) -> int:
    """Rows per sparse-step program. The sparse step's tiles are cut separately from the
    anchor's (a tile only has to stay inside one group there, not inside two pooling blocks),
    so the two kernels can use different sizes; `bench/tune.py --kernels sparse` sweeps it."""
    return default_rows(head_dim, device)


def default_segment_tokens(head_dim: int, device) -> int:
    """Candidate keys per stripe-scan program (bench/tune.py): shorter segments put more
    programs in flight (head_dim 64 with 3 KV heads has few), longer ones spend fewer on the
    pack step (which wins at head_dim 128 with 8 KV heads). For d 64 the H100 and H200 sweeps
    disagree (1024 vs 2048 keys, each 20-40% off on the other); 2048 with 64-key blocks is
    within 25% of the best on both."""
    return 2048 if head_dim <= 64 else 4096


def tile_tokens(rows: int, heads: int, max_tokens: int | None = None) -> tuple[int, int]:
    """``(rows, tokens)`` of one tile: as many whole tokens as fit ``rows`` (a power of two,
    raised to fit one token's heads), at most ``max_tokens``. The anchor step passes its pooling
    block, so a tile spans <= 2 pools; the sparse step does not pool and passes no limit.

    Tokens need not be a power of two: with 3 heads per KV head, 42 tokens fill 126 of 128 rows
    (a power-of-two head count padded 3 to 4 and left a quarter of the rows idle).
    """
    if rows < 16 or rows & (rows - 1):
        raise ValueError(f"rows per program must be a power of two >= 16, got {rows}")
    rows = max(rows, 1 << (heads - 1).bit_length())
    tokens = rows // heads if max_tokens is None else min(rows // heads, max_tokens)
    # a token limit below the rows would leave rows idle: shrink the program instead
    return max(16, 1 << (tokens * heads - 1).bit_length()), tokens


def _group_tiles(g: int, g_lo: int, g_hi: int, group_size: int, tile_m: int):
    """``(lo, hi)`` token spans of the tiles of group ``g`` that hold chunk tokens ``[g_lo, g_hi)``.

    Tiles sit on absolute multiples of ``tile_m`` from the group start, so a token's tile does
    not depend on where the chunk begins."""
    g0 = g * group_size
    for t0 in range(g0 + (g_lo - g0) // tile_m * tile_m, g_hi, tile_m):
        yield max(t0, g_lo), min(t0 + tile_m, g_hi)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device`` without making the host wait for the GPU.

    vLLM builds the next step's metadata (and so this plan) while the GPU still runs the current
    step (async scheduling). A copy from pageable host memory may wait for the stream's earlier
    work (CUDA stages it through pinned memory and may synchronize to do so), which would stop
    the host until the current step ends. A pinned copy is asynchronous; PyTorch's pinned-memory
    cache keeps the block until the copy has run.
    """
    if torch.device(device).type != "cuda":
        return t.to(device)
    try:
        t = t.pin_memory()
    except RuntimeError:  # no pinned memory here (e.g. WSL): the plain copy
        pass
    return t.to(device, non_blocking=True)


@dataclass
class AnchorPlan:
    cfg: AnchorConfig
    rows: int  # rows per anchor program (power of two), tile_m * pack of them used
    tile_m: int  # query tokens per anchor tile (any count <= pool_block)
    sparse_rows: int  # the same for the sparse step's programs
    sparse_tile_m: int
    pack: int  # query heads per program (see heads_per_program)
    num_heads: int
    num_kv_heads: int
    segment_tokens: int
    num_tokens: int
    tiles: torch.Tensor  # [n_tiles, 6] int32, the anchor step's tiles
    sparse_tiles: torch.Tensor  # [n_sparse_tiles, 6] int32 (the anchor's when sizes agree and no tail)
    items: torch.Tensor  # [n_items, ITEM_COLS] int32
    segments: torch.Tensor  # [n_segs, 4] int32: the scanned ones first, then the twins
    seg_twin: torch.Tensor  # [n_scan_segs] int32: the tail segment a scan program also fills, or -1
    tail_blocks: torch.Tensor  # [n_tail_blocks, 4] int32, the tail items' slices (segment columns)
    pool_rows: torch.Tensor  # [n_pools] float32, rows present in each pooling block
    tile_pool_next: torch.Tensor  # [n_tiles] int64, pooling block of its tokens past a pool edge
    # (the pooling block of each tile's first token is the tiles table's TILE_POOL column)
    pool_tiles: torch.Tensor  # [n_pools, 2] int32, first anchor tile touching each pool, count
    list_capacity: int  # stripe-list entries per selector head (sum of candidates)
    num_pools: int
    # host copies, for statistics and tests
    items_cpu: torch.Tensor
    item_queries_cpu: torch.Tensor  # [n_items] queries of the chunk in each item
    item_queries: torch.Tensor  # the same, float64 on the device (the density's weights)

    @property
    def num_tiles(self) -> int:
        return self.tiles.shape[0]

    @property
    def num_sparse_tiles(self) -> int:
        return self.sparse_tiles.shape[0]

    @property
    def num_items(self) -> int:
        return self.items.shape[0]

    @property
    def num_segments(self) -> int:
        return self.segments.shape[0]

    @property
    def num_scan_segments(self) -> int:
        """Segments with a scan program of their own (the twins are written by their partner's)."""
        return self.seg_twin.shape[0]

    @property
    def num_tail_blocks(self) -> int:
        return self.tail_blocks.shape[0]

    @cached_property
    def candidate_pairs(self) -> float:
        """(query, candidate key) pairs of the chunk for one selector head: the density's
        denominator, computed once per plan rather than once per layer call."""
        cand = (self.items_cpu[:, 1] - self.cfg.sink_tokens).to(torch.float64)
        return float((cand * self.item_queries_cpu.to(torch.float64)).sum())


def plan_anchor_prefill(query_start_loc: torch.Tensor | list[int], seq_lens: torch.Tensor | list[int],
                        cfg: AnchorConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                        device: torch.device | str, rows: int | None = None,
                        segment_tokens: int | None = None, sparse_rows: int | None = None) -> AnchorPlan:
    """Build the work lists of a batch of prefill chunks.

    Parameters
    ----------
    query_start_loc:
        ``[B + 1]`` cumulative query counts (host values), as vLLM's ``query_start_loc_cpu``
        rebased so that the first prefill token is row 0 of ``q``.
    seq_lens:
        ``[B]`` total tokens of each sequence after this chunk (context + chunk), host values.
        The chunk of sequence ``s`` holds absolute positions ``[seq_len - q_len, seq_len)``.
    rows:
        Rows (tokens x packed query heads) per anchor program; default :func:`default_rows`.
        A launch parameter: bench/tune.py sweeps it.
    sparse_rows:
        The same for the sparse step; default ``rows`` when that is given, else
        :func:`default_sparse_rows`.
    segment_tokens:
        Candidate keys per stripe-scan program; default :func:`default_segment_tokens`.
    """
    qsl = [int(x) for x in query_start_loc]
    sls = [int(x) for x in seq_lens]
    if len(qsl) != len(sls) + 1:
        raise ValueError(f"query_start_loc has {len(qsl)} entries, expected len(seq_lens)+1 = {len(sls) + 1}")
    pack = heads_per_program(cfg, num_heads, num_kv_heads)
    sparse_rows = sparse_rows or rows or default_sparse_rows(head_dim, device)
    rows, tile_m = tile_tokens(rows or default_rows(head_dim, device), pack, cfg.pool_block)
    sparse_rows, sparse_tile_m = tile_tokens(sparse_rows, pack)
    segment_tokens = segment_tokens or default_segment_tokens(head_dim, device)
    if segment_tokens <= 0 or segment_tokens % 16:
        raise ValueError(f"segment_tokens must be a positive multiple of 16, got {segment_tokens}")
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

    items_cpu = table(items, ITEM_COLS)
    to = lambda t: to_device(t, device)  # noqa: E731
    tiles_dev = to(table(tiles, 6))
    return AnchorPlan(
        cfg=cfg, rows=rows, tile_m=tile_m, sparse_rows=sparse_rows, sparse_tile_m=sparse_tile_m,
        pack=pack, num_heads=num_heads, num_kv_heads=num_kv_heads,
        segment_tokens=segment_tokens, num_tokens=qsl[-1],
        tiles=tiles_dev, sparse_tiles=to(table(tail_sparse_tiles + sparse_tiles, 6)) if split_sparse else tiles_dev,
        items=to(items_cpu), segments=to(table(segs, 4)), tail_blocks=to(table(tail_blocks, 4)),
        seg_twin=to(torch.tensor(seg_twin, dtype=torch.int32)),
        pool_rows=to(torch.tensor(pool_rows, dtype=torch.float32)),
        tile_pool_next=to(torch.tensor(tile_pool_next, dtype=torch.int64)),
        pool_tiles=to(table(pool_tiles, 2)),
        list_capacity=list_off, num_pools=len(pool_rows),
        items_cpu=items_cpu, item_queries_cpu=torch.tensor(item_q, dtype=torch.int64),
        item_queries=to(torch.tensor(item_q, dtype=torch.float64)),
    )


def stripe_density_parts(plan: AnchorPlan, counts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(selected, candidates)``: the chunk's selected (query, key) pairs, all selector heads
    together, as a 0-dim float64 tensor on ``counts``' device (no synchronization), and its
    candidate pairs, a host number. The density is their ratio (0 without candidates)."""
    total = plan.candidate_pairs * counts.shape[1]
    return (counts.to(torch.float64).sum(1) * plan.item_queries.to(counts.device)).sum(), total


def stripe_density(plan: AnchorPlan, counts: torch.Tensor) -> float:
    """Selected / candidate (query, key) pairs of the chunk, all selector heads together.

    Reads ``counts`` back to the host: one synchronization. The backend reads the same number
    a call later instead (``routing.DeferredDensity``), so the GPU never waits for the host.
    """
    selected, total = stripe_density_parts(plan, counts)
    return float(selected) / total if total else 0.0
