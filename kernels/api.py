"""Public entry points: ``plan_anchor_prefill`` (host, once per batch) + ``anchor_prefill``.

Example (tests/test_kernels_cpu.py does this on random paged batches)::

    plan = plan_anchor_prefill(cu_seqlens_q_cpu, seq_lens_cpu, AnchorConfig(), H, Hkv, D, "cuda")
    out = anchor_prefill(q, kv_cache, block_table, plan, scale=D ** -0.5)
    # with AnchorConfig(theta=float("inf")) ``out`` equals dense causal attention.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton

from .config import AnchorConfig
from .launch import launch
from .launch_env import LAUNCH_OVERRIDES, lay_over
from .plan import (AnchorPlan, default_rows, default_segment_tokens, default_sparse_rows,  # noqa: F401
                   plan_anchor_prefill, stripe_density_parts)
from .triton_anchor import anchor_kernel
from .triton_common import LOG2E
from .triton_sparse import sparse_kernel
from .triton_stripes import pool_queries_kernel, stripe_pack_kernel, stripe_scan_kernel, tail_hits_kernel


# Lazy softmax rescale threshold in log2 units (0 = rescale every key block). Off: on the H100
# the lazy rescale (tau 8, FlashAttention-4's choice) made the sparse step 7% slower at 128k
# (Llama shape: 35.9 vs 33.5 ms) and 36% slower on SmolLM2 (51.5 vs 37.8 ms over 30 layers);
# the data-dependent branch costs more than the [rows, D] multiply it skips
# (bench/results/ab_lazy_rescale_h100/). A launch option for other GPUs: bench/tune.py --rescale-tau.
RESCALE_TAU = 0.0

# The pack step adds up each call's selected (query, key) pairs in fp64, the density guard's
# numerator, instead of four tensor ops after it. On the H100 that takes about 150 us off the host
# time of an anchored layer call (bench/host_overhead.py: 404 vs 562 us and 425 vs 577 us in two
# runs, bench/results/lease25_h100/host_path*/), and the anchor path is host-bound at 32k; the sum
# costs the pack kernel under 1 us per call, and the GPU suite passes with it (lease25_h100/pack_density/).
# ANCHOR_KERNELS_PACK_COUNTS=0 brings back the tensor ops (plan.stripe_density_parts).
PACK_COUNTS_SELECTED = os.environ.get("ANCHOR_KERNELS_PACK_COUNTS", "1") != "0"


def _launch_opts(head_dim: int, device: torch.device) -> dict:
    """The launch options of :func:`_default_launch_opts`, with ``ANCHOR_KERNELS_LAUNCH``'s laid
    over them on the GPU (``kernels/launch_env.py``)."""
    opts = _default_launch_opts(head_dim, device)
    if device.type != "cuda" or not LAUNCH_OVERRIDES:
        return opts
    return lay_over(opts, LAUNCH_OVERRIDES)


def _default_launch_opts(head_dim: int, device: torch.device) -> dict:
    """Block sizes and num_warps / num_stages per kernel, from bench/tune.py sweeps on the H100.

    The sparse step is latency-bound on its gathers: a pipelined loop of small key blocks wins.
    The CPU interpreter ignores warps and stages. ``RESCALE_TAU`` (the lazy softmax rescale,
    see ``triton_common.online_softmax_update``) is the same everywhere, so the CPU tests run
    the GPU's code path; tests/test_kernels_cpu.py runs the lazy path too.
    """
    rescale = {"RESCALE_TAU": RESCALE_TAU}
    if device.type != "cuda":
        return {"anchor": {"BLOCK_N": 16, **rescale}, "sparse": {"BLOCK_N": 16, **rescale}, "scan": {"BLOCK_N": 32},
                "tail": {"BLOCK_N": 32}}
    # The tail-hits kernel scores one TAIL_BLOCK_TOKENS slice of keys in passes over the tail's
    # query rows: with the whole slice as one key block, each pass loads its query rows once
    # (with 64-key blocks, every pass reloaded them for every block). Its previous launch, the
    # scan's options, stays reachable for A/B runs: --launch tail.BLOCK_N=64 tail.num_warps=4
    # tail.num_stages=3.
    tail = {"BLOCK_N": 256, "num_warps": 8, "num_stages": 1}
    if head_dim > 128:
        return {"anchor": {"BLOCK_N": 32, "num_warps": 8, "num_stages": 2, **rescale},
                "sparse": {"BLOCK_N": 32, "num_warps": 8, "num_stages": 2, **rescale},
                "scan": {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
                "tail": {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}}
    if head_dim <= 64:  # bench/results/tune_smollm2_shape_{h200,rows_h100}.json (9 q / 3 kv heads, 32k)
        # Scan: 128-key blocks, 2 stages, at the 2048-token segments: 1.04 vs 1.60 ms at 131072 tokens,
        # 0.197 vs 0.269 ms at 32768 (lease28_h100/scan_served/, 0.3 s per point); the 0.2 s sweep
        # before it had this launch slower at 32768 (0.291 vs 0.274 ms, lease28_h100/scan_tune/).
        # Served at 128k beside the 64-key, 3-stage launch: median TTFT 716.6 vs 733.8 ms (8 prompts
        # each, interleaved; the speed-up's 95% CI [0.979, 1.090] includes 1).
        return {"anchor": {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2, **rescale},
                "sparse": {"BLOCK_N": 64, "num_warps": 8, "num_stages": 2, **rescale},
                "scan": {"BLOCK_N": 128, "num_warps": 4, "num_stages": 2}, "tail": tail}
    # 256 rows per program (plan.default_rows), two warpgroups: bench/results/sparse_tiles_h100/
    # (32 q / 8 kv heads, 128k, 10% density: anchor 8.9 vs 9.5 ms, sparse 31.7 vs 34.7 ms at 128 rows).
    # Scan: 128-key blocks, unpipelined (num_stages 1): at 128k and the default 4096-token segments
    # 3.89 vs 5.64 ms for the 64-key, 3-stage launch; the fastest of the 48 swept, 3.86 ms, is this
    # launch at 2048-token segments (lease28_h100/scan_tune/).
    return {"anchor": {"BLOCK_N": 64, "num_warps": 8, "num_stages": 2, **rescale},
            "sparse": {"BLOCK_N": 128, "num_warps": 8, "num_stages": 3, **rescale},
            "scan": {"BLOCK_N": 128, "num_warps": 4, "num_stages": 1}, "tail": tail}


@dataclass
class AnchorWorkspace:
    """Every intermediate of one call, kept so tests and benchmarks can inspect each step."""

    m: torch.Tensor  # [T, H] fp32, anchor row max in log2 units
    l: torch.Tensor  # [T, H] fp32
    acc: torch.Tensor  # [T, H, BLOCK_D] fp32
    qsum: torch.Tensor  # [n_tiles, 2, H, BLOCK_D] fp32, before / after the tile's pool edge
    msum: torch.Tensor  # [n_tiles, 2, H] fp32
    qbar: torch.Tensor  # [n_pools, H, BLOCK_D] fp32, mean query of each pooling block
    abar: torch.Tensor  # [n_pools, H] fp32, mean anchor (log2) of each pooling block
    scratch: torch.Tensor  # [NUM_SEL, capacity] int32
    tail_hits: torch.Tensor  # [NUM_SEL, capacity] int8, 1 where a tail query keeps the column
    lists: torch.Tensor  # [NUM_SEL, capacity] int32, compacted stripe positions per item
    slots: torch.Tensor  # [NUM_SEL, capacity] int32, the same keys as cache slots
    seg_counts: torch.Tensor  # [n_segs, NUM_SEL] int32
    counts: torch.Tensor  # [n_items, NUM_SEL] int32
    selected: torch.Tensor  # [] fp64: the call's selected (query, key) pairs, all selector heads

    @property
    def num_sel(self) -> int:
        return self.lists.shape[0]


class _Call:
    """Argument bundle shared by the three launches of one call."""

    def __init__(self, q, kv_cache, block_table, plan: AnchorPlan, scale: float):
        if q.dim() != 3 or q.stride(-1) != 1:
            raise ValueError(f"q must be [tokens, heads, head_dim] with unit last stride, got {tuple(q.shape)}")
        if kv_cache.dim() != 4 or kv_cache.stride(-1) != 1:
            raise ValueError("kv_cache must be the logical [num_blocks, num_kv_heads, block_size, 2*head_dim] view")
        self.num_tokens, self.num_heads, self.head_dim = q.shape
        _, self.num_kv_heads, self.page, two_d = kv_cache.shape
        if two_d != 2 * self.head_dim:
            raise ValueError(f"kv_cache last dim {two_d} != 2*head_dim {2 * self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} query heads are not a multiple of {self.num_kv_heads} KV heads")
        if q.dtype != kv_cache.dtype:
            raise ValueError(f"q dtype {q.dtype} != kv_cache dtype {kv_cache.dtype} (fp8 caches are not supported)")
        if plan.num_tokens != self.num_tokens:
            raise ValueError(f"plan covers {plan.num_tokens} tokens, q has {self.num_tokens}")
        if (plan.num_heads, plan.num_kv_heads) != (self.num_heads, self.num_kv_heads):
            raise ValueError(f"plan was made for {plan.num_heads}/{plan.num_kv_heads} heads, "
                             f"q/kv_cache have {self.num_heads}/{self.num_kv_heads}")
        self.q, self.kv, self.bt, self.plan, self.cfg = q, kv_cache, block_table, plan, plan.cfg
        self.rep = self.num_heads // self.num_kv_heads
        self.block_d = triton.next_power_of_2(self.head_dim)
        self.qk_scale = scale * LOG2E
        self.sel_heads = self.rep if self.cfg.share_gqa else 1
        self.num_sel = self.num_heads // self.sel_heads
        self.opts = _launch_opts(self.head_dim, q.device)

    def kv_args(self):
        kv = self.kv
        return (kv, kv.stride(0), kv.stride(1), kv.stride(2), self.page, self.bt, self.bt.stride(0))


def _workspace_shapes(num_tokens: int, num_heads: int, num_sel: int, block_d: int,
                      plan: AnchorPlan) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{field: (shape, dtype)}`` of one call's :class:`AnchorWorkspace`: what
    :func:`new_workspace` allocates and :func:`workspace_nbytes` counts, from one definition."""
    f32, i32 = torch.float32, torch.int32
    # a multiple of 16 keeps the lists' row stride in one Triton specialization (no recompiles)
    cap = max(16, -(-plan.list_capacity // 16) * 16)
    T, H, BD = num_tokens, num_heads, block_d
    return dict(
        m=((T, H), f32), l=((T, H), f32), acc=((T, H, BD), f32),
        qsum=((plan.num_tiles, 2, H, BD), f32), msum=((plan.num_tiles, 2, H), f32),
        qbar=((plan.num_pools, H, BD), f32), abar=((plan.num_pools, H), f32),
        scratch=((num_sel, cap), i32), lists=((num_sel, cap), i32),
        # read only where a tail block wrote it (the scan masks the load by the item's tail)
        tail_hits=((num_sel, cap if plan.num_tail_blocks else 16), torch.int8),
        slots=((num_sel, cap), i32),
        seg_counts=((plan.num_segments, num_sel), i32), counts=((plan.num_items, num_sel), i32),
        selected=((), torch.float64),
    )


def new_workspace(call: _Call) -> AnchorWorkspace:
    shapes = _workspace_shapes(call.num_tokens, call.num_heads, call.num_sel, call.block_d, call.plan)
    return AnchorWorkspace(**{name: torch.empty(shape, dtype=dtype, device=call.q.device)
                              for name, (shape, dtype) in shapes.items()})


def workspace_nbytes(plan: AnchorPlan, head_dim: int) -> int:
    """Bytes of the workspace a call with this plan allocates (:func:`new_workspace`)."""
    # plan.pack query heads share one stripe list (plan.heads_per_program): one selector per pack
    shapes = _workspace_shapes(plan.num_tokens, plan.num_heads, plan.num_heads // plan.pack,
                               triton.next_power_of_2(head_dim), plan)
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes.values())


def step_workspace_nbytes(cfg: AnchorConfig, num_heads: int, num_kv_heads: int, head_dim: int,
                          max_tokens: int, max_model_len: int) -> int:
    """Bytes of the workspace of the largest usual step: one sequence's last chunk of
    ``max_tokens`` queries (vLLM's ``max_num_batched_tokens``) ending at ``max_model_len``.

    The workspace grows with the chunk (fp32 anchor state per query) and with the context (the
    stripe lists hold every candidate key of each group), so a step of one long prompt's last
    chunk needs the most; a batch of several shorter prefills needs no more than a few partial
    groups' lists beyond it. The plan is built on the host with the GPU's launch sizes.
    """
    tokens = min(max_tokens, max_model_len)
    plan = plan_anchor_prefill([0, tokens], [max_model_len], cfg, num_heads, num_kv_heads, head_dim, "cpu",
                               rows=default_rows(head_dim, "cuda"), sparse_rows=default_sparse_rows(head_dim, "cuda"),
                               segment_tokens=default_segment_tokens(head_dim, "cuda"))
    return workspace_nbytes(plan, head_dim)


def shared_workspace(cache: dict, call: _Call) -> AnchorWorkspace:
    """A workspace from ``cache`` for this call's shape, made by the first call that needs it.

    For the layers of one step, which share a plan and so every buffer shape: they run one
    after another on one stream, so a layer's kernels overwrite the previous layer's buffers
    only after that layer's kernels have read them, and each step rewrites every entry it
    reads. One allocation per step instead of eleven per layer call (host time: the anchor
    path is host-bound on short contexts, bench/results/lease20_h100/walk/). The cache must not
    outlive its plan.
    """
    # the plan sizes the buffers too: a step can hold plans of two head shapes (a draft model's
    # layers beside the target's), and their buffers must not be shared
    key = (id(call.plan), call.num_heads, call.num_sel, call.block_d, call.q.device)
    ws = cache.get(key)
    if ws is None:
        ws = cache[key] = new_workspace(call)
    return ws


def run_anchor_step(call: _Call, ws: AnchorWorkspace) -> None:
    q, cfg, plan = call.q, call.cfg, call.plan
    if plan.num_tiles == 0:
        return
    launch(anchor_kernel, (plan.num_tiles, call.num_sel),
        q, q.stride(0), q.stride(1), *call.kv_args(), plan.tiles,
        ws.m, ws.l, ws.acc, ws.qsum, ws.msum,
        call.qk_scale, cfg.sink_tokens, cfg.local_tokens, cfg.group_size, cfg.pool_block,
        NUM_HEADS=call.num_heads, KV_REP=call.rep, HEADS=plan.pack,
        HEADS_PAD=max(16, triton.next_power_of_2(plan.pack)),
        HEAD_DIM=call.head_dim, BLOCK_D=call.block_d, ROWS=plan.rows, **call.opts["anchor"])


def pooled_queries(call: _Call, ws: AnchorWorkspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean query ``[n_pools, H, BLOCK_D]`` and mean anchor ``[n_pools, H]`` (log2) of every
    pooling block, from the anchor step's per-tile sums: one launch (it replaced eight torch ops)."""
    plan = call.plan
    qbar, abar = ws.qbar, ws.abar  # every entry rewritten below
    head_block = min(triton.next_power_of_2(call.num_heads), max(1, 4096 // call.block_d))
    launch(pool_queries_kernel, (plan.num_pools, triton.cdiv(call.num_heads, head_block)),
        ws.qsum, ws.msum, plan.pool_tiles, plan.tiles, plan.tile_pool_next, plan.pool_rows, qbar, abar,
        ws.selected, NUM_HEADS=call.num_heads, HEAD_BLOCK=head_block, BLOCK_D=call.block_d,
        COUNT_SELECTED=PACK_COUNTS_SELECTED)
    return qbar, abar


def run_stripe_step(call: _Call, ws: AnchorWorkspace) -> None:
    q, plan, cfg = call.q, call.plan, call.cfg
    if plan.num_items == 0:
        return
    if plan.num_segments:
        qbar, abar = pooled_queries(call, ws)
        sel_pad = triton.next_power_of_2(call.sel_heads)
        rows = max(16, triton.next_power_of_2(cfg.pools_per_group) * sel_pad)
        theta = cfg.theta * LOG2E if math.isfinite(cfg.theta) else cfg.theta
        consts = dict(NUM_HEADS=call.num_heads, KV_REP=call.rep, SEL_HEADS=call.sel_heads,
                      SEL_HEADS_PAD=sel_pad, ROWS=rows, HEAD_DIM=call.head_dim, BLOCK_D=call.block_d)
        if plan.num_tail_blocks:
            launch(tail_hits_kernel, (plan.num_tail_blocks, call.num_sel),
                q, q.stride(0), q.stride(1), ws.m, *call.kv_args(), plan.items, plan.tail_blocks,
                ws.tail_hits, ws.tail_hits.stride(0), call.qk_scale, theta, **consts, **call.opts["tail"])
        launch(stripe_scan_kernel, (plan.num_scan_segments, call.num_sel),
            qbar, abar, *call.kv_args(), plan.items, plan.segments, plan.seg_twin, ws.tail_hits,
            ws.scratch, ws.scratch.stride(0), ws.seg_counts, call.num_sel,
            call.qk_scale, theta, **consts, **call.opts["scan"])
    elif PACK_COUNTS_SELECTED:  # no candidates anywhere: no pooling launch to zero the count
        ws.selected.zero_()
    launch(stripe_pack_kernel, (plan.num_items, call.num_sel),
        plan.items, plan.segments, ws.scratch, ws.lists, ws.slots, ws.lists.stride(0), ws.seg_counts,
        ws.counts, call.num_sel, call.bt, call.bt.stride(0), call.page, plan.item_queries, ws.selected,
        BLOCK=1024 if call.q.is_cuda else 64, COUNT_SELECTED=PACK_COUNTS_SELECTED)


def density_parts(plan: AnchorPlan, ws: AnchorWorkspace) -> tuple[torch.Tensor, float]:
    """``(selected, candidates)`` of a call after its stripe step: the selected (query, key) pairs,
    all selector heads together, as a 0-dim fp64 device tensor (no synchronization), and the
    candidate pairs, a host number. With ``PACK_COUNTS_SELECTED`` the first is the sum the pack
    step made (no tensor op); otherwise ``plan.stripe_density_parts`` computes it from the counts."""
    if PACK_COUNTS_SELECTED:
        return ws.selected, plan.candidate_pairs * ws.counts.shape[1]
    return stripe_density_parts(plan, ws.counts)


def set_stripe_lists(call: _Call, ws: AnchorWorkspace, lists: dict[tuple[int, int], torch.Tensor]) -> None:
    """Install caller-chosen stripe lists ``{(item, selector head): positions}`` (ascending,
    inside the item's candidate range) in place of step 2's, e.g. to test step 3 alone."""
    items = call.plan.items_cpu
    for (item, hs), pos in lists.items():
        seq, _cand_end, off = items[item, :3].tolist()
        pos = pos.to(device=ws.lists.device, dtype=torch.long)
        pages = call.bt[seq].long()[pos // call.page]
        ws.lists[hs, off:off + pos.numel()] = pos.to(torch.int32)
        ws.slots[hs, off:off + pos.numel()] = (pages * call.page + pos % call.page).to(torch.int32)
        ws.counts[item, hs] = pos.numel()
    ws.selected.copy_(stripe_density_parts(call.plan, ws.counts)[0])  # what the pack step would sum


def run_sparse_step(call: _Call, ws: AnchorWorkspace, out: torch.Tensor) -> None:
    q, plan = call.q, call.plan
    if plan.num_sparse_tiles == 0:
        return
    launch(sparse_kernel, (plan.num_sparse_tiles, call.num_sel),
        q, q.stride(0), q.stride(1), *call.kv_args(), plan.sparse_tiles, plan.items,
        ws.slots, ws.slots.stride(0), ws.counts, call.num_sel,
        ws.m, ws.l, ws.acc, out, out.stride(0), out.stride(1), call.qk_scale,
        NUM_HEADS=call.num_heads, KV_REP=call.rep, HEADS=plan.pack, SEL_DIV=call.sel_heads,
        LINEAR_SLOTS=call.kv.stride(0) == call.page * call.kv.stride(2),
        HEAD_DIM=call.head_dim, BLOCK_D=call.block_d, ROWS=plan.sparse_rows, **call.opts["sparse"])


def anchor_prefill(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                   plan: AnchorPlan, scale: float, out: torch.Tensor | None = None,
                   workspace: AnchorWorkspace | None = None) -> torch.Tensor:
    """AnchorAttention for a varlen batch of prefill chunks over a paged KV cache.

    Parameters
    ----------
    q:
        ``[T, H, D]`` queries of the chunks, concatenated in ``plan`` order.
    kv_cache:
        vLLM FlashAttention cache of one layer, logical ``[num_blocks, Hkv, block_size, 2*D]``
        (any stride order). The chunks' own K/V must already be written into it.
    block_table:
        ``[B, max_blocks]`` int32 page table, one row per sequence of the plan.
    plan:
        From :func:`plan_anchor_prefill`; can be reused by every layer of a step.
    scale:
        Softmax scale (usually ``D ** -0.5``).
    out:
        Optional ``[T, H, D]`` output (e.g. a slice of vLLM's output buffer).
    workspace:
        Optional :class:`AnchorWorkspace` to fill (and inspect afterwards).

    Returns
    -------
    ``out``: attention over sink + local window + the selected stripe columns.
    """
    call = _Call(q, kv_cache, block_table, plan, scale)
    if out is None:
        out = torch.empty_like(q)
    ws = workspace if workspace is not None else new_workspace(call)
    run_anchor_step(call, ws)
    run_stripe_step(call, ws)
    run_sparse_step(call, ws, out)
    return out


_warmed: set = set()


def warm_up(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, cfg: AnchorConfig,
            device: torch.device | str = "cuda", page: int = 16) -> bool:
    """Compile every kernel for this model shape before the first request needs it.

    Triton compiles on first use (seconds), which would otherwise land in the first long
    request's TTFT. Runs one small prefill (two groups plus a partial one) through a paged cache
    laid out like vLLM's, for block-table row strides of both divisibilities (Triton specializes
    integer arguments on divisibility by 16). Returns False when this shape was already warm.
    """
    key = (num_heads, num_kv_heads, head_dim, dtype, cfg, str(device), page)
    if key in _warmed:
        return False
    n = 2 * cfg.group_size + cfg.pool_block + 3
    pages = -(-n // page)
    gen = torch.Generator(device=device).manual_seed(0)
    kv = torch.randn(pages, page, num_kv_heads, 2 * head_dim, device=device, generator=gen).to(dtype)
    kv = kv.permute(0, 2, 1, 3)  # logical [blocks, Hkv, page, 2D] over NHD memory, as vLLM's
    qkv = torch.randn(n, (num_heads + 2 * num_kv_heads) * head_dim, device=device, generator=gen).to(dtype)
    q = qkv[:, : num_heads * head_dim].view(n, num_heads, head_dim)  # strided like vLLM's query
    plan = plan_anchor_prefill([0, n], [n], cfg, num_heads, num_kv_heads, head_dim, device)
    for width in (pages + (-pages) % 16, pages + (-pages) % 16 + 1):
        bt = torch.zeros(1, width, dtype=torch.int32, device=device)
        bt[0, :pages] = torch.arange(pages, dtype=torch.int32, device=device)
        anchor_prefill(q, kv, bt, plan, head_dim ** -0.5)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    _warmed.add(key)
    return True
