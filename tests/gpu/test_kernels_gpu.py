"""GPU tests (H100): bf16 / fp16, head_dim 64 / 128 / 256, realistic group sizes."""
from __future__ import annotations

import pytest
import torch

from paged_case import (assert_close_per_sequence, item_owners, make_case, plant_needle, selections_by_owner,
                        stripe_lists)
from vllm_anchor.kernels import AnchorConfig, anchor_prefill, new_workspace, plan_anchor_prefill
from vllm_anchor.kernels import reference as R
from vllm_anchor.kernels.api import _Call, run_anchor_step, run_sparse_step, run_stripe_step, set_stripe_lists

pytestmark = pytest.mark.gpu
INF = float("inf")
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
CFG = dict(sink_tokens=64, local_tokens=128, group_size=512, pool_block=128)
CHUNKS = [(0, 1500), (700, 901), (2048, 513), (4000, 1)]


def _run(case, cfg, sparse_rows=None):
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cuda",
                               sparse_rows=sparse_rows)
    out = torch.full_like(case.q, float("nan"))
    anchor_prefill(case.q, case.kv_cache, case.block_table, plan, case.scale, out=out)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("share", [True, False])
def test_theta_inf_equals_dense(dtype, head_dim, share):
    case = make_case(CHUNKS, 8, 2, head_dim, dtype=dtype, device="cuda", seed=head_dim)
    out = _run(case, AnchorConfig(theta=INF, share_gqa=share, **CFG))
    assert_close_per_sequence(case, out, lambda q, k, v, p: R.dense_causal_attention(q, k, v, p, case.scale), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("sparse_rows", [64, 256])
def test_sparse_tile_rows_keep_theta_inf_dense(dtype, head_dim, sparse_rows):
    """The sparse step's own tile size (bench/tune.py --kernels sparse) is a speed option only."""
    case = make_case(CHUNKS, 8, 2, head_dim, dtype=dtype, device="cuda", seed=11 + head_dim)
    out = _run(case, AnchorConfig(theta=INF, **CFG), sparse_rows=sparse_rows)
    assert_close_per_sequence(case, out, lambda q, k, v, p: R.dense_causal_attention(q, k, v, p, case.scale), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_theta_neg_inf_equals_anchor_region(dtype, head_dim):
    cfg = AnchorConfig(theta=-INF, **CFG)
    case = make_case(CHUNKS, 6, 3, head_dim, dtype=dtype, device="cuda", seed=1 + head_dim)

    def ref(q, k, v, p):
        return R.masked_attention(q, k, v, R.anchor_region_mask(p, q.shape[0], k.shape[0], cfg, q.device),
                                  case.scale)
    assert_close_per_sequence(case, _run(case, cfg), ref, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_sparse_step_on_random_selection(dtype, head_dim):
    cfg = AnchorConfig(theta=0.0, share_gqa=True, **CFG)
    case = make_case([(0, 1200), (600, 700)], 8, 2, head_dim, dtype=dtype, device="cuda", seed=7)
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cuda")
    call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
    ws = new_workspace(call)
    run_anchor_step(call, ws)
    gen = torch.Generator().manual_seed(3)
    picks = {}
    for i, (_seq, cand_end, off, *_r) in enumerate(plan.items_cpu.tolist()):
        for h in range(ws.num_sel):
            picks[(i, h)] = (torch.rand(cand_end - cfg.sink_tokens, generator=gen) < 0.3).nonzero().flatten() \
                + cfg.sink_tokens
    set_stripe_lists(call, ws, picks)
    out = torch.full_like(case.q, float("nan"))
    run_sparse_step(call, ws, out)
    owners = item_owners(case, cfg)
    assert len(owners) == plan.num_items and any(o[2] for o in owners), "no tail list to test"
    for s in range(case.num_seqs):
        k, v = case.seq_kv(s)
        q, p0 = case.seq_q(s).float(), case.q_start(s)
        lists = {}
        for i in (i for i, owner in enumerate(owners) if owner[0] == s):
            lists[i] = torch.zeros(ws.num_sel, k.shape[0], dtype=torch.bool, device="cuda")
            for h in range(ws.num_sel):
                lists[i][h, picks[(i, h)].cuda()] = True
        sel, tail = selections_by_owner(owners, lists, s)
        mask = R.selection_to_key_mask(sel, p0, q.shape[0], q.shape[1], cfg, tail)
        ref = R.masked_attention(q, k, v, mask | R.anchor_region_mask(p0, q.shape[0], k.shape[0], cfg, "cuda"),
                                 case.scale)
        got = out[case.query_start_loc[s]:case.query_start_loc[s + 1]]
        assert R.relative_error(got, ref) < TOL[dtype]


def test_default_config_partial_selection_close_to_reference():
    """Full pipeline, default sizes, 8k tokens with stripes: output near the fp32 reference.

    Strong columns score about 9 nats above noise and the pooled anchor sits about 4 nats above
    them, so theta = 6 keeps the strong columns and drops the noise.
    """
    cfg = AnchorConfig(theta=6.0)
    case = make_case([(0, 8192)], 8, 2, 128, dtype=torch.float16, device="cuda", seed=5,
                     strong_frac=0.1, strong_gain=3.0)
    out = _run(case, cfg)
    k, v = case.seq_kv(0)
    q = case.q.float()
    ref, mask = R.anchor_attention(q, k, v, 0, case.scale, cfg)
    cand = R.candidate_mask(0, q.shape[0], k.shape[0], cfg, "cuda")
    frac = float(mask.sum() / (cand.sum() * q.shape[1]))
    assert 0.03 < frac < 0.5, frac
    assert R.relative_error(out, ref) < 5e-3


@pytest.mark.parametrize("heads", [(9, 3, 64), (10, 2, 128), (12, 2, 256)], ids=["gqa3-d64", "gqa5-d128", "gqa6-d256"])
def test_odd_gqa_ratios_partial_selection_match_reference(heads):
    """Query heads per KV head that are not a power of two: 42-, 25- and 10-token tiles that
    straddle pooling blocks, in bf16, against the fp32 reference of the whole algorithm."""
    cfg = AnchorConfig(theta=6.0, **CFG)
    case = make_case(CHUNKS, *heads, dtype=torch.bfloat16, device="cuda", seed=sum(heads),
                     strong_frac=0.1, strong_gain=3.0)
    out = _run(case, cfg)
    assert_close_per_sequence(case, out, lambda q, k, v, p: R.anchor_attention(q, k, v, p, case.scale, cfg)[0],
                              TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_tail_keeps_the_needle_only_the_last_query_wants(dtype, head_dim):
    """tests/test_kernels_cpu.py's needle at serving sizes and dtypes, default theta: pooled
    scoring drops it, the default tail keeps it (for every KV head's list)."""
    case = make_case([(0, 1500)], 9, 3, head_dim, dtype=dtype, device="cuda", seed=head_dim)
    needle = 300  # a candidate of the last group [1024, 1500): [64, 896)
    plant_needle(case, 0, needle, others_lo=1024)
    found = {}
    for tail in (0, 64):
        cfg = AnchorConfig(tail_tokens=tail, **CFG)
        plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cuda")
        call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
        ws = new_workspace(call)
        run_anchor_step(call, ws)
        run_stripe_step(call, ws)
        found[tail] = [needle in lst for lst in stripe_lists(ws, plan, plan.num_items - 1)]
        if tail:  # the group's rows before the tail keep the pooled list, without the needle
            assert [needle in lst for lst in stripe_lists(ws, plan, plan.num_items - 2)] == [False] * 3
    assert found == {0: [False] * 3, 64: [True] * 3}


@pytest.mark.parametrize("heads", [(9, 3, 64), (32, 8, 128)], ids=["smollm2-shape", "llama-shape"])
def test_pack_step_counts_the_selected_pairs_on_the_gpu(heads, monkeypatch):
    """``PACK_COUNTS_SELECTED`` (on by default since it passed here, lease25_h100): the pack step's fp64
    atomics give the density guard's numerator equal to the host count from the lists' lengths,
    over a stale workspace value, with the GPU's launch sizes and many items."""
    from vllm_anchor.kernels import api
    from vllm_anchor.kernels.plan import stripe_density_parts
    monkeypatch.setattr(api, "PACK_COUNTS_SELECTED", True)
    h, hkv, d = heads
    case = make_case(CHUNKS, h, hkv, d, dtype=torch.bfloat16, device="cuda", seed=11,
                     strong_frac=0.2, strong_gain=1.5)
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, AnchorConfig(theta=2.0, **CFG), *case.dims, "cuda")
    call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
    ws = new_workspace(call)
    ws.selected.fill_(1e9)
    run_anchor_step(call, ws)
    run_stripe_step(call, ws)
    selected, total = api.density_parts(plan, ws)
    want, _ = stripe_density_parts(plan, ws.counts)
    assert float(selected) == float(want) and 0 < float(selected) < total


@pytest.mark.parametrize("heads", [(9, 3, 64), (32, 8, 128)], ids=["smollm2-shape", "llama-shape"])
def test_direct_launch_matches_triton_s_own_launch_bit_for_bit(heads, monkeypatch):
    """kernels.launch: after the first call of each kernel, later "layers" (other queries, other KV
    caches, one shared workspace, as the backend runs a step) launch the compiled kernels directly;
    every output equals the same calls through Triton's own launch path, bit for bit."""
    from vllm_anchor.kernels import launch as L
    from vllm_anchor.kernels.api import shared_workspace
    h, hkv, d = heads
    cfg = AnchorConfig(theta=4.0, **CFG)
    layers = [make_case(CHUNKS, h, hkv, d, dtype=torch.bfloat16, device="cuda", seed=40 + i,
                        strong_frac=0.2, strong_gain=1.5) for i in range(3)]
    plan = plan_anchor_prefill(layers[0].query_start_loc, layers[0].seq_lens, cfg, *layers[0].dims, "cuda")

    def step(cache):
        monkeypatch.setattr(L, "LAUNCHES", cache)
        workspaces, outs = {}, []
        for case in layers:
            call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
            ws = shared_workspace(workspaces, call)
            out = torch.full_like(case.q, float("nan"))
            run_anchor_step(call, ws)
            run_stripe_step(call, ws)
            run_sparse_step(call, ws, out)
            outs.append(out)
        torch.cuda.synchronize()
        return outs

    want = step(L.LaunchCache(enabled=False))
    direct = L.LaunchCache(enabled=True)
    got = step(direct)
    assert direct.hits >= 2 * 5 and direct.misses <= 6  # every kernel direct from the second layer on
    for w, g in zip(want, got):
        assert torch.isfinite(g).all()
        assert torch.equal(w, g)


def test_plan_tables_reach_the_gpu_whole_and_16_byte_aligned():
    """kernels.plan.upload sends the plan's ten tables in one copy, as views of one buffer: each
    must equal the CPU plan's and start on a 16-byte boundary (the kernels' Triton specializations
    assume aligned pointers, as separate allocations gave)."""
    from vllm_anchor.kernels.plan import default_rows, default_segment_tokens, default_sparse_rows
    cfg = AnchorConfig()
    kw = dict(rows=default_rows(64, "cuda"), sparse_rows=default_sparse_rows(64, "cuda"),
              segment_tokens=default_segment_tokens(64, "cuda"))
    args = ([0, 30000, 30001, 32000], [30000, 65536, 131000], cfg, 9, 3, 64)
    gpu = plan_anchor_prefill(*args, "cuda", **kw)
    cpu = plan_anchor_prefill(*args, "cpu", **kw)
    torch.cuda.synchronize()
    for name in ("tiles", "sparse_tiles", "items", "segments", "tail_blocks", "seg_twin", "pool_rows",
                 "tile_pool_next", "pool_tiles", "item_queries"):
        g = getattr(gpu, name)
        assert g.is_cuda and g.data_ptr() % 16 == 0, name
        assert torch.equal(g.cpu(), getattr(cpu, name)), name


def test_launch_options_that_do_not_fit_raise_a_triton_error(monkeypatch):
    """ANCHOR_KERNELS_LAUNCH may ask for blocks too large for shared memory: 256-key blocks of
    head_dim 256, 8 stages deep, need over 1 MiB against the H100's 228 KiB. Triton raises its own
    error class for that (OutOfResources, not a RuntimeError): the backend's warm-up turns it into
    a start-up error naming the variable, and its forward into stock attention, only because it
    catches TritonError (tests/test_vllm_plugin.py mocks it; this is the real one)."""
    from triton.errors import TritonError

    from vllm_anchor.kernels import api, warm_up
    big = {"BLOCK_N": 256, "num_stages": 8}
    monkeypatch.setattr(api, "LAUNCH_OVERRIDES", {"anchor": big, "sparse": big})
    monkeypatch.setattr(api, "_warmed", set())  # compile even where an earlier test warmed the shape
    with pytest.raises(TritonError):
        warm_up(8, 2, 256, torch.bfloat16, AnchorConfig(), "cuda")
