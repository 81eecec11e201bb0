"""Would a θ per layer buy speed at the same recall? An answer from committed per-layer measurements.

``bench/kernels.py smollm2`` records, for every layer, θ and context length, the anchor path's
time, FA3's time and the attention-mass recall (mean and p5) on real SmolLM2 Q/K/V. This picks,
per layer, one θ of the measured grid or dense FA3 (recall 1), so that the whole model is fastest
(sum of per-layer times) at a mean recall of at least each ``--target``, and compares it with one
θ for every layer. The picks come from a Lagrangian sweep (each layer minimises time − λ·recall,
for λ on a fine grid), which finds the fastest assignments on the convex hull of the trade-off.

Picked on the same measurements it is scored on, a per-layer table flatters itself. So each pick
is also scored at the other measured lengths (``transfer``): a static table, as a user would ship
it, chosen at one context and served at another.

  python bench/per_layer_theta.py bench/results/lease24_h100/recall128k*/recall128k.json.gz \
      --out bench/results/lease24_h100/per_layer_theta.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from statistics import fmean

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import load_json  # noqa: E402

DENSE = "dense"


def layer_options(files: list[dict], variant: str = "base") -> dict[int, dict[int, dict]]:
    """``{tokens: {layer: {θ or "dense": {"ms", "recall", "p5"}}}}``, runs of one θ averaged."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    fa3: dict = defaultdict(lambda: defaultdict(list))
    for d in files:
        for r in d["rows"]:
            if r.get("variant", "base") != variant:
                continue
            acc[r["tokens"]][r["layer"]][float(r["theta"])].append(r)
            fa3[r["tokens"]][r["layer"]].append(r["fa3_ms"])
    out: dict = {}
    for tokens, layers in acc.items():
        out[tokens] = {}
        for layer, thetas in layers.items():
            opts = {th: {"ms": fmean(x["anchor_ms"] for x in xs), "recall": fmean(x["recall_mean"] for x in xs),
                         "p5": fmean(x["recall_p5"] for x in xs)} for th, xs in thetas.items()}
            opts[DENSE] = {"ms": fmean(fa3[tokens][layer]), "recall": 1.0, "p5": 1.0}
            out[tokens][layer] = opts
    return out


def score(layers: dict[int, dict], pick: dict[int, object]) -> dict:
    """Speed-up over FA3 (summed layer times), mean recall and mean p5 of a per-layer pick."""
    ms = sum(layers[l][pick[l]]["ms"] for l in layers)
    fa3 = sum(layers[l][DENSE]["ms"] for l in layers)
    n = len(layers)
    return {"speedup": fa3 / ms, "recall": sum(layers[l][pick[l]]["recall"] for l in layers) / n,
            "p5": sum(layers[l][pick[l]]["p5"] for l in layers) / n}


def common_thetas(layers: dict[int, dict]) -> list[float]:
    return sorted(set.intersection(*(set(k for k in o if k != DENSE) for o in layers.values())))


def best_pick(layers: dict[int, dict], target: float, choices: list) -> tuple[dict, dict] | None:
    """The fastest per-layer pick (among ``choices``) with mean recall >= ``target``, or None."""
    best = None
    total_fa3 = sum(o[DENSE]["ms"] for o in layers.values())
    # λ in ms per unit of (recall / layers): from "time only" to "recall only"
    for i in range(0, 4001):
        lam = total_fa3 * (i / 4000) ** 2 * 50
        pick = {l: min(choices, key=lambda c: o[c]["ms"] - lam * o[c]["recall"]) for l, o in layers.items()}
        s = score(layers, pick)
        if s["recall"] >= target and (best is None or s["speedup"] > best[1]["speedup"]):
            best = (pick, s)
    return best


def analyse(files: list[dict], targets: list[float], variant: str = "base") -> dict:
    table = layer_options(files, variant)
    res: dict = {"lengths": {}}
    picks: dict = {}
    for tokens in sorted(table):
        layers = table[tokens]
        thetas = common_thetas(layers)
        row = {"thetas": thetas, "uniform": {str(th): score(layers, {l: th for l in layers}) for th in thetas},
               "per_layer": {}}
        for target in targets:
            found = best_pick(layers, target, thetas + [DENSE])
            if found is None:
                continue
            pick, s = found
            picks[(tokens, target)] = pick
            row["per_layer"][str(target)] = {**s, "pick": {str(l): pick[l] for l in sorted(pick)},
                                             "uniform_interpolated": _uniform_at(row["uniform"], target)}
        res["lengths"][str(tokens)] = row
    res["transfer"] = []
    for (src, target), pick in sorted(picks.items()):
        for dst in sorted(table):
            if dst == src or any(pick[l] not in table[dst].get(l, {}) for l in pick) or set(pick) != set(table[dst]):
                continue
            s = score(table[dst], pick)
            res["transfer"].append({"picked_at": src, "scored_at": dst, "target": target, **s,
                                    "uniform_interpolated": _uniform_at(res["lengths"][str(dst)]["uniform"], s["recall"])})
    return res


def _uniform_at(uniform: dict[str, dict], recall: float) -> float | None:
    """One θ for all layers: speed-up at this mean recall, linear between measured θ (None outside)."""
    pts = sorted((v["recall"], v["speedup"]) for v in uniform.values())
    for (r0, s0), (r1, s1) in zip(pts, pts[1:]):
        if r0 <= recall <= r1:
            return s0 + (s1 - s0) * (recall - r0) / (r1 - r0) if r1 > r0 else s0
    return None


def markdown(res: dict, sources: list[str]) -> str:
    out = ["# One θ per layer against one θ for all (bench/per_layer_theta.py)", "",
           "From: " + ", ".join(f"`{s}`" for s in sources), "",
           "Per-layer picks: θ from the measured grid or dense FA3 per layer, fastest at each mean-recall "
           "target (Lagrangian sweep). `uniform` is one θ for every layer at the same mean recall, linear "
           "between the measured θ. Picked and scored on the same measurements (in-sample) unless under "
           "Transfer.", ""]
    for tokens, row in res["lengths"].items():
        out += [f"## {tokens} tokens (θ grid {', '.join(f'{t:g}' for t in row['thetas'])})", "",
                "| mean recall ≥ | per-layer speed-up | uniform speed-up | recall | p5 | layers dense |",
                "|---:|---:|---:|---:|---:|---|"]
        for target, p in row["per_layer"].items():
            dense = [l for l, c in p["pick"].items() if c == DENSE]
            u = p["uniform_interpolated"]
            out.append(f"| {target} | {p['speedup']:.2f}× | {'—' if u is None else f'{u:.2f}×'} | "
                       f"{p['recall']:.3f} | {p['p5']:.3f} | {', '.join(dense) or '—'} |")
        out.append("")
    if res["transfer"]:
        out += ["## Transfer: a table picked at one length, served at another", "",
                "| picked at | target | scored at | speed-up | recall | p5 | uniform at that recall |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for t in res["transfer"]:
            u = t["uniform_interpolated"]
            out.append(f"| {t['picked_at']} | {t['target']} | {t['scored_at']} | {t['speedup']:.2f}× | "
                       f"{t['recall']:.3f} | {t['p5']:.3f} | {'—' if u is None else f'{u:.2f}×'} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="bench/kernels.py smollm2 JSON results (.json or .json.gz)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.93, 0.95, 0.97])
    ap.add_argument("--variant", default="base")
    ap.add_argument("--out", default=None, help="JSON of the analysis (the markdown goes to stdout)")
    a = ap.parse_args(argv)
    res = analyse([load_json(f) for f in a.files], a.targets, a.variant)
    res["command"] = "python bench/per_layer_theta.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    sys.stdout.write(markdown(res, a.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
