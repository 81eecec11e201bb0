"""bench/prefill_walk.py: the chunk cuts match vLLM's chunked prefill, the per-layer call does
what ``anchor_prefill`` does (so its timings are the backend's), and the totals add up."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bench_module import load_bench
from paged_case import make_case
from vllm_anchor.kernels import AnchorConfig, anchor_prefill, plan_anchor_prefill
from vllm_anchor.routing import DeferredDensity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
walk = load_bench("prefill_walk")


def test_chunk_spans_cover_the_prompt_in_order():
    assert walk.chunk_spans(40, 16) == [(0, 16), (16, 32), (32, 40)]
    assert walk.chunk_spans(32, 16) == [(0, 16), (16, 32)]
    with pytest.raises(ValueError):
        walk.chunk_spans(10, 0)


def test_backend_layer_equals_anchor_prefill_and_queues_the_density():
    cfg = AnchorConfig(theta=3.0, sink_tokens=16, local_tokens=16, group_size=32, pool_block=16, tail_tokens=8)
    case = make_case([(70, 45)], 4, 2, 16, seed=5, strong_frac=0.2, strong_gain=3.0)
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, 4, 2, 16, "cpu")
    want = anchor_prefill(case.q, case.kv_cache, case.block_table, plan, case.scale)
    out = torch.full_like(case.q, float("nan"))
    density = DeferredDensity()
    workspaces = {}
    walk.backend_layer(case.q, case.kv_cache, case.block_table, plan, case.scale, out, density, workspaces)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert len(workspaces) == 1
    measured = density.take()
    assert measured is not None and 0.0 < measured < 1.0


def test_summary_adds_the_chunks_and_flags_host_bound_ones():
    chunks = [dict(plan_ms=1.0, fa3_ms=2.0, anchor_ms=0.5, walk_gpu_ms=20.0, walk_host_ms=25.0),
              dict(plan_ms=2.0, fa3_ms=6.0, anchor_ms=1.5, walk_gpu_ms=50.0, walk_host_ms=30.0)]
    s = walk.summarize(chunks, layers=30)
    assert s["fa3_all_layers_ms"] == 240.0 and s["anchor_all_layers_ms"] == 60.0
    assert s["walk_gpu_ms"] == 70.0 and s["plan_ms"] == 3.0
    assert s["launch_gap_ms"] == 10.0 and s["host_bound_chunks"] == 1
