"""Summary of bench/gpu/guard_key_job.sh: TTFT against stock and the density guard's work, per
prompt length, for the guard keyed by context (``keyed``) and the previous one-verdict-per-layer
guard (``unkeyed``).

The job copies the anchor servers' worker stats files (vllm_anchor.stats: per layer, calls,
fallbacks, measured calls and their density sum) after the 32K prompts and again after the
131000-token ones; the difference of the two copies is the 131000 window. A density read back
late (the guard reads each call's density at the layer's next call) can land in the next window.

  python bench/guard_key_summary.py RESULTS_DIR [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import re

LENGTHS = ("32K", "131000")
FIELDS = ("calls", "fallbacks", "measured", "density_sum")


def load_stats(folder: str) -> dict[str, dict]:
    """Per-layer totals over the worker files in ``folder`` (none: empty), summed as the
    server's /metrics collector sums them."""
    from vllm_anchor.metrics import read_stats
    return read_stats(folder)


def layer_order(name: str) -> tuple:
    """Sort key: model.layers.10 after model.layers.9 (numbers compared as numbers)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def window(after: dict, before: dict) -> dict:
    """Per-layer counts between two snapshots, summed over layers, with the per-layer densities."""
    layers = {}
    for name, a in after.items():
        b = before.get(name, dict.fromkeys(FIELDS, 0))
        layers[name] = {k: a[k] - b[k] for k in FIELDS}
    dens = {n: v["density_sum"] / v["measured"] for n, v in layers.items() if v["measured"]}
    return {"calls": sum(v["calls"] for v in layers.values()),
            "fallbacks": sum(v["fallbacks"] for v in layers.values()),
            "measured": sum(v["measured"] for v in layers.values()),
            "layers_mean_density_above_0_5": sum(d > 0.5 for d in dens.values()),
            "layer_density": dict(sorted(dens.items(), key=lambda kv: layer_order(kv[0])))}


def ttft(path: str) -> dict | None:
    """Mean TTFT of the anchor run and of stock, and their ratio, from one vllm-anchor bench file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        d = json.load(f)
    (row,) = d["comparison"]
    anchor = next(k[: -len("_mean_ttft_ms")] for k in row if k.endswith("_mean_ttft_ms") and not k.startswith("stock"))
    a, s = row[f"{anchor}_mean_ttft_ms"], row["stock_mean_ttft_ms"]
    return {"input_len": row["input_len"], "anchor_ms": a, "stock_ms": s, "ratio": a / s,
            "completed": (row[f"{anchor}_completed"], row["stock_completed"])}


def summarize(folder: str) -> dict:
    out = {}
    for label in ("keyed", "unkeyed"):
        snaps = {n: load_stats(os.path.join(folder, f"stats_{label}_{n}")) for n in LENGTHS}
        if not any(snaps.values()):
            continue
        out[label] = {
            "32K": {"ttft": ttft(os.path.join(folder, f"ttft_{label}_32K_vs_stock.json")),
                    "guard": window(snaps["32K"], {})},
            "131000": {"ttft": ttft(os.path.join(folder, f"ttft_{label}_131000_vs_stock.json")),
                       "guard": window(snaps["131000"], snaps["32K"])}}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    s = summarize(a.folder)
    for label, per_len in s.items():
        for n, r in per_len.items():
            t, g = r["ttft"], r["guard"]
            tt = (f"TTFT {t['anchor_ms']:.1f} / {t['stock_ms']:.1f} ms ({t['ratio']:.3f}x stock)" if t
                  else "no TTFT file")
            print(f"{label:8s} {n:>6s}: {tt}; anchor layer calls {g['calls']}, dense {g['fallbacks']}, "
                  f"measured {g['measured']}, layers with mean density > 0.5: {g['layers_mean_density_above_0_5']}")
        for n, r in per_len.items():
            dens = " ".join(f"{v:.2f}" for v in r["guard"]["layer_density"].values())
            print(f"{label:8s} {n:>6s} per-layer density, layer 0 first: {dens}")
    with open(a.json or os.path.join(a.folder, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()
