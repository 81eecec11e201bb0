"""Summary statistics of a run, under the key names of ``vllm bench serve``'s result JSON
(``mean_ttft_ms``, ``median_ttft_ms``, ``std_ttft_ms``, ``p99_ttft_ms``, ``completed``,
``failed``, ``request_throughput``, ...) plus ``error_counts`` by kind.

Definitions follow vLLM: TPOT = (E2EL - TTFT) / (output tokens - 1) per request with more than
one output token; ITL pools every inter-token gap of every successful request; percentiles are
numpy's linear interpolation; throughputs divide by the wall time of the whole run.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .client import ERROR_KINDS, RequestResult

METRICS = ("ttft", "tpot", "itl", "e2el")


def p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def _stats(name: str, values_s: list[float], percentiles) -> dict:
    arr = np.asarray(values_s or [0.0], dtype=float) * 1000.0
    out = {f"mean_{name}_ms": float(arr.mean()), f"median_{name}_ms": float(np.median(arr)),
           f"std_{name}_ms": float(arr.std())}
    for p in percentiles:
        out[f"p{p_word(p)}_{name}_ms"] = float(np.percentile(arr, p))
    return out


def summarize(results: list[RequestResult], duration_s: float,
              percentiles=(50, 90, 99)) -> dict:
    ok = [r for r in results if r.success]
    ttfts = [r.ttft for r in ok]
    e2els = [r.latency for r in ok]
    itls = [x for r in ok for x in r.itl]
    tpots = [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    in_lens = [r.server_prompt_len if r.server_prompt_len is not None else r.prompt_len
               for r in results]
    out_lens = [r.output_len if r.success else 0 for r in results]
    total_in = sum(n for n, r in zip(in_lens, results) if r.success)
    total_out = sum(out_lens)
    dur = max(duration_s, 1e-9)
    kinds = Counter(r.error_kind for r in results if not r.success)
    examples: dict[str, str] = {}
    for r in results:
        if not r.success and r.error_kind not in examples:
            examples[r.error_kind] = r.error
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    out = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur,
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
    }
    out.update(_stats("ttft", ttfts, percentiles))
    out.update(_stats("tpot", tpots, percentiles))
    out.update(_stats("itl", itls, percentiles))
    out.update(_stats("e2el", e2els, percentiles))
    out.update({
        "error_counts": {k: kinds.get(k, 0) for k in ERROR_KINDS},
        "error_examples": examples,
        "prompt_len_mismatches": sum(1 for r in ok if r.server_prompt_len is not None
                                     and r.server_prompt_len != r.prompt_len),
        "cached_prompt_tokens": sum(cached) if cached else None,
        "input_lens": in_lens,
        "output_lens": out_lens,
        "ttfts": [r.ttft for r in results],
        "itls": [r.itl for r in results],
        "start_times": [r.start_time for r in results],
        "errors": [r.error for r in results],
    })
    return out
