"""One long prompt walked through chunked prefill, every layer, as the backend runs it.

The serving TTFT at 128k (SmolLM2, 16k-token chunks) leaves a gap that the single-chunk kernel
benchmark does not explain: the floor setting (no stripes kept) measured 709 ms against stock's
1505 ms, while bench/kernels.py puts the whole anchor path at a fraction of FA3. This walks the
same sequence the server prefills, chunk by chunk, ``--layers`` layers per chunk, and reports per
chunk:

* ``plan_ms``: host time of ``plan_anchor_prefill`` (once per step in vLLM);
* ``fa3_ms``: vLLM's FlashAttention on the same chunk (one layer, device time), the stock cost;
* ``anchor_ms``: one layer's anchor call (device time), each step's share, every kernel's time;
* ``walk_gpu_ms``: ``--layers`` anchor calls back to back, with the backend's host work between
  them (workspace, launches, the density read-back queued behind an event): device time of the
  whole run, so launch gaps count;
* ``walk_host_ms``: the host time of issuing those calls without waiting for the GPU. Above
  ``walk_gpu_ms`` the step is host-bound (the GPU idles between launches).

Random Q/K/V with a set share of strong key columns (``bench/kernels.py synthetic``): a speed
measurement; what it keeps says nothing about real attention.

  python bench/prefill_walk.py --tokens 131072 --chunk 16384 --heads 9 3 64 --layers 30 \\
      --config '{"theta": -1000}' --out results/walk_floor.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import fa3_prefill, paged_cache, synthetic_qkv, time_ms  # noqa: E402
from step_profile import kernel_times  # noqa: E402

from vllm_anchor.kernels import AnchorConfig, plan_anchor_prefill  # noqa: E402
from vllm_anchor.kernels.api import (_Call, run_anchor_step, run_sparse_step, run_stripe_step,  # noqa: E402
                                     shared_workspace)
from vllm_anchor.kernels.plan import stripe_density_parts  # noqa: E402
from vllm_anchor.routing import DeferredDensity  # noqa: E402


def chunk_spans(tokens: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each prefill step of a ``tokens`` prompt cut into ``chunk``-token steps."""
    if tokens <= 0 or chunk <= 0:
        raise ValueError(f"tokens and chunk must be positive, got {tokens}, {chunk}")
    return [(s, min(s + chunk, tokens)) for s in range(0, tokens, chunk)]


def backend_layer(q, kv, bt, plan, scale, out, density: DeferredDensity, workspaces: dict):
    """What ``AnchorImpl.forward`` does on the GPU for one layer of an all-anchor batch
    (``workspaces``: the step's, shared by its layers, as the backend's metadata holds it)."""
    call = _Call(q, kv, bt, plan, scale)
    ws = shared_workspace(workspaces, call)
    run_anchor_step(call, ws)
    run_stripe_step(call, ws)
    density.start(*stripe_density_parts(plan, ws.counts))
    run_sparse_step(call, ws, out)


def walk_chunk(layer, layers: int) -> tuple[float, float]:
    """``(host_ms, gpu_ms)`` of ``layers`` calls of ``layer`` issued back to back."""
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    t0 = time.perf_counter()
    for _ in range(layers):
        layer()
    host = (time.perf_counter() - t0) * 1e3
    b.record()
    b.synchronize()
    return host, a.elapsed_time(b)


def summarize(chunks: list[dict], layers: int) -> dict:
    """Totals over the prompt: stock attention, the anchor path, host time and plans (ms).

    ``launch_gap_ms`` is the walks' GPU time less ``layers`` times one call timed alone: positive
    when calls issued back to back leave the GPU idle between them, negative when each call's own
    launch latency (counted in the single-call time) hides behind the previous call's kernels."""
    tot = {k: sum(c[k] for c in chunks) for k in ("plan_ms", "fa3_ms", "anchor_ms", "walk_gpu_ms", "walk_host_ms")}
    return {"fa3_all_layers_ms": tot["fa3_ms"] * layers, "anchor_all_layers_ms": tot["anchor_ms"] * layers,
            "walk_gpu_ms": tot["walk_gpu_ms"], "walk_host_ms": tot["walk_host_ms"], "plan_ms": tot["plan_ms"],
            "launch_gap_ms": tot["walk_gpu_ms"] - tot["anchor_ms"] * layers,
            "host_bound_chunks": sum(c["walk_host_ms"] > c["walk_gpu_ms"] for c in chunks)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=16384, help="tokens per prefill step (max-num-batched-tokens)")
    ap.add_argument("--heads", type=int, nargs=3, default=[9, 3, 64], metavar=("H", "HKV", "D"))
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--config", default="{}", help="AnchorConfig overrides as JSON, e.g. '{\"theta\": -1000}'")
    ap.add_argument("--strong-frac", type=float, default=0.10)
    ap.add_argument("--gain", type=float, default=3.6)
    ap.add_argument("--profile", action="store_true", help="also list every kernel's time per chunk")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    h, hkv, d = a.heads
    cfg = replace(AnchorConfig(), **json.loads(a.config))
    q, k, v = synthetic_qkv(a.tokens, h, hkv, d, a.strong_frac, a.gain, seed=a.tokens)
    kv, bt = paged_cache(k, v)
    scale = d ** -0.5
    density = DeferredDensity()
    res = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "config": repr(cfg),
           "tokens": a.tokens, "chunk": a.chunk, "heads": a.heads, "layers": a.layers, "chunks": []}
    for start, end in chunk_spans(a.tokens, a.chunk):
        qc = q[start:end]
        out = torch.empty_like(qc)
        t0 = time.perf_counter()
        plan = plan_anchor_prefill([0, end - start], [end], cfg, h, hkv, d, "cuda")
        plan_ms = (time.perf_counter() - t0) * 1e3

        workspaces: dict = {}

        def layer():
            backend_layer(qc, kv, bt, plan, scale, out, density, workspaces)

        row = {"start": start, "end": end, "plan_ms": plan_ms,
               "fa3_ms": time_ms(lambda: fa3_prefill(qc, kv, bt, end, scale), budget_s=0.3),
               "anchor_ms": time_ms(layer, budget_s=0.3)}
        walks = [walk_chunk(layer, a.layers) for _ in range(3)]
        row["walk_host_ms"], row["walk_gpu_ms"] = sorted(walks, key=lambda w: w[1])[1]  # the median run
        if a.profile:
            row["kernels_ms"] = kernel_times(layer, runs=3)
        res["chunks"].append(row)
        print(f"[{start:>6}, {end:>6}) plan {plan_ms:5.2f} ms  fa3 {row['fa3_ms']:7.3f}  "
              f"anchor {row['anchor_ms']:7.3f}  "
              f"x{a.layers}: gpu {row['walk_gpu_ms']:8.2f} host {row['walk_host_ms']:8.2f}", flush=True)
        for name, ms in row.get("kernels_ms", {}).items():
            print(f"      {ms:8.4f} ms  {name[:90]}")
    res["summary"] = summarize(res["chunks"], a.layers)
    print(json.dumps(res["summary"], indent=1))
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
