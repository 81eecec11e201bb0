"""Where a served request's GPU sits idle: idle gaps of a torch profiler trace and what the host did.

The 128k floor (no stripes kept) served in 709 ms where the kernels it runs, walked chunk by
chunk outside vLLM (bench/prefill_walk.py), predict about 443 ms: roughly 33 ms per 16k-token step
go somewhere in the serving path. vLLM's own profiler (``--profiler-config`` with
``"profiler": "torch"``, then ``POST /start_profile`` / ``/stop_profile``) records every kernel and
every CUDA runtime call of the worker. This reads such a trace (``.json`` or ``.json.gz``) and
reports:

* ``gpu``: the window from the first to the last GPU event, the time some kernel, copy or memset
  ran in it (their union) and the idle rest;
* ``steps``: per engine step (vLLM's ``execute_*`` annotations): wall time, GPU busy time inside it;
* ``gaps``: the longest idle stretches, each with the host events (CUDA runtime calls, operators)
  that overlap it most, e.g. a ``cudaStreamSynchronize`` or a pageable ``cudaMemcpyAsync``;
* ``runtime``: CUDA runtime/driver calls by name: count, total and longest duration;
* ``kernels``: GPU time per kernel name (the ``top_kernels`` longest in total): launches, total, longest.

  python bench/trace_gaps.py /tmp/prof/rank0.*.pt.trace.json.gz --out results/trace_floor.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
# host events a gap is charged to: runtime calls and operators (step annotations and Python frames
# span whole steps and would cover every gap)
HOST_CATS = {"cuda_runtime", "cuda_driver", "cpu_op"}
RUNTIME_CATS = {"cuda_runtime", "cuda_driver"}


def load_events(path: str | Path) -> list[dict]:
    """Complete (``ph == "X"``) events of a Chrome trace, gzip or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merged, sorted ``(start, end)`` intervals."""
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def busy_within(merged: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Time covered by ``merged`` inside ``[lo, hi)``."""
    return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in merged)


def totals_by_name(events: list[dict], cats: set[str]) -> dict[str, dict]:
    """Events of categories ``cats`` by name: count, total and longest duration (ms), the
    largest total first."""
    out: dict[str, dict] = {}
    for e in events:
        if e.get("cat") in cats:
            r = out.setdefault(e["name"], {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
            r["count"] += 1
            r["total_ms"] += e["dur"] / 1e3
            r["max_ms"] = max(r["max_ms"], e["dur"] / 1e3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["total_ms"]))


def summarize(events: list[dict], top_gaps: int = 15, min_gap_us: float = 200.0,
              top_kernels: int = 30) -> dict:
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in GPU_CATS]
    if not gpu:
        raise ValueError("the trace has no GPU events (was the profiler's CUDA activity on?)")
    merged = union(gpu)
    lo, hi = merged[0][0], merged[-1][1]
    busy = sum(e - s for s, e in merged)
    host = [e for e in events if e.get("cat") in HOST_CATS]

    gaps = []
    for (_, a), (b, _) in zip(merged, merged[1:]):
        if b - a >= min_gap_us:
            gaps.append((a, b))
    gaps.sort(key=lambda g: g[0] - g[1])
    gap_rows = []
    for a, b in gaps[:top_gaps]:
        overlap = defaultdict(float)
        for e in host:
            o = min(b, e["ts"] + e["dur"]) - max(a, e["ts"])
            if o > 0:
                overlap[f'{e.get("cat")}: {e.get("name")}'] += o
        best = sorted(overlap.items(), key=lambda kv: -kv[1])[:4]
        gap_rows.append({"start_ms": (a - lo) / 1e3, "idle_ms": (b - a) / 1e3,
                         "host": [{"event": k, "overlap_ms": v / 1e3} for k, v in best]})

    steps = []
    for e in sorted((e for e in events if e.get("cat") == "user_annotation"
                     and str(e.get("name", "")).startswith("execute")), key=lambda e: e["ts"]):
        s, t = e["ts"], e["ts"] + e["dur"]
        steps.append({"name": e["name"], "wall_ms": e["dur"] / 1e3, "gpu_busy_ms": busy_within(merged, s, t) / 1e3})

    runtime = totals_by_name(events, RUNTIME_CATS)
    kernels = dict(list(totals_by_name(events, {"kernel"}).items())[:top_kernels])
    return {"gpu": {"window_ms": (hi - lo) / 1e3, "busy_ms": busy / 1e3, "idle_ms": (hi - lo - busy) / 1e3,
                    "gaps_over_min": len(gaps), "idle_in_gaps_over_min_ms": sum(b - a for a, b in gaps) / 1e3,
                    "min_gap_ms": min_gap_us / 1e3},
            "steps": steps, "gaps": gap_rows, "runtime": runtime, "kernels": kernels}


def op_host_breakdown(events: list[dict], op: str, skip: int = 0, top: int = 12) -> dict:
    """Host time of each call of the operator ``op`` (e.g. ``vllm::unified_attention_with_output``,
    one per attention layer), from the ``skip``-th call on, and what inside it took that time:
    the host events (operators, runtime and driver calls) nested in its span, per call; times are
    inclusive, so an operator inside another (``aten::_to_copy`` in ``aten::to``) counts in both.
    What no nested event covers is Python (e.g. Triton's launch binding), which the profiler does
    not record as events."""
    calls = sorted((e for e in events if e.get("cat") == "cpu_op" and e.get("name") == op),
                   key=lambda e: e["ts"])[skip:]
    if not calls:
        return {"op": op, "calls": 0}
    host = [e for e in events if e.get("cat") in HOST_CATS]
    inside: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for c in calls:
        lo, hi = c["ts"], c["ts"] + c["dur"]
        for e in host:
            if e is not c and e["ts"] >= lo and e["ts"] + e["dur"] <= hi:
                r = inside[f'{e.get("cat")}: {e.get("name")}']
                r[0] += 1
                r[1] += e["dur"]
    n = len(calls)
    rows = sorted(inside.items(), key=lambda kv: -kv[1][1])[:top]
    return {"op": op, "calls": n, "host_ms_per_call": sum(c["dur"] for c in calls) / n / 1e3,
            "inside_per_call": [{"event": k, "count": c / n, "us": t / n} for k, (c, t) in rows]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", help="torch profiler trace (.json or .json.gz)")
    ap.add_argument("--top", type=int, default=15, help="idle gaps to list")
    ap.add_argument("--min-gap-ms", type=float, default=0.2)
    ap.add_argument("--op", default=None, help="also break down the host time of each call of this operator")
    ap.add_argument("--op-skip", type=int, default=0, help="calls of --op to skip first (e.g. a first step)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    events = load_events(a.trace)
    res = {"trace": str(a.trace), "command": " ".join(sys.argv),
           **summarize(events, a.top, a.min_gap_ms * 1e3)}
    if a.op:
        res["op_host"] = op_host_breakdown(events, a.op, a.op_skip)
    Path(a.out).write_text(json.dumps(res, indent=1))
    g = res["gpu"]
    print(f"GPU window {g['window_ms']:.1f} ms, busy {g['busy_ms']:.1f}, idle {g['idle_ms']:.1f} "
          f"({g['gaps_over_min']} gaps >= {g['min_gap_ms']} ms hold {g['idle_in_gaps_over_min_ms']:.1f} ms)")
    for s in res["steps"]:
        print(f"  step {s['name'][:60]:<60} wall {s['wall_ms']:8.2f} ms  gpu busy {s['gpu_busy_ms']:8.2f}")
    for r in res["gaps"][:8]:
        print(f"  gap at {r['start_ms']:9.2f} ms: idle {r['idle_ms']:7.2f} ms  "
              + "; ".join(f"{h['event'][:50]} {h['overlap_ms']:.2f}" for h in r["host"][:2]))
    for name, r in list(res["runtime"].items())[:8]:
        print(f"  {name[:40]:<40} x{r['count']:<6} total {r['total_ms']:8.2f} ms  max {r['max_ms']:7.2f}")
    o = res.get("op_host")
    if o and o["calls"]:
        print(f"  {o['op']}: {o['calls']} calls, host {o['host_ms_per_call']:.3f} ms per call; inside, per call:")
        for r in o["inside_per_call"]:
            print(f"    {r['event'][:60]:<60} x{r['count']:<4.1f} {r['us']:8.1f} us")


if __name__ == "__main__":
    main()
