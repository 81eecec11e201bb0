"""End-to-end checks and TTFT of one vLLM configuration, in-process (``vllm.LLM``), on SmolLM2.

Run once per backend and compare the JSON files (bench/compare_serving.py):

  python bench/serve_offline.py --backend FLASH_ATTN --tasks exact needle mixed prefix ttft itl --out fa.json
  python bench/serve_offline.py --backend anchor --anchor '{"theta": "inf", "min_seq_len": 4096,
      "density_guard": 1.0}' --tasks exact prefix --out anchor_inf.json

Prompts are real text (Python's pydoc topics) tokenized with the model's tokenizer and sent as
token IDs, so their lengths are exact. TTFT here is the wall time of ``generate`` with one output
token for a fresh prompt (no HTTP), median of several, after a warm-up. Prefill chunks are
``--max-num-batched-tokens`` long, by default the size ``vllm-anchor serve`` uses (runs before
stop 17 used 16384).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

YARN = {"rope_type": "yarn", "rope_theta": 100000.0, "original_max_position_embeddings": 8192}


def yarn_overrides(max_model_len: int) -> dict:
    """vLLM's ``hf_overrides`` for SmolLM2 with YaRN to ``max_model_len`` (x4 at 32768, x16 at
    131072), as the GPU jobs serve it (``$YARN4``, ``$YARN16`` in bench/gpu/setup.sh)."""
    factor = max_model_len / YARN["original_max_position_embeddings"]
    return {"rope_parameters": {**YARN, "factor": factor}, "max_position_embeddings": max_model_len}


class RandomTokens:
    """Stands in for a tokenizer with random-weight models (no tokenizer, speed only)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        rng = random.Random(text)
        return [rng.randint(1000, 100000) for _ in range(max(1, len(text) // 4))]


def haystack_ids(tok, n: int, seed: int) -> list[int]:
    if isinstance(tok, RandomTokens):
        rng = random.Random(seed)
        return [rng.randint(1000, 100000) for _ in range(n)]
    import pydoc_data.topics
    keys = sorted(pydoc_data.topics.topics)
    random.Random(seed).shuffle(keys)
    ids: list[int] = []
    for k in keys * 4:
        ids += tok.encode(pydoc_data.topics.topics[k] + "\n\n", add_special_tokens=False)
        if len(ids) >= n:
            break
    return ids[:n]


def needle_prompt(tok, n: int, depth: float, seed: int) -> tuple[list[int], str]:
    number = str(random.Random(seed).randint(10000, 99999))
    needle = tok.encode(f"\n\nThe special magic number is {number}. Remember it.\n\n", add_special_tokens=False)
    question = tok.encode("\n\nQuestion: What is the special magic number mentioned in the text above?\n"
                          "Answer: The special magic number is", add_special_tokens=False)
    body = haystack_ids(tok, n - len(needle) - len(question), seed)
    at = int(len(body) * depth)
    return body[:at] + needle + body[at:] + question, number


def _worker_stats(worker=None):
    from vllm_anchor.stats import STATS
    return STATS.snapshot()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("SMOLLM2"))
    ap.add_argument("--backend", required=True)
    ap.add_argument("--anchor", default="{}", help="JSON for --additional-config's anchor section")
    ap.add_argument("--max-model-len", type=int, default=32768)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--dummy", action="store_true",
                    help="random weights, no tokenizer (speed only): e.g. bench/configs/llama-3.1-8b")
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--tasks", nargs="+", default=["exact"])
    ap.add_argument("--ttft-lengths", type=int, nargs="+", default=[16384, 32000])
    ap.add_argument("--ttft-runs", type=int, default=4, help="the first run of each length is not counted")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                    help="prefill chunk size (default: vllm-anchor serve's, serving/launcher.py)")
    ap.add_argument("--itl-runs", type=int, default=3, help="itl: timed runs (a fresh prompt each)")
    ap.add_argument("--itl-tokens", type=int, default=256, help="itl: decode steps timed per run")
    ap.add_argument("--itl-batch", type=int, default=1, help="itl: requests decoding side by side")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc(function)
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm_anchor.serving.launcher import DEFAULT_BATCHED_TOKENS

    chunk = a.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS

    anchor = json.loads(a.anchor)
    t0 = time.perf_counter()
    model_args = dict(load_format="dummy", skip_tokenizer_init=True) if a.dummy else dict(
        hf_overrides=yarn_overrides(a.max_model_len))
    llm = LLM(model=a.model, attention_backend=a.backend, additional_config={"anchor": anchor},
              max_model_len=a.max_model_len, gpu_memory_utilization=0.6, enforce_eager=a.eager,
              enable_prefix_caching=not a.no_prefix_caching, max_num_batched_tokens=chunk, seed=0,
              tensor_parallel_size=a.tp, **model_args)
    tok = RandomTokens() if a.dummy else llm.get_tokenizer()
    res = {"backend": a.backend, "anchor": anchor, "max_model_len": a.max_model_len, "eager": a.eager,
           "tensor_parallel_size": a.tp, "max_num_batched_tokens": chunk, "gpus": torch.cuda.device_count(),
           "gpu": torch.cuda.get_device_name(), "startup_s": time.perf_counter() - t0, "command": " ".join(os.sys.argv)}
    greedy = SamplingParams(temperature=0.0, max_tokens=24, logprobs=1)

    def gen(prompts, params):
        return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    if "exact" in a.tasks:  # 16k prompt, greedy tokens + top-1 logprobs
        outs = gen([haystack_ids(tok, 16000, seed=1)], greedy)
        o = outs[0].outputs[0]
        res["exact"] = {"tokens": list(o.token_ids),
                        "logprobs": [float(next(iter(lp.values())).logprob) for lp in o.logprobs],
                        "text": o.text}
    if "needle" in a.tasks:  # 16k and 32k haystacks, needle at 10/50/90%, 3 seeds each, one batch
        cases = [(n, d, s) for n in (16000, 32000) for d in (0.1, 0.5, 0.9) for s in range(3)]
        built = [needle_prompt(tok, n, d, seed=100 * s + int(d * 10) + n) for n, d, s in cases]
        outs = gen([p for p, _ in built], SamplingParams(temperature=0.0, max_tokens=10))
        res["needle"] = [{"tokens": n, "depth": d, "seed": s, "answer": num, "output": o.outputs[0].text,
                          "found": num in o.outputs[0].text}
                         for (n, d, s), (_, num), o in zip(cases, built, outs)]
    if "mixed" in a.tasks:  # short chats and long prompts in one concurrent batch
        short = [tok.encode(f"Question {i}: name a prime number larger than {i * 7}. Answer:") for i in range(12)]
        long = [haystack_ids(tok, 30000, seed=7), haystack_ids(tok, 20000, seed=8)]
        outs = gen(short + long, SamplingParams(temperature=0.0, max_tokens=32))
        res["mixed"] = {"requests": len(outs), "finished": sum(o.finished for o in outs),
                        "empty": sum(len(o.outputs[0].token_ids) == 0 for o in outs)}
    if "prefix" in a.tasks:  # same 20k prompt twice: the second reuses the cached prefix
        p = haystack_ids(tok, 20000, seed=9)
        first = gen([p], greedy)[0]
        second = gen([p + tok.encode(" And so", add_special_tokens=False)], greedy)[0]
        again = gen([p], greedy)[0]
        res["prefix"] = {"first": list(first.outputs[0].token_ids), "again": list(again.outputs[0].token_ids),
                         "extended": list(second.outputs[0].token_ids),
                         "cached_tokens_again": getattr(again, "num_cached_tokens", None)}
    if "ttft" in a.tasks:
        one = SamplingParams(temperature=0.0, max_tokens=1, detokenize=not a.dummy)
        gen([haystack_ids(tok, 4096, seed=10)], one)  # warm-up
        res["ttft"] = {}
        for n in a.ttft_lengths:
            times = []
            for r in range(a.ttft_runs):
                p = [random.Random(r + n).randint(1000, 20000) for _ in range(8)] + haystack_ids(tok, n - 8, seed=r + n)
                t = time.perf_counter()
                gen([p], one)
                times.append(time.perf_counter() - t)
            res["ttft"][str(n)] = {"median_s": statistics.median(times[1:]), "all_s": times}
            print("ttft", n, res["ttft"][str(n)], flush=True)
    if "itl" in a.tasks:
        # Decode time per step after a 16k prompt: the same fresh prompts once with one output
        # token (prefill only) and once with 1 + N (prefill + N decode steps); the difference / N.
        # A batch of B requests decodes side by side (B = 1: the ITL a lone user sees).
        p = haystack_ids(tok, 16000, seed=11)
        n = a.itl_tokens
        one, many = SamplingParams(temperature=0.0, max_tokens=1), SamplingParams(
            temperature=0.0, max_tokens=n + 1, ignore_eos=True)
        runs = []
        for r in range(a.itl_runs + 1):  # run 0 warms up
            batch = [[r * a.itl_batch + b + 1] + p for b in range(a.itl_batch)]
            t = time.perf_counter()
            gen(batch, one)
            ttft = time.perf_counter() - t
            batch = [[r * a.itl_batch + b + 10000] + p for b in range(a.itl_batch)]
            t = time.perf_counter()
            gen(batch, many)
            if r:
                runs.append((time.perf_counter() - t - ttft) / n)
        res["itl_s"] = {"median": statistics.median(runs), "all": runs, "tokens": n, "batch": a.itl_batch}
        print("itl", res["itl_s"], flush=True)
    if a.backend.lower() in ("anchor", "custom"):
        try:
            res["anchor_stats"] = llm.collective_rpc(_worker_stats)
        except Exception as e:  # statistics are a bonus; never lose the results for them
            res["anchor_stats_error"] = repr(e)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k not in ("exact", "prefix", "needle")}, indent=1))


if __name__ == "__main__":
    main()
