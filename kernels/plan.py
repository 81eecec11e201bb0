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

import numpy as np
import torch

from .config import AnchorConfig
from .launch_env import SEGMENT_TOKENS_OVERRIDE

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
    within 25% of the best on both. On the GPU, ``ANCHOR_KERNELS_LAUNCH``'s
    ``scan.segment_tokens`` replaces it (``kernels/launch_env.py``)."""
    if SEGMENT_TOKENS_OVERRIDE is not None and torch.device(device).type == "cuda":
        return SEGMENT_TOKENS_OVERRIDE
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
    qsl, sls = host_lengths(query_start_loc, seq_lens)
    pack, rows_per_tile, tile_m, sparse_rows, sparse_tile_m, segment_tokens = launch_sizes(
        cfg, num_heads, num_kv_heads, head_dim, device, rows, segment_tokens, sparse_rows)
    G, b = cfg.group_size, cfg.pool_block
    # Work tables are built per group as numpy blocks (a 64k-token chunk has ~1600 tiles, ~500
    # tail blocks and up to ~1600 segments but only ~33 groups): a per-tile Python loop took
    # 2.4 ms per 32k plan and 5 ms per 64k chunk on the host, time the GPU sat idle at the start
    # of each step (bench/results/lease24_h100/trace32k/). Row layouts are the column constants above.
    tiles, tile_next, sparse_blocks, tail_sparse_blocks = [], [], [], []
    pool_blocks, seg_blocks, twin_blocks, tail_blocks, items, item_q = [], [], [], [], [], []
    # seg_twin: for each scanned segment, the index (among the twins) of the tail segment its
    # program also fills, or -1; the twins follow the scanned segments in the table
    seg_twin: list[int] = []
    twin_items: list[int] = []
    n_pools = n_segs = n_twins = 0
    # the tail items' sparse tiles go first: a tail list can be far longer than its group's
    # pooled one (one query keeps more columns than a block mean), and started last such a
    # tile would run alone at the end of the launch
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
        row_base = qsl[s] - start  # a token's row in q is row_base + its position
        for g in range(start // G, (seq_len - 1) // G + 1):
            g_lo, g_hi = max(start, g * G), min(seq_len, (g + 1) * G)
            cand_end = cfg.candidate_end(g)
            n_cand = cand_end - cfg.sink_tokens
            pool0 = n_pools
            p0 = np.arange(g_lo // b * b, g_hi, b, dtype=np.int64)
            pool_blocks.append(np.minimum(p0 + b, g_hi) - np.maximum(p0, g_lo))
            n_pools += len(p0)
            pool_base = pool0 - g_lo // b  # a position's pooling block is pool_base + pos // b
            rows, last = _tile_rows(s, row_base, g * G, g_lo, g_hi, tile_m, len(items), pool_base, b)
            tiles.append(rows)
            tile_next.append(last)
            # The chunk's last tail_tokens queries that fall in this group own a second list, the
            # pooled hits plus their own one-by-one hits; the group's other rows keep the pooled
            # list, so the columns only the tail wants cost nothing for the rest of the group.
            tail_lo = min(g_hi, max(g_lo, seq_len - cfg.tail_tokens))
            owners = [o for o in ((g_lo, tail_lo, 0), (tail_lo, g_hi, g_hi - tail_lo)) if o[1] > o[0]]
            for owner, (o_lo, o_hi, n_tail) in enumerate(owners):
                item = len(items)
                own = _candidate_spans(item, cfg.sink_tokens, cand_end, segment_tokens, list_off)
                n_own = len(own)  # the same for both owners of a group
                if owner == 0:  # scanned by programs of its own
                    seg0 = main_seg0 = n_segs
                    seg_blocks.append(own)
                    seg_twin += [-1] * n_own
                    n_segs += n_own
                else:  # the group's tail after other rows: written by the first owner's programs
                    seg0 = n_twins
                    seg_twin[main_seg0:main_seg0 + n_own] = range(n_twins, n_twins + n_own)
                    twin_blocks.append(own)
                    n_twins += n_own
                    twin_items.append(item)
                items.append([s, cand_end, list_off, pool0, n_pools - pool0, seg0, n_own,
                              qsl[s] + o_lo - start if n_tail else 0, n_tail])
                item_q.append(o_hi - o_lo)
                if n_tail:
                    tail_blocks.append(_candidate_spans(item, cfg.sink_tokens, cand_end, TAIL_BLOCK_TOKENS, list_off))
                list_off += n_cand
                if split_sparse:
                    rows, _ = _tile_rows(s, row_base, g * G, o_lo, o_hi, sparse_tile_m, item, pool_base, b)
                    (tail_sparse_blocks if n_tail else sparse_blocks).append(rows)

    seg_twin = [n_segs + t if t >= 0 else -1 for t in seg_twin]
    for item in twin_items:
        items[item][ITEM_SEG0] += n_segs

    tiles_np, tile_next_np = _rows(tiles, 6), _rows(tile_next, 0)
    items_cpu = torch.tensor(items, dtype=torch.int32).reshape(-1, ITEM_COLS)
    host = dict(
        tiles=tiles_np, items=items_cpu.numpy(), segments=_rows(seg_blocks + twin_blocks, 4),
        tail_blocks=_rows(tail_blocks, 4), seg_twin=np.asarray(seg_twin, dtype=np.int32),
        pool_rows=_rows(pool_blocks, 0).astype(np.float32), tile_pool_next=tile_next_np.astype(np.int64),
        pool_tiles=_pool_tiles(tiles_np[:, TILE_POOL], tile_next_np, n_pools),
        item_queries=np.asarray(item_q, dtype=np.float64),
    )
    if split_sparse:
        host["sparse_tiles"] = _rows(tail_sparse_blocks + sparse_blocks, 6)
    dev = upload({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in host.items()}, device)
    return AnchorPlan(
        cfg=cfg, rows=rows_per_tile, tile_m=tile_m, sparse_rows=sparse_rows, sparse_tile_m=sparse_tile_m,
        pack=pack, num_heads=num_heads, num_kv_heads=num_kv_heads,
        segment_tokens=segment_tokens, num_tokens=qsl[-1],
        tiles=dev["tiles"], sparse_tiles=dev["sparse_tiles"] if split_sparse else dev["tiles"],
        items=dev["items"], segments=dev["segments"], tail_blocks=dev["tail_blocks"], seg_twin=dev["seg_twin"],
        pool_rows=dev["pool_rows"], tile_pool_next=dev["tile_pool_next"], pool_tiles=dev["pool_tiles"],
        list_capacity=list_off, num_pools=n_pools,
        items_cpu=items_cpu, item_queries_cpu=torch.tensor(item_q, dtype=torch.int64),
        item_queries=dev["item_queries"],
    )


def host_lengths(query_start_loc, seq_lens) -> tuple[list[int], list[int]]:
    """``query_start_loc`` and ``seq_lens`` as host integer lists, checked against each other."""
    qsl = [int(x) for x in query_start_loc]
    sls = [int(x) for x in seq_lens]
    if len(qsl) != len(sls) + 1:
        raise ValueError(f"query_start_loc has {len(qsl)} entries, expected len(seq_lens)+1 = {len(sls) + 1}")
    return qsl, sls


def launch_sizes(cfg: AnchorConfig, num_heads: int, num_kv_heads: int, head_dim: int, device,
                 rows: int | None, segment_tokens: int | None, sparse_rows: int | None) -> tuple[int, ...]:
    """``(pack, rows, tile_m, sparse_rows, sparse_tile_m, segment_tokens)`` of a plan: the
    arguments of :func:`plan_anchor_prefill`, or their defaults, resolved and checked."""
    pack = heads_per_program(cfg, num_heads, num_kv_heads)
    sparse_rows = sparse_rows or rows or default_sparse_rows(head_dim, device)
    rows, tile_m = tile_tokens(rows or default_rows(head_dim, device), pack, cfg.pool_block)
    sparse_rows, sparse_tile_m = tile_tokens(sparse_rows, pack)
    segment_tokens = segment_tokens or default_segment_tokens(head_dim, device)
    if segment_tokens <= 0 or segment_tokens % 16:
        raise ValueError(f"segment_tokens must be a positive multiple of 16, got {segment_tokens}")
    return pack, rows, tile_m, sparse_rows, sparse_tile_m, segment_tokens


def _tile_rows(seq: int, row_base: int, g0: int, lo: int, hi: int, tile_m: int, item: int, pool_base: int,
               b: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(seq, row0, pos0, n, item, pool)`` of the tiles holding chunk tokens ``[lo, hi)`` of
    the group starting at ``g0``, and each tile's last pooling block.

    Tiles sit on absolute multiples of ``tile_m`` from the group start, so a token's tile does
    not depend on where the chunk begins."""
    t0 = np.arange(g0 + (lo - g0) // tile_m * tile_m, hi, tile_m, dtype=np.int64)
    t_lo, t_hi = np.maximum(t0, lo), np.minimum(t0 + tile_m, hi)
    rows = np.stack([np.full_like(t_lo, seq), row_base + t_lo, t_lo, t_hi - t_lo, np.full_like(t_lo, item),
                     pool_base + t_lo // b], 1)
    return rows, pool_base + (t_hi - 1) // b


def _candidate_spans(item: int, lo: int, end: int, step: int, list_off: int) -> np.ndarray:
    """Rows ``(item, lo, hi, list offset)`` cutting an item's candidate keys ``[lo, end)`` into
    spans of ``step`` (the scan's segments, the tail's blocks); a span's offset in the item's list
    is its distance from ``lo``."""
    start = np.arange(lo, end, step, dtype=np.int64)
    return np.stack([np.full_like(start, item), start, np.minimum(start + step, end), list_off + start - lo], 1)


def _rows(blocks: list[np.ndarray], width: int) -> np.ndarray:
    """The blocks stacked as one int32 table ``[n, width]`` (``width`` 0: a flat vector)."""
    if not blocks:
        return np.zeros((0, width) if width else (0,), dtype=np.int32)
    return np.concatenate(blocks).astype(np.int32)


def _pool_tiles(first: np.ndarray, last: np.ndarray, n_pools: int) -> np.ndarray:
    """``[n_pools, 2]``: the first anchor tile holding rows of each pooling block, and how many
    do (a contiguous run: tiles and pools are both in token order; a tile spans <= 2 pools)."""
    t = np.arange(len(first), dtype=np.int64)
    two = last != first
    pools = np.concatenate([first, last[two]]).astype(np.int64)
    owners = np.concatenate([t, t[two]])
    out = np.zeros((n_pools, 2), dtype=np.int64)
    out[:, 0] = len(first)
    np.minimum.at(out[:, 0], pools, owners)
    out[:, 1] = np.bincount(pools, minlength=n_pools)
    return out.astype(np.int32)


def upload(tables: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """``tables`` on ``device`` in one host-to-device copy, as views of one buffer.

    A plan has ten small tables; ten pinned copies cost the host ten pinned allocations and ten
    copy launches per step. Each table starts at a multiple of 16 bytes, so every pointer a kernel
    gets is as aligned as a table of its own (the kernels' Triton specializations stay the same).

    The copy is from pinned memory, so it does not make the host wait: vLLM builds the next step's
    metadata (and so this plan) while the GPU still runs the current step (async scheduling), and a
    copy from pageable memory may synchronize with the stream's earlier work. PyTorch's pinned-memory
    cache keeps the buffer until the copy has run. On the CPU the tables are returned as they are.
    """
    if torch.device(device).type != "cuda":
        return {k: t.to(device) for k, t in tables.items()}
    packed, offsets = pack_tables(tables, pin=True)
    return unpack_tables(packed.to(device, non_blocking=True), offsets, tables)


def pack_tables(tables: dict[str, torch.Tensor], pin: bool = False) -> tuple[torch.Tensor, dict[str, int]]:
    """One uint8 host buffer holding every table's bytes, each from a 16-byte boundary, and those
    offsets. ``pin``: in pinned memory where there is some (then a copy from it is asynchronous)."""
    offsets, total = {}, 0
    for k, t in tables.items():
        offsets[k] = total
        total += -(-t.numel() * t.element_size() // 16) * 16
    packed = None
    if pin:
        try:
            packed = torch.empty(max(total, 16), dtype=torch.uint8, pin_memory=True)
        except RuntimeError:  # no pinned memory here (e.g. WSL): a plain buffer
            pass
    if packed is None:
        packed = torch.empty(max(total, 16), dtype=torch.uint8)
    for k, t in tables.items():
        n = t.numel() * t.element_size()
        if n:
            packed[offsets[k]:offsets[k] + n] = t.contiguous().reshape(-1).view(torch.uint8)
    return packed, offsets


def unpack_tables(packed: torch.Tensor, offsets: dict[str, int], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Views of ``packed`` (on any device) shaped and typed as the tables ``like``."""
    return {k: packed[offsets[k]:offsets[k] + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
            for k, t in like.items()}


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
