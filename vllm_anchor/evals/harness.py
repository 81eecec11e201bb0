"""Run the long-context suite against one or two OpenAI-compatible servers.

Each sample is sent as token IDs to ``POST {base}/v1/completions`` with greedy decoding
(``temperature=0``), scored by RULER string matching, and aggregated per task (and per task x
length, and per depth for niah_single) with 95% intervals. With a second server the same prompts
go to both, and the paired difference gets a bootstrap interval.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import scoring
from .tasks import DEFAULT_TASKS, Haystack, Sample, build_suite, hard_needle_available


def _post(url: str, body: dict, timeout: float, api_key: str | None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def server_card(base_url: str, timeout: float = 30, api_key: str | None = None) -> dict:
    """The first model card of ``/v1/models`` (vLLM's carries ``max_model_len``)."""
    req = urllib.request.Request(base_url.rstrip("/") + "/v1/models")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["data"][0]


def server_model(base_url: str, timeout: float = 30, api_key: str | None = None) -> str:
    return server_card(base_url, timeout, api_key)["id"]


def complete(base_url: str, model: str, s: Sample, timeout: float = 600,
             api_key: str | None = None) -> tuple[str | None, str | None]:
    """``(text, error)`` for one sample: greedy, token-ID prompt."""
    body = {"model": model, "prompt": s.ids, "max_tokens": s.max_tokens, "temperature": 0.0,
            "top_p": 1.0, "seed": 0, "stream": False}
    try:
        r = _post(base_url.rstrip("/") + "/v1/completions", body, timeout, api_key)
        return r["choices"][0]["text"], None
    except urllib.error.HTTPError as e:
        return None, f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
    except Exception as e:  # timeouts, refused connections, malformed replies
        return None, f"{type(e).__name__}: {e}"


def run_server(base_url: str, samples: list[Sample], model: str | None = None,
               concurrency: int = 4, timeout: float = 600, api_key: str | None = None,
               log=print) -> list[dict]:
    card = server_card(base_url, api_key=api_key)
    model = model or card["id"]
    limit = card.get("max_model_len")
    if isinstance(limit, int):
        over = sum(s.length + s.max_tokens > limit for s in samples)
        if over:
            log(f"[longctx] warning: {over} prompts + their max_tokens exceed the server's "
                f"max_model_len={limit}; they will fail (use shorter --lengths)")
    t0 = time.time()

    def one(s: Sample) -> dict:
        text, err = complete(base_url, model, s, timeout, api_key)
        sc = scoring.score(text, s.answers, s.metric) if text is not None else 0.0
        return {**s.to_json(), "prediction": text, "error": err, "score": sc}

    with ThreadPoolExecutor(max(1, concurrency)) as ex:
        rows = list(ex.map(one, samples))
    errs = sum(r["error"] is not None for r in rows)
    log(f"[longctx] {base_url}: {len(rows)} samples in {time.time() - t0:.1f}s, {errs} errors")
    return rows


def aggregate(rows: list[dict], seed: int = 0) -> dict:
    """Per task, per task x length and per niah_single depth: mean score and 95% interval.
    Failed requests count as 0 (and are reported)."""
    out: dict = {"tasks": {}, "task_length": {}, "niah_depth": {}}
    by: dict = {}
    for r in rows:
        by.setdefault(("tasks", r["task"]), []).append(r)
        by.setdefault(("task_length", f"{r['task']}@{r['length']}"), []).append(r)
        if r["task"] == "niah_single" and r["depth"] is not None:
            by.setdefault(("niah_depth", f"{r['length']}@{r['depth']:g}"), []).append(r)
    for (kind, key), rs in sorted(by.items()):
        s = scoring.summarize([r["score"] for r in rs], seed=seed)
        s["errors"] = sum(r["error"] is not None for r in rs)
        out[kind][key] = s
    allv = [r["score"] for r in rows]
    out["overall"] = {**scoring.summarize(allv, seed=seed),
                      "errors": sum(r["error"] is not None for r in rows)}
    return out


def compare(rows_a: list[dict], rows_b: list[dict], seed: int = 0) -> dict:
    """Paired differences (a - b) per task and overall."""
    out = {}
    tasks = sorted({r["task"] for r in rows_a})
    for t in tasks:
        a = [r["score"] for r in rows_a if r["task"] == t]
        b = [r["score"] for r in rows_b if r["task"] == t]
        out[t] = scoring.paired_bootstrap_diff(a, b, seed=seed)
    out["overall"] = scoring.paired_bootstrap_diff([r["score"] for r in rows_a],
                                                   [r["score"] for r in rows_b], seed=seed)
    return out


def _fmt(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def table(result: dict) -> str:
    """Markdown side-by-side table: one row per task and task@length, one column per server."""
    labels = [r["label"] for r in result["runs"]]
    head = "| task | n | " + " | ".join(f"{lb} (95% CI)" for lb in labels)
    diff = "diff" in result
    if diff:
        head += f" | {labels[0]} - {labels[1]} (95% CI)"
    lines = [head + " |", "|" + "---|" * (2 + len(labels) + (1 if diff else 0))]
    first = result["runs"][0]["summary"]
    keys = [("tasks", k) for k in first["tasks"]] + [("task_length", k)
                                                      for k in first["task_length"]]
    keys += [("niah_depth", k) for k in first["niah_depth"]]
    for kind, k in keys + [("overall", None)]:
        cells = []
        for r in result["runs"]:
            s = r["summary"]["overall"] if kind == "overall" else r["summary"][kind].get(k)
            cells.append(_fmt(s))
        n = (first["overall"] if kind == "overall" else first[kind][k])["n"]
        name = {"overall": "**overall**", "niah_depth": f"niah_single depth {k}"}.get(kind, k)
        row = f"| {name} | {n} | " + " | ".join(cells)
        if diff:
            d = result["diff"].get("overall" if kind == "overall" else k) if kind in (
                "tasks", "overall") else None
            row += " | " + (f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                            if d else "")
        lines.append(row + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = result["runs"]
    tasks = list(runs[0]["summary"]["tasks"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 4))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        s = [r["summary"]["tasks"][t] for t in tasks]
        means = [x["mean"] for x in s]
        err = [[m - x["ci95"][0] for m, x in zip(means, s)],
               [x["ci95"][1] - m for m, x in zip(means, s)]]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=r["label"])
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (RULER string match), 95% CI")
    ax.set_title(f"long-context suite, lengths {result['lengths']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    p.add_argument("--compare-url", default=None, help="second server, same prompts")
    p.add_argument("--labels", default=None, help="comma-separated, e.g. anchor,stock")
    p.add_argument("--tokenizer", required=True,
                   help="local folder with the served model's tokenizer")
    p.add_argument("--model", default=None, help="model name (default: the server's first)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help=f"default: {' '.join(DEFAULT_TASKS)} (hard_needle only if installed)")
    p.add_argument("--lengths", nargs="+", default=["4096", "8192", "16384", "32000"],
                   help="exact prompt lengths in tokens (8k = 8000, 8K = 8192); the server's "
                        "max_model_len must hold length + max_tokens (<= 120)")
    p.add_argument("--depths", type=float, nargs="+",
                   default=[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0],
                   help="needle depths for niah_single, fractions of the haystack")
    p.add_argument("--samples", type=int, default=10, help="samples per task x length (x depth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default="auto", choices=["auto", "pydoc", "kjv"])
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--api-key", default=None)
    p.add_argument("--out", default="longctx_eval.json")
    p.add_argument("--save-predictions", action="store_true",
                   help="keep every sample's prediction in the JSON (default: yes for <= 2000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vllm_anchor.serving.prompts import load_tokenizer, parse_length
    lengths = [parse_length(x) for x in args.lengths]
    tasks = args.tasks or [t for t in DEFAULT_TASKS
                           if t != "hard_needle" or hard_needle_available()]
    urls = [args.base_url] + ([args.compare_url] if args.compare_url else [])
    labels = (args.labels.split(",") if args.labels else
              (["anchor", "stock"] if args.compare_url else ["server"]))
    if len(labels) != len(urls):
        print(f"error: {len(urls)} servers but labels {labels}", file=sys.stderr)
        return 2
    tok = load_tokenizer(args.tokenizer)
    hs = Haystack(tok, corpus=args.corpus)
    try:
        samples = build_suite(hs, tasks, lengths, args.depths, args.samples, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"[longctx] {len(samples)} samples: tasks {tasks}, lengths {lengths}")
    runs = []
    for url, label in zip(urls, labels):
        try:
            rows = run_server(url, samples, args.model, args.concurrency, args.timeout,
                              args.api_key, log)
        except Exception as e:  # /v1/models unreachable
            print(f"error: {label} server {url}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        runs.append({"label": label, "url": url, "summary": aggregate(rows, args.seed),
                     "rows": rows})
    result = {"tasks": tasks, "lengths": lengths, "depths": args.depths,
              "samples_per_cell": args.samples, "seed": args.seed, "tokenizer": args.tokenizer,
              "corpus": args.corpus, "haystack_sentences": len(hs.sentences), "decoding": "greedy (temperature 0)",
              "prompt_format": "token IDs to /v1/completions",
              "scoring": ("RULER string_match_all (case-insensitive substring; hard_needle: first "
                          "line only); failed requests score 0"),
              "ci": "95%: Wilson for 0/1 scores, percentile bootstrap (2000, seeded) otherwise",
              "runs": runs}
    if len(runs) == 2:
        result["diff"] = compare(runs[0]["rows"], runs[1]["rows"], args.seed)
    if not args.save_predictions and len(samples) > 2000:
        for r in runs:
            r.pop("rows")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table(result)
    result["table"] = md
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(md)
    png = str(out.with_suffix(".png"))
    plot(result, png)
    print(md)
    print(f"wrote {out}, {out.with_suffix('.md')} and {png}")
    errors = sum(r["summary"]["overall"]["errors"] for r in runs)
    return 3 if errors == len(samples) * len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
