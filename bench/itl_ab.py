"""Decode time per step, stock FLASH_ATTN against anchor, both engines alive in one process.

Over HTTP, and with one process per backend, the decode step of SmolLM2 moved by up to 45%
between runs of the same engine (bench/results/lease22_h100/), far more than the 3% the ITL
target asks to resolve. Here both engines are built side by side in one process (each
``vllm.LLM`` runs its own engine-core process, so each keeps its own attention backend) and the
timed runs alternate between them, A B, B A, A B, …: a slow drift of the machine (clocks,
another tenant, the host) then lands on both, and the paired ratios show what is left.

Each run sends one fresh prompt (a unique first token, so the prefix cache never hits) of
``--prompt-len`` tokens, long enough that anchor runs its prefill (``min_seq_len``), and decodes
``--tokens`` tokens with ``ignore_eos``. The step time is the engine core's own clock: the time
from the first generated token to the last, divided by the steps between them (vLLM's per-
request ``first_token_ts`` / ``last_token_ts``), so prefill, detokenization and the Python loop
of this script are not in it. Decode-only steps replay vLLM's full CUDA graphs as in serving.

  python bench/itl_ab.py --out itl_ab_smollm2.json
  python bench/itl_ab.py --backends FLASH_ATTN anchor FLASH_ATTN --prompt-lens 30000 1000 --out control.json
  python bench/itl_ab.py --model bench/configs/llama-3.1-8b --dummy --out itl_ab_llama8b_dummy.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_offline import RandomTokens, haystack_ids, yarn_overrides  # noqa: E402

DEFAULT_ENGINES = ("FLASH_ATTN", "anchor")


def engine_labels(backends: list[str]) -> list[str]:
    """``backend#index``: the same backend may run in several engines (an A/A control)."""
    return [f"{b}#{i}" for i, b in enumerate(backends)]


def step_time_s(output) -> float:
    """Engine-core seconds per decode step of one finished request."""
    m = output.metrics
    if m is None or not m.first_token_ts or m.num_generation_tokens < 2:
        raise RuntimeError("request has no per-token timestamps (the engine needs disable_log_stats=False)")
    return (m.last_token_ts - m.first_token_ts) / (m.num_generation_tokens - 1)


def paired_summary(runs: dict[str, list[float]], reference: str) -> dict:
    """Per engine: the median step, and against ``reference`` the per-round ratios, their median
    and a bootstrap 95% interval of that median."""
    rng = random.Random(0)
    out = {"median_step_ms": {e: statistics.median(v) * 1e3 for e, v in runs.items()}, "vs_" + reference: {}}
    for e, v in runs.items():
        if e == reference:
            continue
        ratios = [x / r for x, r in zip(v, runs[reference])]
        boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        out["vs_" + reference][e] = {
            "pair_ratios": ratios, "median_pair_ratio": statistics.median(ratios),
            "median_pair_ratio_ci95": [boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]],
            "ratio_of_medians": statistics.median(v) / statistics.median(runs[reference]), "pairs": len(ratios)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("SMOLLM2"))
    ap.add_argument("--dummy", action="store_true", help="random weights, no tokenizer (speed only)")
    ap.add_argument("--backends", nargs="+", default=list(DEFAULT_ENGINES),
                    help="one engine each, built in this order; the first is the reference. "
                         "FLASH_ATTN anchor FLASH_ATTN adds an A/A control of the engine order")
    ap.add_argument("--max-model-len", type=int, default=32768)
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[30000],
                    help="prompt lengths, each timed in every round (30000 runs anchor's prefill; a "
                         "prompt below min_seq_len does not)")
    ap.add_argument("--tokens", type=int, default=512, help="decode steps per run")
    ap.add_argument("--pairs", type=int, default=8, help="rounds: every engine once per prompt length")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35,
                    help="each engine's share, checked against the free memory at its start")
    ap.add_argument("--kv-cache-gib", type=float, default=6.0,
                    help="each engine's KV cache, fixed (kv_cache_memory_bytes) so the second engine's "
                         "memory profile does not depend on the first")
    ap.add_argument("--anchor", default="{}", help="JSON for the anchor engines' additional_config anchor section")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if max(a.prompt_lens) + a.tokens + 2 > a.max_model_len:
        ap.error(f"--prompt-lens {max(a.prompt_lens)} + --tokens {a.tokens} do not fit --max-model-len {a.max_model_len}")

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm_anchor.serving.launcher import DEFAULT_BATCHED_TOKENS

    model_args = dict(load_format="dummy", skip_tokenizer_init=True) if a.dummy else dict(
        hf_overrides=yarn_overrides(a.max_model_len))
    labels = engine_labels(a.backends)
    engines, startup = {}, {}
    for label, b in zip(labels, a.backends):
        t = time.perf_counter()
        engines[label] = LLM(model=a.model, attention_backend=b,
                             additional_config={"anchor": json.loads(a.anchor)} if b == "anchor" else {},
                             max_model_len=a.max_model_len, kv_cache_memory_bytes=int(a.kv_cache_gib * 2 ** 30),
                             gpu_memory_utilization=a.gpu_memory_utilization,
                             max_num_batched_tokens=DEFAULT_BATCHED_TOKENS, seed=0, disable_log_stats=False,
                             **model_args)
        startup[label] = time.perf_counter() - t
        print(f"{label} engine up in {startup[label]:.0f} s", flush=True)
    tok = RandomTokens() if a.dummy else engines[labels[0]].get_tokenizer()
    bodies = {n: haystack_ids(tok, n - 1, seed=11) for n in a.prompt_lens}
    params = SamplingParams(temperature=0.0, max_tokens=a.tokens, ignore_eos=True, detokenize=not a.dummy)
    serial = iter(range(1, 10 ** 6))

    def one_run(label: str, n: int) -> float:
        prompt = TokensPrompt(prompt_token_ids=[next(serial)] + bodies[n])  # unique: no prefix-cache hit
        out = engines[label].generate([prompt], params, use_tqdm=False)[0]
        if len(out.outputs[0].token_ids) != a.tokens:
            raise RuntimeError(f"{label}: {len(out.outputs[0].token_ids)} tokens, asked {a.tokens}")
        return step_time_s(out)

    for label in labels:  # warm-up: first prefill and decode of each engine
        for n in a.prompt_lens:
            one_run(label, n)
    runs = {n: {label: [] for label in labels} for n in a.prompt_lens}
    for i in range(a.pairs):
        order = labels[i % len(labels):] + labels[: i % len(labels)]  # each engine leads in turn
        for n in a.prompt_lens:
            for label in (order if i % 2 == 0 else order[::-1]):
                runs[n][label].append(one_run(label, n))
            print(f"round {i}, prompt {n}: " + ", ".join(f"{e} {runs[n][e][-1] * 1e3:.4f} ms" for e in labels), flush=True)
    res = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "model": a.model,
           "dummy": a.dummy, "max_model_len": a.max_model_len, "engines": labels, "prompt_lens": a.prompt_lens,
           "tokens": a.tokens, "max_num_batched_tokens": DEFAULT_BATCHED_TOKENS,
           "kv_cache_gib": a.kv_cache_gib, "gpu_memory_utilization": a.gpu_memory_utilization, "startup_s": startup,
           "step_s": {str(n): r for n, r in runs.items()},
           "summary": {str(n): paired_summary(r, labels[0]) for n, r in runs.items()}}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    for n, s in res["summary"].items():
        ref = labels[0]
        line = ", ".join(f"{e} {ms:.4f} ms" for e, ms in s["median_step_ms"].items())
        ratios = "; ".join(f"{e}/{ref} {v['median_pair_ratio']:.4f} [{v['median_pair_ratio_ci95'][0]:.4f}, "
                           f"{v['median_pair_ratio_ci95'][1]:.4f}]" for e, v in s["vs_" + ref].items())
        print(f"itl_ab prompt {n}: median step {line}; median pair ratio {ratios} over {a.pairs} rounds", flush=True)


if __name__ == "__main__":
    main()
