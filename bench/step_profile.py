"""Where one anchor_prefill call spends its time: each step eager and as a CUDA-graph replay.

Eager timing (what bench/kernels.py reports per step) includes the host's launch latency of
each kernel, which dominates steps made of several short launches (the stripe step: pooling,
scan, pack). A CUDA-graph replay of the same launches removes it, so ``eager - graph`` is the
launch overhead and ``graph`` is GPU time. A torch.profiler pass lists every kernel's GPU time.

  python bench/step_profile.py --tokens 131072 --heads 32 8 128 --out results/step_profile_llama.json
  python bench/step_profile.py --tokens 32768 --heads 9 3 64 --out results/step_profile_smollm2.json

``--fa3`` also times vLLM's FlashAttention on the same call (the speed-up's baseline), and
``--launch tail.BLOCK_N=64 ...`` overrides single launch options (bench/tuned.py) to time an
earlier default beside the current one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import fa3_prefill, paged_cache, synthetic_qkv, time_ms  # noqa: E402

from vllm_anchor.kernels import AnchorConfig, new_workspace, plan_anchor_prefill  # noqa: E402
from vllm_anchor.kernels.api import _Call, run_anchor_step, run_sparse_step, run_stripe_step  # noqa: E402


def graphed(fn):
    """``fn`` captured once into a CUDA graph; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm (compile) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def kernel_times(fn, runs: int = 5) -> dict[str, float]:
    """GPU milliseconds per call of every kernel ``fn`` launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if t > 0:
            out[e.key] = t / 1e3 / runs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--heads", type=int, nargs=3, default=[32, 8, 128], metavar=("H", "HKV", "D"))
    ap.add_argument("--strong-frac", type=float, default=0.10)
    ap.add_argument("--gain", type=float, default=3.6)
    ap.add_argument("--sparse-rows", type=int, default=None, help="rows per sparse-step program")
    ap.add_argument("--fa3", action="store_true", help="also time vLLM's FlashAttention (FA3) on the same call")
    ap.add_argument("--launch", nargs="+", default=[], metavar="KERNEL.OPTION=VALUE",
                    help="override single launch options (bench/tuned.py), e.g. tail.BLOCK_N=64")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    launch = {}
    if a.launch:
        import tuned
        launch = tuned.override(a.launch)
    h, hkv, d = a.heads
    n = a.tokens
    q, k, v = synthetic_qkv(n, h, hkv, d, a.strong_frac, a.gain, seed=n)
    kv, bt = paged_cache(k, v)
    plan = plan_anchor_prefill([0, n], [n], AnchorConfig(), h, hkv, d, "cuda", sparse_rows=a.sparse_rows)
    call = _Call(q, kv, bt, plan, d ** -0.5)
    ws = new_workspace(call)
    out = torch.empty_like(q)
    steps = {"anchor": lambda: run_anchor_step(call, ws), "stripe": lambda: run_stripe_step(call, ws),
             "sparse": lambda: run_sparse_step(call, ws, out)}

    parts = list(steps.values())

    def whole():
        for fn in parts:
            fn()
    steps["total"] = whole
    res = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "tokens": n, "heads": a.heads,
           "rows": plan.rows, "sparse_rows": plan.sparse_rows, "launch_overrides": launch, "steps": {}}
    for name, fn in steps.items():
        eager = time_ms(fn, budget_s=0.5)
        replay = graphed(fn)
        res["steps"][name] = {"eager_ms": eager, "graph_ms": time_ms(replay, budget_s=0.5)}
        print(name, res["steps"][name], flush=True)
    if a.fa3:
        res["fa3_ms"] = time_ms(lambda: fa3_prefill(q, kv, bt, n, d ** -0.5), budget_s=1.0)
        res["speedup_eager"] = res["fa3_ms"] / res["steps"]["total"]["eager_ms"]
        print(f"fa3 {res['fa3_ms']:.2f} ms, anchor path x{res['speedup_eager']:.2f} (eager)", flush=True)
    res["kernels_ms"] = kernel_times(whole)
    for name, ms in res["kernels_ms"].items():
        print(f"  {ms:9.4f} ms  {name[:100]}")
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
