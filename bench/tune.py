"""Sweep launch parameters of the anchor and sparse kernels on one shape (H100 tuning aid).

  python bench/tune.py --tokens 131072 --out results/tune_h100.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import fa3_prefill, paged_cache, synthetic_qkv, time_ms  # noqa: E402

from vllm_anchor.kernels import AnchorConfig, new_workspace, plan_anchor_prefill  # noqa: E402
from vllm_anchor.kernels.api import _Call, run_anchor_step, run_sparse_step, run_stripe_step  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--heads", type=int, nargs=3, default=[32, 8, 128], metavar=("H", "HKV", "D"))
    ap.add_argument("--strong-frac", type=float, default=0.10)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    h, hkv, d = a.heads
    n = a.tokens
    q, k, v = synthetic_qkv(n, h, hkv, d, a.strong_frac, 3.6, seed=1)
    kv, bt = paged_cache(k, v)
    scale = d ** -0.5
    try:
        fa_ms = time_ms(lambda: fa3_prefill(q, kv, bt, n, scale))
    except ImportError:  # no vLLM on this machine: tune without the baseline
        fa_ms = None
    plan = plan_anchor_prefill([0, n], [n], AnchorConfig(), h, hkv, d, "cuda")
    call = _Call(q, kv, bt, plan, scale)
    ws = new_workspace(call)
    run_anchor_step(call, ws)
    run_stripe_step(call, ws)
    out = torch.empty_like(q)
    rows = []
    base = dict(call.opts)
    for kind, bn, warps, stages in itertools.product(("anchor", "sparse"), (32, 64, 128), (4, 8), (2, 3, 4, 5)):
        call.opts = {**base, kind: {"BLOCK_N": bn, "num_warps": warps, "num_stages": stages}}
        fn = (lambda: run_anchor_step(call, ws)) if kind == "anchor" else (lambda: run_sparse_step(call, ws, out))
        try:
            ms = time_ms(fn, budget_s=0.5)
        except Exception as e:  # out of shared memory / registers for this combination
            rows.append({"kernel": kind, "block_n": bn, "num_warps": warps, "num_stages": stages,
                         "error": type(e).__name__})
            continue
        rows.append({"kernel": kind, "block_n": bn, "num_warps": warps, "num_stages": stages, "ms": ms})
        print(rows[-1], flush=True)
    best = {kind: min((r for r in rows if r["kernel"] == kind and "ms" in r), key=lambda r: r["ms"])
            for kind in ("anchor", "sparse")}
    print("fa3_ms", fa_ms, "best", best)
    Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(),
                                       "tokens": n, "heads": a.heads, "fa3_ms": fa_ms, "rows": rows,
                                       "best": best}, indent=1))


if __name__ == "__main__":
    main()
