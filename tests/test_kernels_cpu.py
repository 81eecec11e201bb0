"""Triton kernels vs the PyTorch reference (CPU: TRITON_INTERPRET=1, small shapes, fp32/fp16)."""
from __future__ import annotations

import math

import pytest
import torch

from paged_case import (assert_close_per_sequence, item_owners, make_case, plant_needle, selections_by_owner,
                        stripe_lists)
from vllm_anchor.kernels import AnchorConfig, anchor_prefill, new_workspace, plan_anchor_prefill
from vllm_anchor.kernels import reference as R
from vllm_anchor.kernels.plan import ITEM_NSEG, ITEM_NTAIL, ITEM_POOL0, ITEM_SEG0
from vllm_anchor.kernels.api import (_Call, pooled_queries, run_anchor_step, run_sparse_step, run_stripe_step,
                                     set_stripe_lists)

INF = float("inf")
TOL = {torch.float32: 2e-5, torch.float16: 3e-3}
# tail_tokens 20: the scored-one-by-one tail spans two pooling blocks, and a group edge in some chunks
SMALL = dict(sink_tokens=8, local_tokens=8, group_size=64, pool_block=16, tail_tokens=20)


def small_cfg(**kw) -> AnchorConfig:
    return AnchorConfig(**{**SMALL, **kw})


def run(case, cfg, workspace=None, rows=None, sparse_rows=None):
    """Plan + anchor_prefill into a NaN-poisoned output; asserts every element was written."""
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cpu", rows=rows,
                               sparse_rows=sparse_rows)
    out = torch.full_like(case.q, float("nan"))
    anchor_prefill(case.q, case.kv_cache, case.block_table, plan, case.scale, out=out, workspace=workspace)
    assert torch.isfinite(out).all(), "output rows left unwritten (NaN poison survived)"
    return out, plan


LENGTHS = [
    [(0, 1)], [(0, 17)], [(0, 63)], [(0, 65)], [(0, 200)],
    [(130, 1)], [(64, 64)], [(50, 33), (0, 150), (127, 2)],
]


@pytest.mark.parametrize("chunks", LENGTHS, ids=lambda c: "+".join(f"{p}:{n}" for p, n in c))
@pytest.mark.parametrize("heads,dtype", [((4, 4), torch.float32), ((6, 2), torch.float16),
                                          ((8, 2), torch.float32), ((8, 1), torch.float16)],
                         ids=["gqa1-fp32", "gqa3-fp16", "gqa4-fp32", "gqa8-fp16"])
def test_theta_inf_equals_dense(chunks, heads, dtype):
    case = make_case(chunks, *heads, head_dim=16, dtype=dtype, seed=hash(str(chunks)) % 1000)
    out, _ = run(case, small_cfg(theta=INF))
    assert_close_per_sequence(case, out, lambda q, k, v, p: R.dense_causal_attention(q, k, v, p, case.scale), TOL[dtype])


@pytest.mark.parametrize("share", [True, False])
def test_theta_neg_inf_equals_anchor_region_only(share):
    cfg = small_cfg(theta=-INF, share_gqa=share)
    case = make_case([(40, 90), (0, 150)], 6, 2, 32, seed=3, strong_frac=0.3, strong_gain=1.5)
    out, _ = run(case, cfg)

    def anchor_only(q, k, v, p):
        return R.masked_attention(q, k, v, R.anchor_region_mask(p, q.shape[0], k.shape[0], cfg), case.scale)
    assert_close_per_sequence(case, out, anchor_only, TOL[torch.float32])


def test_head_dim_not_power_of_two():
    case = make_case([(0, 100)], 4, 2, 24, seed=4)
    out, _ = run(case, small_cfg(theta=INF))
    assert_close_per_sequence(case, out, lambda q, k, v, p: R.dense_causal_attention(q, k, v, p, case.scale), TOL[torch.float32])


def _steps(case, cfg, rows=None):
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cpu", rows=rows)
    call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
    ws = new_workspace(call)
    run_anchor_step(call, ws)
    return plan, call, ws


def test_anchor_state_matches_reference():
    cfg = small_cfg(theta=2.0)
    case = make_case([(30, 100), (0, 70)], 6, 2, 16, seed=5, strong_frac=0.2, strong_gain=1.5)
    plan, call, ws = _steps(case, cfg)
    for s in range(case.num_seqs):
        k, v = case.seq_kv(s)
        rows = slice(case.query_start_loc[s], case.query_start_loc[s + 1])
        st = R.anchor_step(case.seq_q(s).float(), k, v, case.q_start(s), case.scale, cfg)
        m_nats = ws.m[rows] / math.log2(math.e)
        torch.testing.assert_close(m_nats, st.m, rtol=1e-5, atol=1e-5)
        # same state up to the common factor exp(m): compare the normalized partial outputs
        torch.testing.assert_close(ws.acc[rows, :, :16] / ws.l[rows, :, None],
                                   st.acc / st.l[..., None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_stripe_lists_match_reference(share):
    cfg = small_cfg(theta=2.0, share_gqa=share)
    chunks = [(0, 256), (100, 90)]
    case = make_case(chunks, 6, 2, 16, seed=6, strong_frac=0.25, strong_gain=1.6)
    plan, call, ws = _steps(case, cfg)
    run_stripe_step(call, ws)
    items = plan.items_cpu.tolist()
    owners = item_owners(case, cfg)
    assert len(owners) == plan.num_items
    assert any(o[2] for o in owners), "no tail item: the tail's lists would go untested"
    total_sel = total_cand = 0
    refs = {}
    for s in range(case.num_seqs):
        k, _ = case.seq_kv(s)
        rows = slice(case.query_start_loc[s], case.query_start_loc[s + 1])
        m_nats = ws.m[rows] / math.log2(math.e)
        args = (case.seq_q(s).float(), k, m_nats, case.q_start(s), case.scale, cfg)
        refs[s] = (R.stripe_step(*args), R.tail_stripe_step(*args))
    for item, (s, g, is_tail, lo, hi) in enumerate(owners):
        mask = refs[s][is_tail][g]
        seq, cand_end, off = items[item][:3]
        assert seq == s and cand_end == cfg.candidate_end(g)
        assert items[item][ITEM_NTAIL] == (hi - lo if is_tail else 0)
        assert int(plan.item_queries_cpu[item]) == hi - lo
        for h in range(mask.shape[0]):
            got = ws.lists[h, off:off + int(ws.counts[item, h])].tolist()
            want = mask[h].nonzero().flatten().tolist()
            assert got == want, f"seq {s} group {g} tail {is_tail} selector head {h}"
            pos = torch.tensor(got, dtype=torch.long)
            page = case.kv_cache.shape[2]
            slots = case.block_table[s].long()[pos // page] * page + pos % page
            assert ws.slots[h, off:off + len(got)].tolist() == slots.tolist()
            total_sel += len(got)
            total_cand += cand_end - cfg.sink_tokens
    item = len(owners)
    assert item == plan.num_items
    # the structured input must give a partial selection, or this test checks nothing
    assert 0.05 < total_sel / total_cand < 0.8, total_sel / total_cand


@pytest.mark.parametrize("chunks,theta", [([(0, 256), (100, 90)], 2.0), ([(40, 90), (0, 150), (7, 3)], INF),
                                          ([(0, 20), (3, 9)], 2.0)],
                         ids=["partial", "all-kept", "no-candidates"])
def test_pack_step_counts_the_selected_pairs_the_guard_reads(chunks, theta, monkeypatch):
    """With ``PACK_COUNTS_SELECTED``, the pack step's fp64 sum of selected (query, key) pairs (the
    density guard's numerator, read back without tensor ops) equals the count computed on the host
    from the lists' lengths, over a workspace poisoned with a stale value, including a batch with
    no stripe candidates at all."""
    from vllm_anchor.kernels import api
    from vllm_anchor.kernels.api import density_parts
    from vllm_anchor.kernels.plan import stripe_density_parts
    monkeypatch.setattr(api, "PACK_COUNTS_SELECTED", True)
    cfg = small_cfg(theta=theta)
    case = make_case(chunks, 6, 2, 16, seed=8, strong_frac=0.25, strong_gain=1.6)
    plan, call, ws = _steps(case, cfg)
    ws.selected.fill_(1e9)  # a previous layer's count: the stripe step must start from zero
    run_stripe_step(call, ws)
    selected, total = density_parts(plan, ws)
    want, want_total = stripe_density_parts(plan, ws.counts)
    assert selected.dtype == torch.float64 and selected.dim() == 0
    assert float(selected) == float(want) and total == want_total
    if theta == INF:  # every candidate kept: the numerator is all of them
        assert float(selected) == total > 0
    if chunks == [(0, 20), (3, 9)]:
        assert total == 0 and float(selected) == 0.0
    # off (the default): the kernels leave the count alone and the host formula gives the same
    monkeypatch.setattr(api, "PACK_COUNTS_SELECTED", False)
    ws.selected.fill_(1e9)
    run_stripe_step(call, ws)
    off, off_total = density_parts(plan, ws)
    assert float(ws.selected) == 1e9 and float(off) == float(want) and off_total == want_total


@pytest.mark.parametrize("heads,rows", [((6, 2), 32), ((8, 2), 16), ((4, 4), 64)],
                         ids=["gqa3-r32-straddling", "gqa4-r16", "gqa1-r64"])
def test_pooled_queries_are_the_pool_means(heads, rows):
    """The pooling kernel's mean query and mean anchor of every pooling block equal the plain
    means of that block's rows (tiles of 10 tokens straddle the 16-token blocks in case 1)."""
    cfg = small_cfg(theta=2.0)
    case = make_case([(30, 100), (0, 70), (5, 1)], *heads, 16, seed=15)
    plan, call, ws = _steps(case, cfg, rows=rows)
    qbar, abar = pooled_queries(call, ws)
    b, G = cfg.pool_block, cfg.group_size
    want_q, want_m = [], []
    for s in range(case.num_seqs):
        start, end, row0 = case.q_start(s), case.seq_lens[s], case.query_start_loc[s]
        for g in range(start // G, (end - 1) // G + 1):
            g_lo, g_hi = max(start, g * G), min(end, (g + 1) * G)
            for p0 in range(g_lo // b * b, g_hi, b):
                r = slice(row0 + max(p0, g_lo) - start, row0 + min(p0 + b, g_hi) - start)
                want_q.append(case.q[r].float().mean(0))
                want_m.append(ws.m[r].mean(0))
    assert len(want_q) == plan.num_pools
    torch.testing.assert_close(qbar[..., :16], torch.stack(want_q), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(abar, torch.stack(want_m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads,rows,sparse_rows", [((6, 2), 32, 128), ((8, 2), 64, 16), ((4, 4), 16, 64)],
                         ids=["gqa3-r32-s128", "gqa4-r64-s16", "gqa1-r16-s64"])
def test_sparse_tile_size_is_a_pure_speed_option(heads, rows, sparse_rows):
    """The sparse step cuts its own tiles (any size, inside one group): same output as with the
    anchor's tiles, and each chunk token in exactly one sparse tile."""
    cfg = small_cfg(theta=2.0)
    case = make_case([(30, 150), (0, 70), (64, 1)], *heads, 16, seed=16, strong_frac=0.2, strong_gain=1.5)
    same, plan_same = run(case, cfg, rows=rows)
    split, plan = run(case, cfg, rows=rows, sparse_rows=sparse_rows)
    assert plan.sparse_tile_m != plan.tile_m and plan.sparse_tile_m * plan.pack <= plan.sparse_rows
    # the anchor's tiles serve the sparse step when the sizes agree and no tail cuts a group
    assert plan_same.sparse_tiles is not plan_same.tiles
    no_tail = plan_anchor_prefill(case.query_start_loc, case.seq_lens, small_cfg(tail_tokens=0), *case.dims,
                                  "cpu", rows=rows)
    assert no_tail.sparse_tiles is no_tail.tiles
    torch.testing.assert_close(split, same, rtol=1e-6, atol=1e-6)
    item_of_row = torch.full((case.q.shape[0],), -1)
    for item, (_s, _g, _tail, lo, hi) in enumerate(item_owners(case, cfg)):
        item_of_row[lo:hi] = item
    seen = torch.zeros(case.q.shape[0], dtype=torch.int32)
    for seq, row0, pos0, n, item, _pool in plan.sparse_tiles.tolist():
        assert 1 <= n <= plan.sparse_tile_m
        assert pos0 // cfg.group_size == (pos0 + n - 1) // cfg.group_size, "tile crosses a group"
        assert (item_of_row[row0:row0 + n] == item).all(), "sparse tile reads another owner's list"
        seen[row0:row0 + n] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize("share", [True, False])
def test_sparse_step_on_random_selection(share):
    cfg = small_cfg(theta=2.0, share_gqa=share)
    case = make_case([(20, 180), (0, 140)], 8, 2, 16, dtype=torch.float16, seed=7)
    plan, call, ws = _steps(case, cfg)
    gen = torch.Generator().manual_seed(8)
    masks = {}
    for i, (seq, cand_end, off, *_r) in enumerate(plan.items_cpu.tolist()):
        for h in range(ws.num_sel):
            pick = (torch.rand(cand_end - cfg.sink_tokens, generator=gen) < 0.4).nonzero().flatten()
            masks[(i, h)] = pick + cfg.sink_tokens
    set_stripe_lists(call, ws, masks)
    out = torch.full_like(case.q, float("nan"))
    run_sparse_step(call, ws, out)
    assert torch.isfinite(out).all()
    owners = item_owners(case, cfg)
    assert len(owners) == plan.num_items and any(o[2] for o in owners)
    for s in range(case.num_seqs):
        k, v = case.seq_kv(s)
        q = case.seq_q(s).float()
        p0 = case.q_start(s)
        lists = {}
        for i in (i for i, owner in enumerate(owners) if owner[0] == s):
            lists[i] = torch.zeros(ws.num_sel, k.shape[0], dtype=torch.bool)
            for h in range(ws.num_sel):
                lists[i][h, masks[(i, h)]] = True
        sel, tail = selections_by_owner(owners, lists, s)
        key_mask = R.selection_to_key_mask(sel, p0, q.shape[0], q.shape[1], cfg, tail)
        st = R.anchor_step(q, k, v, p0, case.scale, cfg)
        ref = R.sparse_step(q, k, v, st, key_mask, case.scale)
        # independent check of the whole composition: one softmax over anchor | stripes
        union = R.masked_attention(q, k, v, key_mask | R.anchor_region_mask(p0, q.shape[0], k.shape[0], cfg),
                                   case.scale)
        got = out[case.query_start_loc[s]:case.query_start_loc[s + 1]]
        assert R.relative_error(ref, union) < 1e-5
        assert R.relative_error(got, ref) < TOL[torch.float16]


def test_end_to_end_matches_reference_with_partial_selection():
    cfg = small_cfg(theta=2.0)
    case = make_case([(0, 300), (64, 130)], 6, 2, 16, seed=9, strong_frac=0.25, strong_gain=1.6)
    out, _ = run(case, cfg)
    dense_err = []

    def ref(q, k, v, p):
        o, mask = R.anchor_attention(q, k, v, p, case.scale, cfg)
        dense_err.append(R.relative_error(o, R.dense_causal_attention(q, k, v, p, case.scale)))
        return o
    assert_close_per_sequence(case, out, ref, TOL[torch.float32])
    assert max(dense_err) > 1e-4, "selection was complete; the test would not see a wrong list"


def test_chunked_prefill_equals_unsplit_when_chunks_align_to_groups():
    # without the tail, which is cut at each chunk's end (test_tail_... below) by design
    cfg = small_cfg(theta=2.0, tail_tokens=0)
    whole = make_case([(0, 256)], 6, 2, 16, seed=10, strong_frac=0.25, strong_gain=1.6)
    out_whole, _ = run(whole, cfg)
    # The same sequence prefilled as chunks [0,128) then [128,256): the second chunk reads the
    # first one's K/V from the cache. Batch both chunks as two "sequences" sharing pages.
    split = make_case([(0, 128), (128, 128)], 6, 2, 16, seed=10)
    split.kv_cache = whole.kv_cache
    split.block_table = torch.stack([whole.block_table[0], whole.block_table[0]])
    split.q = whole.q
    out_split, _ = run(split, cfg)
    torch.testing.assert_close(out_split, out_whole, rtol=1e-5, atol=1e-5)


def test_unaligned_chunks_equal_dense_at_theta_inf():
    cfg = small_cfg(theta=INF)
    whole = make_case([(0, 250)], 4, 2, 16, seed=11)
    cuts = [0, 37, 101, 170, 250]
    split = make_case([(a, b - a) for a, b in zip(cuts, cuts[1:])], 4, 2, 16, seed=11)
    split.kv_cache = whole.kv_cache
    split.block_table = whole.block_table[0].repeat(len(cuts) - 1, 1)
    split.q = whole.q
    out_split, _ = run(split, cfg)
    k, v = whole.seq_kv(0)
    ref = R.dense_causal_attention(whole.q.float(), k, v, 0, whole.scale)
    assert R.relative_error(out_split, ref) < TOL[torch.float32]


def test_warm_up_runs_once_per_shape(monkeypatch):
    from vllm_anchor.kernels import api
    monkeypatch.setattr(api, "_warmed", set())
    calls = []
    real = api.anchor_prefill
    monkeypatch.setattr(api, "anchor_prefill", lambda *a, **k: calls.append(a[2].stride(0)) or real(*a, **k))
    cfg = small_cfg()
    assert api.warm_up(4, 2, 16, torch.float32, cfg, device="cpu")
    assert len(calls) == 2 and calls[0] % 16 == 0 and calls[1] % 16 == 1  # both specializations
    assert not api.warm_up(4, 2, 16, torch.float32, cfg, device="cpu")
    assert len(calls) == 2


@pytest.mark.parametrize("heads,rows", [((6, 2), 16), ((6, 2), 32), ((10, 2), 32), ((4, 4), 64), ((20, 1), 16),
                                        ((2, 2), 128)],
                         ids=["gqa3-r16", "gqa3-r32", "gqa5-r32", "gqa1-r64", "gqa20-r16", "gqa1-r128-pool16"])
def test_plan_tiles_cover_each_token_once_inside_one_group(heads, rows):
    cfg = small_cfg()
    qsl, sls = [0, 150, 151, 260], [150, 300, 109]  # whole prompt, one token at 299, chunk at 0
    plan = plan_anchor_prefill(qsl, sls, cfg, *heads, 16, "cpu", rows=rows)
    rep = heads[0] // heads[1]
    assert plan.rows >= rep and plan.rows & (plan.rows - 1) == 0
    assert plan.tile_m == min(plan.rows // rep, cfg.pool_block) and plan.tile_m * rep <= plan.rows
    assert plan.rows == 16 or plan.tile_m * rep > plan.rows // 2, "more than half the rows idle"
    seen = torch.zeros(qsl[-1], dtype=torch.int32)
    pool_tokens = torch.zeros(plan.num_pools)
    for (seq, row0, pos0, n, item, pool), nxt in zip(plan.tiles.tolist(), plan.tile_pool_next.tolist()):
        assert 1 <= n <= plan.tile_m
        assert pos0 // cfg.group_size == (pos0 + n - 1) // cfg.group_size, "tile crosses a group"
        assert row0 - qsl[seq] == pos0 - (sls[seq] - (qsl[seq + 1] - qsl[seq]))
        assert plan.items_cpu[item, 0] == seq
        seen[row0:row0 + n] += 1
        edge = (pos0 // cfg.pool_block + 1) * cfg.pool_block
        before = min(n, edge - pos0)
        pool_tokens[pool] += before
        pool_tokens[nxt] += n - before
        assert nxt == pool + (n > before)
    assert (seen == 1).all()
    torch.testing.assert_close(pool_tokens, plan.pool_rows.cpu())


def test_plan_tail_owners_blocks_and_tile_order():
    """A group holding a chunk's tail gets two list owners with disjoint rows; the tail items'
    candidates are cut into tail blocks that cover each exactly once at the item's list offsets;
    the tail items' sparse tiles come first (a long tail list must not start last)."""
    cfg = small_cfg(tail_tokens=20)
    qsl, sls = [0, 150, 151, 160, 260], [150, 300, 9, 140]
    plan = plan_anchor_prefill(qsl, sls, cfg, 6, 2, 16, "cpu")
    items = plan.items_cpu.tolist()
    tail_items = [i for i, it in enumerate(items) if it[ITEM_NTAIL]]
    # sequence 0: tail [130, 150) in group 2; sequence 1: its one token; sequence 2: all 9 tokens
    # (no candidates: no tail blocks); sequence 3, chunk [40, 140): the tail [120, 140) crosses
    # the group edge at 128, so groups 1 and 2 each have a tail item (8 and 12 rows)
    assert [items[i][ITEM_NTAIL] for i in tail_items] == [20, 1, 9, 8, 12]
    covered = {i: [] for i in tail_items}
    for item, lo, hi, off in plan.tail_blocks.tolist():
        assert item in covered and 0 < hi - lo <= 256
        assert off == items[item][2] + lo - cfg.sink_tokens
        covered[item].append((lo, hi))
    for i in tail_items:
        cand_end = items[i][1]
        spans = sorted(covered[i])
        want_lo = cfg.sink_tokens
        for lo, hi in spans:
            assert lo == want_lo
            want_lo = hi
        assert want_lo == (cand_end if cand_end > cfg.sink_tokens else cfg.sink_tokens)
    order = [items[t[4]][ITEM_NTAIL] > 0 for t in plan.sparse_tiles.tolist()]
    assert order == sorted(order, reverse=True) and any(order) and not all(order)
    # the row owners: each chunk token in exactly one sparse tile, of the right item
    seen = torch.zeros(qsl[-1], dtype=torch.int32)
    for seq, row0, pos0, n, item, _pool in plan.sparse_tiles.tolist():
        tail_lo = sls[seq] - cfg.tail_tokens
        assert (pos0 >= tail_lo) == (items[item][ITEM_NTAIL] > 0) and (pos0 + n - 1 >= tail_lo) == (pos0 >= tail_lo)
        seen[row0:row0 + n] += 1
    assert (seen == 1).all()


def test_plan_tail_segments_are_written_by_their_groups_scan():
    """A tail item that shares its group with other rows gets no scan programs: each segment of
    the group's other item names the tail's segment over the same keys (its twin). Every item's
    segments stay one contiguous run covering its candidates, for the pack step."""
    cfg = small_cfg(tail_tokens=20)
    qsl, sls = [0, 150, 151, 160, 260], [150, 300, 9, 140]
    plan = plan_anchor_prefill(qsl, sls, cfg, 6, 2, 16, "cpu", segment_tokens=32)
    items, segs, twin = plan.items_cpu.tolist(), plan.segments.tolist(), plan.seg_twin.tolist()
    n_scan = plan.num_scan_segments
    assert n_scan < plan.num_segments
    for i, it in enumerate(items):
        seg0, nseg = it[ITEM_SEG0], it[ITEM_NSEG]
        spans = [(lo, hi) for item, lo, hi, _ in segs[seg0:seg0 + nseg] if item == i]
        assert len(spans) == nseg
        edges = [cfg.sink_tokens] + [hi for _, hi in spans]
        assert [lo for lo, _ in spans] == edges[:-1] and edges[-1] == max(it[1], cfg.sink_tokens)
        assert (seg0 >= n_scan) == (nseg > 0 and i > 0 and it[ITEM_NTAIL] > 0 and items[i - 1][ITEM_NTAIL] == 0
                                    and items[i - 1][ITEM_POOL0] == it[ITEM_POOL0])
    written = [t for t in twin if t >= 0]
    assert sorted(written) == list(range(n_scan, plan.num_segments))
    for s, t in enumerate(twin):
        if t >= 0:
            main, tail = segs[s], segs[t]
            assert main[1:3] == tail[1:3] and items[tail[0]][ITEM_NTAIL] > 0 and items[main[0]][ITEM_NTAIL] == 0


@pytest.mark.parametrize("share_gqa,tail", [(True, 20), (False, 20), (True, 0)], ids=["shared", "per-head", "no-tail"])
def test_workspace_nbytes_counts_what_new_workspace_allocates(share_gqa, tail):
    """The memory-profile reservation is sized by workspace_nbytes: it must equal the bytes of the
    buffers a call really allocates, with and without the tail's bytes and shared lists."""
    from vllm_anchor.kernels.api import workspace_nbytes
    cfg = small_cfg(share_gqa=share_gqa, tail_tokens=tail)
    case = make_case([(96, 90), (0, 150), (100, 5)], 6, 2, 24, seed=5)
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, *case.dims, "cpu")
    ws = new_workspace(_Call(case.q, case.kv_cache, case.block_table, plan, case.scale))
    allocated = sum(t.numel() * t.element_size() for t in vars(ws).values())
    assert workspace_nbytes(plan, case.dims[2]) == allocated > 0


def test_step_workspace_grows_with_chunk_and_context():
    """The largest usual step is one sequence's last chunk: more queries (fp32 state) and a longer
    context (longer lists) each need more, and the figure is that chunk's plan's workspace."""
    from vllm_anchor.kernels.api import step_workspace_nbytes, workspace_nbytes
    from vllm_anchor.kernels.plan import default_rows, default_segment_tokens, default_sparse_rows
    cfg = AnchorConfig()
    small, long_ctx, big_chunk = (step_workspace_nbytes(cfg, 32, 8, 128, t, n)
                                  for t, n in ((4096, 32768), (4096, 131072), (16384, 32768)))
    assert small < long_ctx and small < big_chunk
    plan = plan_anchor_prefill([0, 4096], [131072], cfg, 32, 8, 128, "cpu", rows=default_rows(128, "cuda"),
                               sparse_rows=default_sparse_rows(128, "cuda"),
                               segment_tokens=default_segment_tokens(128, "cuda"))
    assert long_ctx == workspace_nbytes(plan, 128)
    # a chunk longer than the model's context is capped at the context
    assert step_workspace_nbytes(cfg, 32, 8, 128, 65536, 32768) == step_workspace_nbytes(cfg, 32, 8, 128, 32768, 32768)


@pytest.mark.parametrize("heads,rows", [((6, 2), 32), ((10, 2), 32)], ids=["gqa3-r32", "gqa5-r32"])
def test_non_power_of_two_head_packing_matches_reference(heads, rows):
    """Tiles of 10 or 6 tokens straddle pooling blocks; lists and output must not notice."""
    cfg = small_cfg(theta=2.0)
    case = make_case([(0, 200), (30, 70)], *heads, 16, seed=12, strong_frac=0.25, strong_gain=1.6)
    out, _ = run(case, cfg, rows=rows)
    assert_close_per_sequence(case, out, lambda q, k, v, p: R.anchor_attention(q, k, v, p, case.scale, cfg)[0],
                              TOL[torch.float32])


@pytest.mark.parametrize("block_n", [16, 128])
def test_scan_key_block_is_a_pure_speed_option(block_n):
    """The stripe scan's key block (128 on the H100 since lease28_h100/scan_tune/, 32 on the CPU)
    changes neither the lists nor their page-table slots: blocks of 128 keys cover a 256-key
    context in two, one partial."""
    cfg = small_cfg(theta=2.0)
    case = make_case([(0, 256), (100, 90)], 6, 2, 16, seed=6, strong_frac=0.25, strong_gain=1.6)
    plan, call, ws = _steps(case, cfg)
    run_stripe_step(call, ws)
    want = {k: getattr(ws, k).clone() for k in ("lists", "counts", "slots")}
    cand = int((plan.items_cpu[:, 1] - cfg.sink_tokens).sum()) * want["counts"].shape[1]
    assert 0 < int(want["counts"].sum()) < cand  # a partial selection
    plan, call, ws = _steps(case, cfg)
    assert call.opts["scan"]["BLOCK_N"] != block_n
    call.opts = {**call.opts, "scan": {**call.opts["scan"], "BLOCK_N": block_n}}
    for k in want:  # poison: a list entry the scan failed to write would show
        getattr(ws, k).fill_(-7)
    run_stripe_step(call, ws)
    for item in range(plan.num_items):
        off = int(plan.items_cpu[item, 2])
        for h in range(ws.counts.shape[1]):
            n = int(want["counts"][item, h])
            assert int(ws.counts[item, h]) == n
            assert ws.lists[h, off:off + n].tolist() == want["lists"][h, off:off + n].tolist()
            assert ws.slots[h, off:off + n].tolist() == want["slots"][h, off:off + n].tolist()


@pytest.mark.parametrize("option", [{"SPLIT_DIAGONAL": False}, {"MERGE_BULK": False}],
                         ids=["one-masked-loop", "one-loop-per-span"])
def test_anchor_loop_structure_is_a_pure_speed_option(option):
    """The default (the sink's and the local span's unmasked blocks in one loop, then the masked
    remainders) gives the same state as one masked loop per span, and as an unmasked and a
    masked loop per span."""
    cfg = small_cfg(theta=2.0, sink_tokens=40)  # the sink spans whole blocks and a partial one
    case = make_case([(30, 100), (0, 70)], 6, 2, 16, seed=13)
    plan, call, ws = _steps(case, cfg)
    split = {k: getattr(ws, k).clone() for k in ("m", "l", "acc", "qsum", "msum")}
    call.opts = {**call.opts, "anchor": {**call.opts["anchor"], **option}}
    run_anchor_step(call, ws)
    for k, v in split.items():
        torch.testing.assert_close(getattr(ws, k), v, rtol=1e-5, atol=1e-5, msg=k)


def _with_tau(call, tau):
    call.opts = {**call.opts, **{k: {**call.opts[k], "RESCALE_TAU": tau} for k in ("anchor", "sparse")}}


def test_lazy_rescale_is_a_pure_speed_option():
    """Lazy rescaling (stabilizer kept until a block max exceeds it by more than tau) gives the
    same anchor, the same normalized state and the same output as rescaling every block."""
    cfg = small_cfg(theta=3.0)
    # strong columns (gain 3) lift some block maxima far above the first block's, plain noise
    # only a little: both the rescale branch and the lazy path run
    case = make_case([(40, 200), (0, 150)], 6, 2, 16, seed=14, strong_frac=0.15, strong_gain=3.0)
    plan, call, ws = _steps(case, cfg)
    k, _ = case.seq_kv(1)
    q = case.seq_q(1).float()
    scores = torch.einsum("thd,khd->thk", q, k.repeat_interleave(3, 1))
    scores = scores * case.scale * math.log2(math.e)
    causal = torch.arange(k.shape[0])[None, None, :] <= torch.arange(q.shape[0])[:, None, None]
    true_max = scores.masked_fill(~causal, -INF).amax(-1)
    first_block = scores[:, :, :16].masked_fill(~causal[:, :, :16], -INF).amax(-1)
    grow = (true_max - first_block)[16:]
    assert (grow > 8).any() and ((grow > 0) & (grow < 8)).any(), "input would not exercise both paths"

    outs, states = {}, {}
    for tau in (0.0, 0.5, 8.0):
        _with_tau(call, tau)
        run_anchor_step(call, ws)
        states[tau] = (ws.m.clone(), ws.acc[..., :16] / ws.l[..., None])
        run_stripe_step(call, ws)
        outs[tau] = torch.full_like(case.q, float("nan"))
        run_sparse_step(call, ws, outs[tau])
    for tau in (0.5, 8.0):
        torch.testing.assert_close(states[tau][0], states[0.0][0], rtol=0, atol=1e-6, msg="anchor (row max)")
        torch.testing.assert_close(states[tau][1], states[0.0][1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[tau], outs[0.0], rtol=1e-5, atol=1e-5)
    assert_close_per_sequence(case, outs[8.0],
                              lambda q, k, v, p: R.anchor_attention(q, k, v, p, case.scale, cfg)[0],
                              TOL[torch.float32])


@pytest.mark.parametrize("share", [True, False])
def test_tail_queries_keep_the_column_only_they_want(share):
    """A far-back key that only the chunk's last query wants (a needle): the pooled mean of its
    block misses it, scoring the tail one by one keeps it, and the kernels agree with the
    reference either way. The other rows of the last pool point away from the needle."""
    case = make_case([(0, 200)], 6, 2, 16, seed=13)
    needle = 40  # a candidate of the last group [192, 200): [8, 184)
    plant_needle(case, 0, needle, others_lo=192)
    found = {}
    for tail in (0, 1):
        cfg = small_cfg(theta=2.0, tail_tokens=tail, share_gqa=share)
        plan, call, ws = _steps(case, cfg)
        run_stripe_step(call, ws)
        k, _ = case.seq_kv(0)
        m_nats = ws.m / math.log2(math.e)
        args = (case.q.float(), k, m_nats, 0, case.scale, cfg)
        ref = (R.tail_stripe_step if tail else R.stripe_step)(*args)
        got = stripe_lists(ws, plan, plan.num_items - 1)
        want = [m.nonzero().flatten().tolist() for m in ref[3]]
        assert got == want
        needle_heads = [0, 1] if share else [0, 3]  # the selector heads of query heads 0 and 3
        found[tail] = [needle in got[h] for h in needle_heads]
        if tail:  # the group's other rows keep the pooled list: without the needle
            assert plan.items_cpu[-1, ITEM_NTAIL] == 1 and plan.items_cpu[-2, ITEM_NTAIL] == 0
            rest = stripe_lists(ws, plan, plan.num_items - 2)
            assert [needle in rest[h] for h in needle_heads] == [False, False]
            assert all(set(r) <= set(t) for r, t in zip(rest, got)), "the tail's list holds the pooled one"
    assert found == {0: [False, False], 1: [True, True]}


def test_tail_is_cut_at_each_chunk_end():
    """Only the last ``tail_tokens`` queries of each chunk are scored one by one: splitting a
    prefill adds tail columns at the split, and lists of groups far from every chunk end are
    unchanged."""
    cfg = small_cfg(theta=2.0, tail_tokens=8)
    whole = make_case([(0, 256)], 6, 2, 16, seed=10, strong_frac=0.25, strong_gain=1.6)
    split = make_case([(0, 160), (160, 96)], 6, 2, 16, seed=10)
    split.kv_cache, split.q = whole.kv_cache, whole.q
    split.block_table = torch.stack([whole.block_table[0], whole.block_table[0]])
    lists = {}
    for name, case in (("whole", whole), ("split", split)):
        plan, call, ws = _steps(case, cfg)
        run_stripe_step(call, ws)
        items = plan.items_cpu.tolist()
        lists[name] = {(seq, cand_end, int(plan.item_queries_cpu[i])): stripe_lists(ws, plan, i)
                       for i, (seq, cand_end, *_r) in enumerate(items)}
        tails = [(it[7], it[8]) for it in items if it[8]]
        assert tails == ([(248, 8)] if name == "whole" else [(152, 8), (248, 8)])
    whole_l, split_l = lists["whole"], lists["split"]
    # groups 0 and 1 hold no chunk end: the same lists
    for key in [(0, 8, 64), (0, 56, 64)]:
        assert split_l[key] == whole_l[key]
    # group 2 [128, 192) is cut at 160: the first chunk's part [128, 160) has a tail of its own
    # (rows [152, 160), after the 24 rows of pooled-only list); the second chunk's part is its
    # 32 rows [160, 192), with no tail
    assert (0, 120, 24) in split_l and (0, 120, 8) in split_l and (1, 120, 32) in split_l
