"""Tables, JSON and PNG plots of load-test results.

A *run* is a list of per-prompt-length summaries (dicts from :func:`metrics.summarize` with an
``input_len`` key); an A/B comparison is a dict ``label -> run``.  A mixed run (``--mix``) adds an
*overall* summary of all its requests, shown as the row ``all``.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

COLUMNS = [  # (header, key, format)
    ("input", "input_len", "{:d}"),
    ("ok", "completed", "{:d}"),
    ("fail", "failed", "{:d}"),
    ("TTFT mean", "mean_ttft_ms", "{:.1f}"),
    ("p50", "median_ttft_ms", "{:.1f}"),
    ("p90", "p90_ttft_ms", "{:.1f}"),
    ("p99", "p99_ttft_ms", "{:.1f}"),
    ("TPOT", "mean_tpot_ms", "{:.2f}"),
    ("ITL", "mean_itl_ms", "{:.2f}"),
    ("ITL p99", "p99_itl_ms", "{:.2f}"),
    ("E2EL", "mean_e2el_ms", "{:.1f}"),
    ("req/s", "request_throughput", "{:.3f}"),
    ("out tok/s", "output_throughput", "{:.1f}"),
]


def _fmt(fmt: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return fmt.format(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def format_run(run: list[dict], title: str = "", overall: dict | None = None) -> str:
    """Times in ms; one row per prompt length (and ``all`` for ``overall``), then the errors
    by kind."""
    shown = run + ([{**overall, "input_len": "all"}] if overall else [])
    cols = [c for c in COLUMNS if all(c[1] in s for s in shown)]
    rows = [[_fmt(f, s.get(k)) for _, k, f in cols] for s in shown]
    text = (title + "\n" if title else "") + _table([c[0] for c in cols], rows)
    errs = []
    for s in run:
        counts = {k: v for k, v in s.get("error_counts", {}).items() if v}
        if counts:
            listed = ", ".join(f"{k}={v}" for k, v in counts.items())
            errs.append(f"  input {s['input_len']}: {listed}")
            for kind, msg in s.get("error_examples", {}).items():
                errs.append(f"    {kind}: {msg[:300]}")
        if s.get("prompt_len_mismatches"):
            errs.append(f"  input {s['input_len']}: {s['prompt_len_mismatches']} prompts had "
                        "another length on the server (usage.prompt_tokens)")
    if errs:
        text += "\nerrors:\n" + "\n".join(errs)
    return text


def ratio_ci(a: list[float], b: list[float], stat, reps: int = 2000,
             seed: int = 0) -> tuple[float, float, float] | None:
    """``stat(a) / stat(b)`` and its 95% percentile-bootstrap interval, resampling the
    requests of each server independently (seeded, so a report is reproducible).

    Decode ITL of small models moves by tens of percent from request to request (host-side
    scheduling), so a ratio of two means says little without its interval: this is what tells
    whether "ITL within 3% of stock" was shown or merely not contradicted.
    """
    if not a or not b:
        return None
    import random
    rng = random.Random(seed)
    base = stat(b)
    if not base:
        return None
    boot = []
    for _ in range(reps):
        sb = stat(rng.choices(b, k=len(b)))
        if sb:
            boot.append(stat(rng.choices(a, k=len(a))) / sb)
    boot.sort()
    return stat(a) / base, boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]


def _per_request_itl_ms(s: dict) -> list[float]:
    """Median ITL of each request (ms): one number per request, so long streams do not outweigh."""
    return [1e3 * statistics.median(x) for x in s.get("itls") or [] if x]


def comparison_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """Per prompt length: each label's mean/p99 TTFT and mean ITL, the TTFT speedup of the
    first label over each other label (other's TTFT / first's TTFT), and the first label's
    ITL relative to each other label's (median over requests of each request's median ITL),
    both with 95% bootstrap intervals over requests."""
    labels = list(runs)
    lens = sorted({s["input_len"] for run in runs.values() for s in run})
    by = {lab: {s["input_len"]: s for s in run} for lab, run in runs.items()}
    rows = []
    for n in lens:
        row: dict = {"input_len": n}
        for lab in labels:
            s = by[lab].get(n, {})
            for key in ("mean_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "completed", "failed"):
                row[f"{lab}_{key}"] = s.get(key)
        a = by[labels[0]].get(n, {})
        for lab in labels[1:]:
            b = by[lab].get(n, {})
            ok = a.get("completed") and b.get("completed") and a.get("mean_ttft_ms")
            row[f"ttft_speedup_{labels[0]}_vs_{lab}"] = (
                b["mean_ttft_ms"] / a["mean_ttft_ms"] if ok else None)
            ok_ttfts = lambda s: [t for t in s.get("ttfts") or [] if t]  # noqa: E731  (failed: 0)
            ci = ratio_ci(ok_ttfts(b), ok_ttfts(a), lambda x: sum(x) / len(x))
            row[f"ttft_speedup_ci95_{labels[0]}_vs_{lab}"] = list(ci[1:]) if ci else None
            ci = ratio_ci(_per_request_itl_ms(a), _per_request_itl_ms(b), statistics.median)
            row[f"itl_ratio_{labels[0]}_vs_{lab}"] = ci[0] if ci else None
            row[f"itl_ratio_ci95_{labels[0]}_vs_{lab}"] = list(ci[1:]) if ci else None
        rows.append(row)
    return rows


def format_comparison(runs: dict[str, list[dict]]) -> str:
    labels = list(runs)
    rows = comparison_rows(runs)
    headers = ["input"]
    for lab in labels:
        headers += [f"{lab} TTFT", f"{lab} p99", f"{lab} ITL", f"{lab} fail"]
    headers += [f"speedup vs {lab}" for lab in labels[1:]]
    headers += [f"ITL ratio vs {lab} [95% CI]" for lab in labels[1:]]
    body = []
    for r in rows:
        cells = [str(r["input_len"])]
        for lab in labels:
            cells += [_fmt("{:.1f}", r[f"{lab}_mean_ttft_ms"]),
                      _fmt("{:.1f}", r[f"{lab}_p99_ttft_ms"]),
                      _fmt("{:.2f}", r[f"{lab}_mean_itl_ms"]), _fmt("{:d}", r[f"{lab}_failed"])]
        cells += [_fmt("{:.2f}x", r[f"ttft_speedup_{labels[0]}_vs_{lab}"]) for lab in labels[1:]]
        for lab in labels[1:]:
            ratio, ci = r[f"itl_ratio_{labels[0]}_vs_{lab}"], r[f"itl_ratio_ci95_{labels[0]}_vs_{lab}"]
            cells.append(f"{ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ratio is not None and ci else "-")
        body.append(cells)
    return (f"TTFT/ITL in ms; speedup = other's mean TTFT / {labels[0]}'s; ITL ratio = "
            f"{labels[0]}'s median per-request ITL / other's (bootstrap over requests)\n"
            + _table(headers, body))


def prefix_cache_warnings(runs: dict[str, list[dict]]) -> list[str]:
    """One line per (label, prompt length) whose server answered some prompt tokens from its
    prefix cache (``usage.prompt_tokens_details.cached_tokens``, which vLLM reports when started
    with ``--enable-prompt-tokens-details``): that TTFT is not a cold prefill.

    Prompts are deterministic in the seed, so a second bench run against the same server with the
    same ``--seed`` resends prompts it has seen; its prefix cache then serves part of them (37-49%
    of the prompt tokens in bench/results/lease26_h100/served32k_seed0/, stock's TTFT 95 ms
    against 147 ms cold). Servers that do not report the field give no warning either way.
    """
    out = []
    for lab, run in runs.items():
        for s in run:
            cached = s.get("cached_prompt_tokens")
            if cached:
                total = s.get("total_input_tokens") or 0
                share = f" ({cached / total:.0%})" if total else ""
                out.append(f"warning: {lab} at {s['input_len']} tokens: {cached} of {total} prompt tokens"
                           f"{share} came from the server's prefix cache, so its TTFT is not a cold "
                           "prefill (another --seed sends prompts it has not seen)")
    return out


def format_memory(growth: dict, title: str = "server memory") -> str:
    """The ``memory_growth`` block of a run with --watch-pid (MiB)."""
    def num(v, sign=""):
        return "-" if v is None else f"{v:{sign}.1f}"

    pids = ",".join(str(p) for p in growth.get("pids", []))
    lines = [f"{title} (MiB; pid {pids}, {growth['samples']} samples every "
             f"{growth['interval_s']:g} s; growth = mean of the last 20% - first 20% of the "
             f"{growth['steady_samples']} after warm-up, t >= {growth['warmup_end_s']:.1f} s)"]
    for name, key in (("RSS", "rss"), ("GPU", "gpu")):
        lines.append(f"  {name}  first {num(growth[f'{key}_first_mb'])}  last "
                     f"{num(growth[f'{key}_last_mb'])}  max {num(growth.get(f'{key}_max_mb'))}  "
                     f"growth {num(growth[f'{key}_growth_mb'], '+')}")
    lines += [f"  note: {e}" for e in growth.get("errors", [])]
    return "\n".join(lines)


def _len_label(n: int) -> str:
    if n % 1024 == 0 and n >= 1024:
        return f"{n // 1024}K"
    return f"{n / 1000:g}k" if n % 1000 == 0 and n >= 1000 else str(n)


def _length_axis(ax, lens: list[int]) -> None:
    from matplotlib.ticker import NullLocator
    ax.set_xscale("log", base=2)
    ax.set_xticks(lens, [_len_label(n) for n in lens])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("prompt length (tokens; k = 1000, K = 1024)")


def plot_ttft(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """PNG of TTFT (mean, with the p50-p99 range as an error bar) against prompt length; with
    two or more labels, a second panel shows the TTFT speedup of the first label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(runs)
    two = len(labels) > 1
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6.5, 4.5), squeeze=False)
    ax = axes[0][0]
    for lab in labels:
        pts = sorted((s["input_len"], s) for s in runs[lab] if s.get("completed"))
        if not pts:
            continue
        xs = [n for n, _ in pts]
        mean = [s["mean_ttft_ms"] for _, s in pts]
        lo = [max(0.0, m - s.get("median_ttft_ms", m)) for m, (_, s) in zip(mean, pts)]
        hi = [max(0.0, s.get("p99_ttft_ms", m) - m) for m, (_, s) in zip(mean, pts)]
        ax.errorbar(xs, mean, yerr=[lo, hi], marker="o", capsize=3, label=f"{lab} (mean, p50-p99)")
    lens = sorted({s["input_len"] for run in runs.values() for s in run})
    _length_axis(ax, lens)
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(title or "Time to first token")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if two:
        ax2 = axes[0][1]
        rows = comparison_rows(runs)
        for lab in labels[1:]:
            key = f"ttft_speedup_{labels[0]}_vs_{lab}"
            pts = [r for r in rows if r[key] is not None]
            ax2.plot([r["input_len"] for r in pts], [r[key] for r in pts], marker="o",
                     label=f"{labels[0]} vs {lab}")
        ax2.axhline(1.0, color="gray", lw=1, ls="--")
        _length_axis(ax2, lens)
        ax2.set_ylabel(f"TTFT speedup of {labels[0]} (x)")
        ax2.set_title("Speedup (other mean TTFT / first)")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(path: str | Path, obj: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
    return path
