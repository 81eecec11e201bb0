"""Compare serve_offline.py results of a reference (FLASH_ATTN) run and anchor runs.

  python bench/compare_serving.py fa.json anchor_inf.json anchor_default.json --out summary.json
"""
from __future__ import annotations

import argparse
import json
import statistics


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(ref: dict, run: dict) -> dict:
    out: dict = {"backend": run["backend"], "anchor": run.get("anchor")}
    if "exact" in ref and "exact" in run:
        a, b = ref["exact"], run["exact"]
        div = first_divergence(a["tokens"], b["tokens"])
        n = len(a["tokens"]) if div is None else div
        out["exact"] = {"identical": div is None, "first_divergence": div,
                        "max_logprob_diff_before_divergence":
                            max((abs(x - y) for x, y in zip(a["logprobs"][:n + 1], b["logprobs"][:n + 1])),
                                default=0.0)}
    if "needle" in ref and "needle" in run:
        out["needle"] = {}
        for n in sorted({c["tokens"] for c in ref["needle"]}):
            r = [c["found"] for c in ref["needle"] if c["tokens"] == n]
            s = [c["found"] for c in run["needle"] if c["tokens"] == n]
            out["needle"][str(n)] = {"reference_found": f"{sum(r)}/{len(r)}", "found": f"{sum(s)}/{len(s)}"}
    if "prefix" in run:
        p = run["prefix"]
        out["prefix"] = {"again_equals_first": p["again"] == p["first"],
                         "first_equals_reference": "prefix" in ref and p["first"] == ref["prefix"]["first"]}
    if "mixed" in run:
        out["mixed"] = run["mixed"]
    if "ttft" in ref and "ttft" in run:
        out["ttft"] = {n: {"reference_s": ref["ttft"][n]["median_s"], "s": t["median_s"],
                           "ratio": t["median_s"] / ref["ttft"][n]["median_s"]}
                       for n, t in run["ttft"].items() if n in ref["ttft"]}
    if "itl_s" in ref and "itl_s" in run:
        out["itl"] = {"reference_s": ref["itl_s"]["median"], "s": run["itl_s"]["median"],
                      "ratio": run["itl_s"]["median"] / ref["itl_s"]["median"]}
    stats = run.get("anchor_stats") or []
    if stats:
        layers = stats[0]
        calls = sum(v["calls"] for v in layers.values())
        out["anchor_stats_rank0"] = {
            "layer_calls": calls, "fallbacks": sum(v["fallbacks"] for v in layers.values()),
            # files from before "measured" existed measured every call
            "mean_density": statistics.mean(v["density_sum"] / v.get("measured", v["calls"])
                                            for v in layers.values() if v.get("measured", v["calls"]))
            if calls else None}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ref = json.load(open(a.reference))
    summary = {"reference": a.reference, "gpu": ref.get("gpu"),
               "runs": {r: compare(ref, json.load(open(r))) for r in a.runs}}
    json.dump(summary, open(a.out, "w"), indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
