"""Markdown tables from committed result files (issue 6's per-layer tables and score/TTFT summary).

  python bench/summarize.py layers bench/results/kernels_smollm2_h100.json \
      bench/results/calibrate_gemma3_270m_cpu.json > bench/results/per_layer_tables.md
  python bench/summarize.py evals --label "θ=12 (default)" --label "θ=8" LONGCTX_1.json TTFT_1.json \
      LONGCTX_2.json TTFT_2.json > bench/results/evals/summary_smollm2_h100.md   (labels first)

Per-layer cells are ``recall mean / p5 / stripe density``. Recall is the share of the dense
softmax mass that falls on the keys the method attends to (anchor region + selected stripes),
on sampled queries; stripe density is selected / candidate keys. Both inputs come from the
same definitions (``vllm_anchor.kernels.reference``), the kernel benchmark measuring on the
GPU with the Triton kernels' own stripe lists, calibrate on the CPU with the reference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

from vllm_anchor.evals.scoring import bootstrap, paired_bootstrap_diff


def _cell(recall: float, p5: float, density: float) -> str:
    return f"{recall:.3f} / {p5:.2f} / {density:.2f}"


def layers_from_kernel_bench(d: dict) -> list[str]:
    rows = d["rows"]
    thetas = sorted({r["theta"] for r in rows})
    out = [f"## SmolLM2-135M-Instruct, {d['meta'].get('gpu', '?')} (`{d['meta']['command']}`)", ""]
    for n in sorted({r["tokens"] for r in rows}):
        out += [f"### {n} tokens: recall mean / p5 / stripe density", "",
                "| layer | " + " | ".join(f"θ={t:g}" for t in thetas) + " |",
                "|---:|" + "---|" * len(thetas)]
        by = {(r["layer"], r["theta"]): r for r in rows if r["tokens"] == n}
        layers = sorted({r["layer"] for r in rows})
        for layer in layers:
            cells = [_cell(by[layer, t]["recall_mean"], by[layer, t]["recall_p5"], by[layer, t]["stripe_density"])
                     for t in thetas]
            out.append(f"| {layer} | " + " | ".join(cells) + " |")
        summ = {x["theta"]: x for x in d["summary"] if x["tokens"] == n}  # bench/kernels.py's own
        mean = [_cell(summ[t]["recall_mean"], summ[t]["recall_p5_mean"], summ[t]["stripe_density_mean"])
                for t in thetas]
        speed = [f"{summ[t]['speedup_all_layers']:.2f}×" for t in thetas]
        out += ["| **mean** | " + " | ".join(f"**{c}**" for c in mean) + " |",
                "| speed-up vs FA3, all layers | " + " | ".join(speed) + " |", ""]
    return out


def layers_from_calibrate(d: dict) -> list[str]:
    thetas = d["thetas"]
    out = [f"## {d['model'].rstrip('/').split('/')[-1]}, calibrate on {d['device']} (`{d['command']}`)", ""]
    if d.get("skipped_layers"):
        skipped = ", ".join(str(s["layer"]) for s in d["skipped_layers"])
        out += [f"Not anchored (stock attention): layers {skipped} ({d['skipped_layers'][0]['reason']}).", ""]
    for res in d["results"]:
        out += [f"### {res['tokens']} tokens: recall mean / p5 / stripe density "
                f"(recommended θ at this length: {res['recommendation'].get('theta')})", "",
                "| layer | " + " | ".join(f"θ={t:g}" for t in thetas) + " |",
                "|---:|" + "---|" * len(thetas)]
        per_layer: dict[int, dict[float, dict]] = defaultdict(dict)
        for t in thetas:
            for row in res["layers"][f"{t:g}"]:
                per_layer[row["layer"]][t] = row
        for layer in sorted(per_layer):
            out.append(f"| {layer} | " + " | ".join(
                _cell(per_layer[layer][t]["recall_mean"], per_layer[layer][t]["recall_p5"],
                      per_layer[layer][t]["stripe_density"]) for t in thetas) + " |")
        out.append("")
    out += [f"Recommended θ over all lengths: {d.get('recommended_theta')} ({d.get('recommendation_note', '')}).", ""]
    return out


def evals_summary(pairs: list[tuple[str, str, str]]) -> list[str]:
    """(label, longctx JSON, ttft JSON) per anchor setting: score per length with the paired
    difference and its CI, and the mean TTFT of both servers at the same length."""
    out = ["| anchor setting | length | anchor score [95% CI] | stock score [95% CI] | difference, points [95% CI] | "
           "anchor TTFT ms | stock TTFT ms | TTFT ratio anchor/stock |",
           "|---|---:|---|---|---|---:|---:|---:|"]
    for label, lc_path, tt_path in pairs:
        lc, tt = json.load(open(lc_path)), json.load(open(tt_path))
        a_run, s_run = lc["runs"][0], lc["runs"][1]
        ttft = {lab: {r["input_len"]: r["mean_ttft_ms"] for r in run["results"]}
                for lab, run in tt["runs"].items()}
        a_lab, s_lab = list(tt["runs"])
        near = lambda table, n: table[min(table, key=lambda k: abs(k - n))]  # noqa: E731  8000 vs 8192
        for n in lc["lengths"]:
            a = [r["score"] for r in a_run["rows"] if r["length"] == n]
            s = [r["score"] for r in s_run["rows"] if r["length"] == n]
            diff = _paired_ci(a, s)
            ta, ts = near(ttft[a_lab], n), near(ttft[s_lab], n)
            out.append(f"| {label} | {n} | {_mean_ci(a)} | {_mean_ci(s)} | {diff} | {ta:.1f} | {ts:.1f} | {ta / ts:.2f} |")
        o = lc["diff"]["overall"]
        out.append(f"| {label} | **all** | {a_run['summary']['overall']['mean']:.3f} | "
                   f"{s_run['summary']['overall']['mean']:.3f} | **{100 * o['mean']:+.1f} "
                   f"[{100 * o['ci95'][0]:+.1f}, {100 * o['ci95'][1]:+.1f}]** | | | |")
    return out


def _mean_ci(xs: list[float]) -> str:
    lo, hi = bootstrap(xs)
    return f"{statistics.mean(xs):.3f} [{lo:.3f}, {hi:.3f}]"


def _paired_ci(a: list[float], b: list[float]) -> str:
    d = paired_bootstrap_diff(a, b)
    return f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    la = sub.add_parser("layers", help="per-layer tables from kernel-bench or calibrate JSON files")
    la.add_argument("files", nargs="+")
    ev = sub.add_parser("evals", help="scores and TTFT per length, anchor vs stock")
    ev.add_argument("--label", action="append", required=True, help="one per (longctx, ttft) pair")
    ev.add_argument("files", nargs="+", help="longctx JSON, ttft JSON, per label in order")
    a = ap.parse_args(argv)
    if a.what == "layers":
        lines = ["# Per-layer attention-mass recall and stripe density", "",
                 "Cells: recall mean / recall p5 / stripe density (selected / candidate keys). "
                 "Generated by `bench/summarize.py layers` from the JSON files named in each heading.", ""]
        for path in a.files:
            d = json.load(open(path))
            lines += layers_from_kernel_bench(d) if "rows" in d else layers_from_calibrate(d)
    else:
        if len(a.files) != 2 * len(a.label):
            ap.error("give one longctx JSON and one ttft JSON per --label")
        pairs = [(lab, a.files[2 * i], a.files[2 * i + 1]) for i, lab in enumerate(a.label)]
        lines = ["# SmolLM2 long-context suite and TTFT, anchor vs stock FLASH_ATTN", "",
                 "Scores: share of prompts answered correctly (RULER string match), per length over "
                 "the 8 tasks; CIs: percentile bootstrap (2000, seeded); difference: paired, in points. "
                 "TTFT: mean of `vllm-anchor bench` on the same two servers (token-ID prompts of "
                 "8192/16384/32000 tokens next to the suite's 8000/16000/32000).", ""]
        lines += evals_summary(pairs)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
