"""Host time of one work plan (kernels/plan.py) against the first, loop-based planner that
tests/plan_reference.py keeps, with the GPU's launch sizes, on this machine's CPU.

  python bench/plan_time.py --out plan_time.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, nargs=3, default=[9, 3, 64], metavar=("H", "HKV", "D"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from plan_reference import reference_plan_tables
    from vllm_anchor.kernels import AnchorConfig, plan_anchor_prefill
    from vllm_anchor.kernels.plan import default_rows, default_segment_tokens, default_sparse_rows
    d = a.heads[2]
    kw = dict(rows=default_rows(d, "cuda"), sparse_rows=default_sparse_rows(d, "cuda"),
              segment_tokens=default_segment_tokens(d, "cuda"))
    cases = {"32767 tokens, one chunk": ([0, 32767], [32767]),
             "65536-token first chunk": ([0, 65536], [65536]),
             "65464-token second chunk of 131000": ([0, 65464], [131000])}
    res = {"command": "python bench/plan_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "heads": a.heads, "cases": {}}
    for name, (qsl, sls) in cases.items():
        args = (qsl, sls, AnchorConfig(), *a.heads, "cpu")
        new = best_ms(lambda: plan_anchor_prefill(*args, **kw), a.repeats)
        old = best_ms(lambda: reference_plan_tables(*args, **kw), a.repeats)
        res["cases"][name] = {"vectorized_ms": new, "loop_ms": old}
        print(f"{name:<36} vectorized {new:6.2f} ms, loop {old:6.2f} ms (best of {a.repeats})", flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
