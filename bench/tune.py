"""Sweep launch parameters of the anchor and sparse kernels on one shape (H100 tuning aid).

  python bench/tune.py --tokens 131072 --out results/tune_h100.json
  python bench/tune.py --tokens 32768 --heads 9 3 64 --rows 128 256 --out results/tune_smollm2_shape.json
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
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 128, 256],
                    help="rows (tokens x packed heads) per anchor/sparse program (each kernel "
                         "gets its own winner: the plan cuts their tiles separately)")
    ap.add_argument("--block-n", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--segment-tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--scan-warps", type=int, nargs="+", default=None,
                    help="num_warps of the stripe scan to sweep (default: the kernels' own only; the "
                         "sweeps up to stop 22 never varied it)")
    ap.add_argument("--scan-stages", type=int, nargs="+", default=None,
                    help="num_stages of the stripe scan to sweep (default: the kernels' own only)")
    ap.add_argument("--rescale-tau", type=float, nargs="+", default=None,
                    help="lazy softmax rescale thresholds to sweep (0 = rescale every block); "
                         "default: only the kernels' default")
    ap.add_argument("--kernels", nargs="+", default=["anchor", "sparse", "stripe"],
                    choices=["anchor", "sparse", "stripe"], help="which kernels to sweep")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of timing per point")
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
    rows = []
    for tile_rows in a.rows:
        # rows per program changes the plan (both kernels' tiles here; each wins separately)
        plan = plan_anchor_prefill([0, n], [n], AnchorConfig(), h, hkv, d, "cuda", rows=tile_rows,
                                   sparse_rows=tile_rows)
        call = _Call(q, kv, bt, plan, scale)
        ws = new_workspace(call)
        run_anchor_step(call, ws)
        run_stripe_step(call, ws)
        out = torch.empty_like(q)
        base = dict(call.opts)
        taus = a.rescale_tau or [base["anchor"].get("RESCALE_TAU", 0.0)]
        kinds = [k for k in ("anchor", "sparse") if k in a.kernels]
        points = itertools.product(kinds, a.block_n, a.warps, a.stages, (True, False), taus)
        for kind, bn, warps, stages, split, tau in points:
            if kind == "sparse" and not split:
                continue  # the diagonal split is the anchor kernel's option only
            call.opts = {**base, kind: {**base[kind], "BLOCK_N": bn, "num_warps": warps, "num_stages": stages,
                                        "RESCALE_TAU": tau}}
            row = {"kernel": kind, "rows": tile_rows, "block_n": bn, "num_warps": warps, "num_stages": stages,
                   "rescale_tau": tau}
            if kind == "anchor":
                call.opts["anchor"]["SPLIT_DIAGONAL"] = row["split_diagonal"] = split
            fn = (lambda: run_anchor_step(call, ws)) if kind == "anchor" else (lambda: run_sparse_step(call, ws, out))
            try:
                row["ms"] = time_ms(fn, budget_s=a.budget)
            except Exception as e:  # out of shared memory / registers for this combination
                row["error"] = type(e).__name__
            rows.append(row)
            print(row, flush=True)
    # stripe step (scan + pack): the candidate range is cut into segments of this many keys,
    # one scan program each; shorter segments mean more programs in flight
    for seg in (a.segment_tokens if "stripe" in a.kernels else []):
        plan = plan_anchor_prefill([0, n], [n], AnchorConfig(), h, hkv, d, "cuda", segment_tokens=seg)
        call = _Call(q, kv, bt, plan, scale)
        ws = new_workspace(call)
        run_anchor_step(call, ws)
        scan0 = call.opts["scan"]
        for bn, warps, stages in itertools.product(a.block_n, a.scan_warps or [scan0.get("num_warps")],
                                                   a.scan_stages or [scan0.get("num_stages")]):
            call.opts = {**call.opts, "scan": {**scan0, "BLOCK_N": bn}}
            for key, value in (("num_warps", warps), ("num_stages", stages)):
                if value is not None:
                    call.opts["scan"][key] = value
            row = {"kernel": "stripe", "segment_tokens": seg, "block_n": bn, "num_warps": warps,
                   "num_stages": stages}
            try:
                row["ms"] = time_ms(lambda: run_stripe_step(call, ws), budget_s=a.budget)
            except Exception as e:
                row["error"] = type(e).__name__
            rows.append(row)
            print(row, flush=True)

    def fastest(kind, tile_rows=None):
        return min((r for r in rows if r["kernel"] == kind and "ms" in r and tile_rows in (None, r.get("rows"))),
                   key=lambda r: r["ms"])
    best = {kind: fastest(kind) for kind in a.kernels}
    # the plan cuts the anchor's and the sparse step's tiles separately: each kernel's own
    # fastest rows per program
    for kind, key in (("anchor", "rows"), ("sparse", "sparse_rows")):
        if kind in best:
            best[key] = best[kind]["rows"]
    best["joint"] = {kind: best[kind] for kind in ("anchor", "sparse") if kind in best}
    print("fa3_ms", fa_ms, "best", best)
    Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(),
                                       "tokens": n, "heads": a.heads, "fa3_ms": fa_ms, "rows": rows,
                                       "best": best}, indent=1))


if __name__ == "__main__":
    main()
