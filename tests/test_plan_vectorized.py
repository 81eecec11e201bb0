"""kernels/plan.py builds its work tables per group with numpy; they must equal, table for table,
those of the first planner, which built them one tile at a time (tests/plan_reference.py), over
random varlen batches: chunks at any offset, tails on and off, shared and per-head lists, the CPU's
and the GPU's tile sizes, sequences with no queries."""
from __future__ import annotations

import random

import pytest
import torch

from plan_reference import reference_plan_tables
from vllm_anchor.kernels import AnchorConfig, plan_anchor_prefill
from vllm_anchor.kernels.plan import (default_rows, default_segment_tokens, default_sparse_rows, pack_tables,
                                      unpack_tables, upload)

FIELDS = ("tiles", "sparse_tiles", "items", "segments", "tail_blocks", "seg_twin", "pool_rows", "tile_pool_next",
          "pool_tiles", "item_queries")


def _random_batch(rng: random.Random, group: int):
    qsl, sls = [0], []
    for _ in range(rng.randint(1, 4)):
        context = rng.choice([0, rng.randint(0, 3 * group), rng.randint(0, 40) * group, group - 1])
        q_len = rng.choice([0, 1, rng.randint(1, 3 * group), group, group + 1]) if rng.random() < 0.9 else 0
        sls.append(context + max(q_len, 1 if not sls and q_len == 0 else q_len))
        qsl.append(qsl[-1] + sls[-1] - context)
    return qsl, sls


@pytest.mark.parametrize("seed", range(40))
def test_vectorized_plan_equals_the_loop_planner(seed):
    rng = random.Random(seed)
    group = rng.choice([256, 512, 2048])
    cfg = AnchorConfig(group_size=group, pool_block=rng.choice([64, 128]), sink_tokens=rng.choice([16, 64, 128]),
                       local_tokens=rng.choice([64, 128]), tail_tokens=rng.choice([0, 16, 64]),
                       share_gqa=rng.random() < 0.7)
    heads = rng.choice([(9, 3, 64), (32, 8, 128), (6, 2, 16), (8, 8, 64)])
    gpu_sizes = rng.random() < 0.5
    kw = dict(rows=default_rows(heads[2], "cuda"), sparse_rows=default_sparse_rows(heads[2], "cuda"),
              segment_tokens=default_segment_tokens(heads[2], "cuda")) if gpu_sizes else {}
    if not gpu_sizes and rng.random() < 0.5:
        kw["segment_tokens"] = rng.choice([32, 48, 256])
    qsl, sls = _random_batch(rng, group)
    plan = plan_anchor_prefill(qsl, sls, cfg, *heads, "cpu", **kw)
    want, capacity, num_pools = reference_plan_tables(qsl, sls, cfg, *heads, "cpu", **kw)
    for name in FIELDS:
        got = getattr(plan, name)
        assert got.dtype == want[name].dtype, name
        assert got.shape == want[name].shape, (name, tuple(got.shape), tuple(want[name].shape))
        assert torch.equal(got, want[name]), name
    assert plan.list_capacity == capacity and plan.num_pools == num_pools
    assert torch.equal(plan.items_cpu, want["items"])
    assert plan.item_queries_cpu.tolist() == [int(x) for x in want["item_queries"].tolist()]


def test_a_served_64k_chunk_plans_the_same_and_faster():
    """The shape whose planning left the GPU idle: the second 64k chunk of a 131000-token prompt."""
    import time
    cfg = AnchorConfig()
    kw = dict(rows=default_rows(64, "cuda"), sparse_rows=default_sparse_rows(64, "cuda"),
              segment_tokens=default_segment_tokens(64, "cuda"))
    args = ([0, 65464], [131000], cfg, 9, 3, 64, "cpu")
    plan = plan_anchor_prefill(*args, **kw)
    want, _, _ = reference_plan_tables(*args, **kw)
    for name in FIELDS:
        assert torch.equal(getattr(plan, name), want[name]), name

    def best(f, n=5):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)
    new = best(lambda: plan_anchor_prefill(*args, **kw))
    old = best(lambda: reference_plan_tables(*args, **kw))
    assert new < old, (new, old)


def test_packed_tables_come_back_whole_from_16_byte_boundaries():
    """What ``upload`` sends to a GPU in one copy: every table, every dtype, empty ones too, each
    from a 16-byte offset (so kernel pointers stay as aligned as separate allocations)."""
    tables = {"a": torch.arange(7, dtype=torch.int32).reshape(7, 1), "b": torch.zeros(0, 4, dtype=torch.int32),
              "c": torch.tensor([0.5, 1.5, 2.5], dtype=torch.float32), "d": torch.tensor([3, -1], dtype=torch.int64),
              "e": torch.tensor([2.0], dtype=torch.float64), "f": torch.arange(12, dtype=torch.int32).reshape(3, 4)}
    packed, offsets = pack_tables(tables)
    assert packed.dtype == torch.uint8 and all(off % 16 == 0 for off in offsets.values())
    back = unpack_tables(packed.clone(), offsets, tables)
    for k, t in tables.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    on_cpu = upload(tables, "cpu")
    assert all(torch.equal(on_cpu[k], t) for k, t in tables.items())


@pytest.mark.parametrize("seed", range(60))
def test_every_causal_key_is_attended_or_a_candidate_exactly_once(seed):
    """Independent of both planners' code: for every query row, the anchor region the kernels
    attend (sinks, and the local window up to the query) and the candidate segments of the
    row's item (sparse tiles name it) cover the causal keys ``[0, pos]`` once each, with no
    candidate past the query; each item's list range fits the capacity and no two overlap.
    The spec's point against the published code (overlaps and a dropped block)."""
    from vllm_anchor.kernels.plan import ITEM_CAND_END, ITEM_LIST_OFF
    rng = random.Random(1000 + seed)
    group = rng.choice([32, 64, 256])
    pool = rng.choice([16, 32])
    cfg = AnchorConfig(group_size=group, pool_block=pool, sink_tokens=rng.choice([0, 1, 16, group, 3 * group + 5]),
                       local_tokens=rng.choice([0, 1, group - 1, group, 2 * group]),
                       tail_tokens=rng.choice([0, 1, 5, pool + 3, group]), share_gqa=rng.random() < 0.7)
    qsl, sls = _random_batch(rng, group)
    plan = plan_anchor_prefill(qsl, sls, cfg, 8, 2, 16, "cpu", segment_tokens=rng.choice([16, 48, 4096]))
    items, segs = plan.items_cpu.tolist(), plan.segments.tolist()
    spans = {}
    for item, lo, hi, _off in segs:
        spans.setdefault(item, []).append((lo, hi))
    for seq, row0, pos0, n, item, _pool in plan.sparse_tiles.tolist():
        for pos in range(pos0, pos0 + n):
            g = pos // cfg.group_size
            local_lo = max(cfg.sink_tokens, g * cfg.group_size - cfg.local_tokens)
            count = torch.zeros(pos + 1, dtype=torch.int32)
            count[:min(cfg.sink_tokens, pos + 1)] += 1
            count[local_lo:pos + 1] += 1
            for lo, hi in spans.get(item, []):
                assert hi <= pos + 1 and lo >= cfg.sink_tokens, (pos, lo, hi)
                count[lo:hi] += 1
            assert items[item][0] == seq and items[item][ITEM_CAND_END] == max(cfg.sink_tokens, local_lo)
            assert bool((count == 1).all()), (seed, pos, torch.nonzero(count != 1).flatten()[:5].tolist())
    ranges = sorted((it[ITEM_LIST_OFF], it[ITEM_LIST_OFF] + max(it[ITEM_CAND_END] - cfg.sink_tokens, 0))
                    for it in items)
    assert all(a_hi <= b_lo for (_, a_hi), (b_lo, _) in zip(ranges, ranges[1:]))
    assert not ranges or ranges[-1][1] <= plan.list_capacity
