"""Host time of one anchored layer call, as the backend makes it, with and without direct launches.

At 32k the anchor path is host-bound: under the profiler an anchored layer call took 0.5-1.7 ms
of host time against 0.2-0.5 ms for stock FlashAttention, and its step grew and spread whenever
the CPU was slower (bench/results/lease25_h100/engine_profile/). This times, without a profiler,
the host side of the backend's per-layer sequence (``_Call``, the step's shared workspace, the
three steps, the density read-back queued behind an event) on a small SmolLM2-shaped batch whose
GPU work is short, for each variant:

* ``triton``: every launch through Triton's ``kernel[grid](...)``;
* ``direct``: ``kernels.launch`` (compiled kernels launched directly after their first call);
* ``direct_tensor_density``: direct, with the density's numerator from four tensor ops instead of
  the pack step's sum (``PACK_COUNTS_SELECTED`` off).

Each variant: ``--calls`` layer calls issued back to back (one step's worth of layers sharing a
workspace), host time per call from ``time.perf_counter`` around the loop (before the final
synchronize), median of ``--repeats`` rounds; every round runs each variant once, in a rotated
order. Also each kernel's launch alone, alternating the two paths.

  python bench/host_overhead.py --out host_overhead.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, nargs=3, default=[9, 3, 64], metavar=("H", "HKV", "D"))
    ap.add_argument("--context", type=int, default=6144, help="cached tokens before the chunk")
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=30, help="layer calls per step (SmolLM2: 30)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import torch
    from paged_case import make_case
    from vllm_anchor.kernels import AnchorConfig, api, plan_anchor_prefill
    from vllm_anchor.kernels import launch as L
    from vllm_anchor.kernels.api import (_Call, density_parts, run_anchor_step, run_sparse_step, run_stripe_step,
                                         shared_workspace)
    from vllm_anchor.routing import DeferredDensity

    h, hkv, d = a.heads
    case = make_case([(a.context, a.chunk)], h, hkv, d, dtype=torch.bfloat16, device="cuda", seed=3,
                     strong_frac=0.1, strong_gain=1.5)
    cfg = AnchorConfig()  # the defaults, tail included
    plan = plan_anchor_prefill(case.query_start_loc, case.seq_lens, cfg, h, hkv, d, "cuda")
    out = torch.empty_like(case.q)
    density = DeferredDensity()

    def layer(workspaces):
        call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
        ws = shared_workspace(workspaces, call)
        run_anchor_step(call, ws)
        run_stripe_step(call, ws)
        density.take()
        density.start(*density_parts(plan, ws))
        run_sparse_step(call, ws, out)

    def step_host_us() -> float:
        workspaces: dict = {}
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(a.calls):
            layer(workspaces)
        host = time.perf_counter() - t
        torch.cuda.synchronize()
        return host / a.calls * 1e6

    variants = {"triton": (False, True), "direct": (True, True), "direct_tensor_density": (True, False)}
    res = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "heads": a.heads,
           "context": a.context, "chunk": a.chunk, "calls": a.calls, "repeats": a.repeats,
           "plan": {"tiles": plan.num_tiles, "items": plan.num_items, "segments": plan.num_segments,
                    "tail_blocks": plan.num_tail_blocks, "sparse_tiles": plan.num_sparse_tiles},
           "host_us_per_layer_call": {}, "gpu_ms_per_layer_call": None}
    # Rounds visit the variants in turn (each round in a rotated order), so the CPU's drift
    # during the run reaches all of them alike: one variant after another once put 418 us and
    # 564 us on the same path in two leases (lease25_h100/host_path/, lease26_h100/host_path/).
    caches = {name: L.LaunchCache(enabled=direct) for name, (direct, _pack) in variants.items()}
    runs = {name: [] for name in variants}
    names = list(variants)
    for r in range(3 + a.repeats):  # 3 warm-up rounds: compile, fill the caches
        for name in names[r % len(names):] + names[:r % len(names)]:
            L.LAUNCHES, api.PACK_COUNTS_SELECTED = caches[name], variants[name][1]
            t = step_host_us()
            if r >= 3:
                runs[name].append(t)
    for name in names:
        cache, rs = caches[name], runs[name]
        res["host_us_per_layer_call"][name] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs),
                                               "hits": cache.hits, "misses": cache.misses}
        print(f"{name:<24} host {statistics.median(rs):7.1f} us per layer call (min {min(rs):.1f}, "
              f"max {max(rs):.1f}); direct launches {cache.hits}, Triton's {cache.misses}", flush=True)

    # GPU time of one layer call (so the host figures can be set against it)
    L.LAUNCHES, api.PACK_COUNTS_SELECTED = L.LaunchCache(enabled=True), True
    workspaces: dict = {}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    layer(workspaces)
    start.record()
    for _ in range(a.calls):
        layer(workspaces)
    end.record()
    torch.cuda.synchronize()
    res["gpu_ms_per_layer_call"] = start.elapsed_time(end) / a.calls
    print(f"GPU time per layer call {res['gpu_ms_per_layer_call']:.3f} ms", flush=True)

    # each kernel's launch alone: the host cost of one launch, Triton's path against the direct one
    call = _Call(case.q, case.kv_cache, case.block_table, plan, case.scale)
    ws = shared_workspace({}, call)
    paths = {"triton": L.LaunchCache(enabled=False), "direct": L.LaunchCache(enabled=True)}
    times = {name: [] for name in paths}
    for r in range(1 + a.repeats):
        for name, cache in (paths.items() if r % 2 else reversed(paths.items())):
            L.LAUNCHES = cache
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(a.calls):
                run_anchor_step(call, ws)
            if r:
                times[name].append((time.perf_counter() - t) / a.calls * 1e6)
    torch.cuda.synchronize()
    per_kernel = {name: statistics.median(ts) for name, ts in times.items()}
    res["anchor_kernel_launch_us"] = per_kernel
    print("anchor_kernel launch alone: " + ", ".join(f"{k} {v:.1f} us" for k, v in per_kernel.items()), flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
