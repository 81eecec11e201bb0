"""Prefill time of one long prompt with the engine in this process, and a torch profiler trace of it.

Served at 32k, the no-stripe floor took 112 ms where stock took 148 ms and the floor's kernels
plus stock's non-attention work predict about 88 ms (bench/results/README.md, ninth session):
~24 ms of the one 32k step go somewhere outside the kernels. vLLM's own server profiler recorded
no engine step for stock and the floor (lease21_h100/trace/). Here the engine core runs inside
this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a plain ``torch.profiler`` around
``generate`` sees the scheduler, the model runner, every launch and every kernel of the step.

Each run sends a fresh real-text prompt (pydoc topics, a different shuffle per run, prefix cache
off) with ``max_tokens=1``: the wall time of ``generate`` is the prefill plus one sampling step,
as TTFT is without HTTP. After ``--warmup`` runs, ``--runs`` timed runs, then one profiled run
whose trace goes to ``--trace`` and is read by ``bench/trace_gaps.py`` (GPU busy vs idle, the
gaps and the host calls inside them, GPU time per kernel).

  VLLM_ENABLE_V1_MULTIPROCESSING=0 python bench/prefill_trace.py --backend anchor \
      --anchor '{"theta": -1000}' --tokens 32767 --out floor.json --trace floor.pt.trace.json.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_offline import haystack_ids, yarn_overrides  # noqa: E402
from trace_gaps import load_events, summarize  # noqa: E402


def engine_times_ms(m) -> dict:
    """Where a request's time went by vLLM's own per-request clocks (``RequestStateStats``, with
    ``disable_log_stats=False``): queued to scheduled and scheduled to first token on the engine
    core's monotonic clock, and the frontend's first-token latency from arrival. Empty without
    stats."""
    if m is None or not getattr(m, "first_token_ts", 0.0):
        return {}
    return {"queued_to_scheduled": (m.scheduled_ts - m.queued_ts) * 1e3,
            "scheduled_to_first_token": (m.first_token_ts - m.scheduled_ts) * 1e3,
            "frontend_first_token_latency": m.first_token_latency * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("SMOLLM2"))
    ap.add_argument("--backend", default="anchor", help="FLASH_ATTN or anchor")
    ap.add_argument("--anchor", default="{}", help="the anchor section of --additional-config (JSON)")
    ap.add_argument("--tokens", type=int, default=32767,
                    help="prompt length (plus the one output token: at most --max-model-len)")
    ap.add_argument("--max-model-len", type=int, default=32768)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="default: the launcher's (vllm_anchor.serving.launcher.DEFAULT_BATCHED_TOKENS)")
    ap.add_argument("--kv-cache-gib", type=float, default=6.0)
    ap.add_argument("--no-async-scheduling", action="store_true",
                    help="vLLM's async scheduling off (it overlaps the next step's host work with the GPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--trace", default=None, help="where the profiled run's Chrome trace goes (.json.gz)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    if a.trace and not in_process:
        ap.error("--trace needs VLLM_ENABLE_V1_MULTIPROCESSING=0: the profiler must see the engine core")

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm_anchor.serving.launcher import DEFAULT_BATCHED_TOKENS

    t = time.perf_counter()
    llm = LLM(model=a.model, attention_backend=a.backend,
              additional_config={"anchor": json.loads(a.anchor)} if a.backend.lower() == "anchor" else {},
              hf_overrides=yarn_overrides(a.max_model_len), max_model_len=a.max_model_len,
              max_num_batched_tokens=a.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS, enable_prefix_caching=False,
              kv_cache_memory_bytes=int(a.kv_cache_gib * 2 ** 30), seed=0, disable_log_stats=False,
              **({"async_scheduling": False} if a.no_async_scheduling else {}))
    startup = time.perf_counter() - t
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=1)
    seeds = iter(range(100, 10 ** 6))

    engine: list[dict] = []

    def one() -> float:
        prompt = TokensPrompt(prompt_token_ids=haystack_ids(tok, a.tokens, next(seeds)))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        (out,) = llm.generate([prompt], params, use_tqdm=False)
        wall = (time.perf_counter() - t0) * 1e3
        engine.append(engine_times_ms(out.metrics))
        return wall

    for _ in range(a.warmup):
        one()
    del engine[:]
    times = [one() for _ in range(a.runs)]
    timed_engine = list(engine)
    res = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "backend": a.backend,
           "anchor": json.loads(a.anchor), "tokens": a.tokens, "engine_in_process": in_process,
           "async_scheduling": not a.no_async_scheduling, "torch_threads_here": torch.get_num_threads(),
           "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
           "startup_s": startup, "ttft_ms": times,
           "ttft_ms_median": statistics.median(times), "engine_ms": timed_engine,
           "engine_ms_median": {k: statistics.median(e[k] for e in timed_engine) for k in timed_engine[0]}
           if timed_engine and timed_engine[0] else {}}
    where = "in" if in_process else "out of"
    print(f"{a.backend} {a.anchor} {a.tokens} tokens, engine {where} process: median {res['ttft_ms_median']:.1f} ms "
          f"(runs {', '.join(f'{x:.1f}' for x in times)}); engine medians "
          + ", ".join(f"{k} {v:.1f}" for k, v in res["engine_ms_median"].items()), flush=True)
    if a.trace:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            res["profiled_ms"] = one()
        raw = a.trace[:-3] if a.trace.endswith(".gz") else a.trace
        prof.export_chrome_trace(raw)
        if a.trace.endswith(".gz"):
            with open(raw, "rb") as f, gzip.open(a.trace, "wb") as g:
                shutil.copyfileobj(f, g)
            os.remove(raw)
        res["trace"] = a.trace
        res["trace_summary"] = summarize(load_events(a.trace), top_gaps=20, min_gap_us=100.0)
        g = res["trace_summary"]["gpu"]
        print(f"  profiled run {res['profiled_ms']:.1f} ms: GPU window {g['window_ms']:.1f} ms, busy "
              f"{g['busy_ms']:.1f}, idle {g['idle_ms']:.1f} ({g['gaps_over_min']} gaps >= 0.1 ms hold "
              f"{g['idle_in_gaps_over_min_ms']:.1f} ms)", flush=True)
        for name, k in list(res["trace_summary"]["kernels"].items())[:12]:
            print(f"  {name[:70]:<70} x{k['count']:<5} {k['total_ms']:8.2f} ms", flush=True)
        for r in res["trace_summary"]["gaps"][:6]:
            print(f"  gap at {r['start_ms']:8.2f} ms: idle {r['idle_ms']:6.2f} ms  "
                  + "; ".join(f"{h['event'][:45]} {h['overlap_ms']:.2f}" for h in r["host"][:3]), flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
