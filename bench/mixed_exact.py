"""Greedy output of a mixed batch from two servers: one long prompt and several short ones sent
together while the server is busy with a first ("blocker") prompt, so that vLLM schedules them
in its next engine step with the short new prompts after the long one (the V1 runner's order:
decodes, chunked-prefill continuations, then first chunks in arrival order).

With θ = ∞ the anchor backend computes dense attention, so every request's greedy continuation
must equal stock FlashAttention's token for token (or, where bf16 rounding flips a near-tie, the
chosen tokens' logprobs agree within ``--tol`` up to that point). This checks the step's split:
the anchor kernels take the long prompt's rows, FlashAttention the requests before and after it
(the short ones after it get their own metadata and a slice of the batch starting at their first
token). The prompts are real text sent as token IDs, each from its own random place (no prompt
is a prefix of another, and each round draws new ones), so no prefix cache answers a repeat.

The first ``--warmup-rounds`` rounds (default 1) are sent the same way and not compared: the
first round on freshly started servers did not repeat (lease29_h100/routing/: its short prompts
moved by up to 0.15 in logprob against stock, and V1 logged a step of another composition than
lease28's, while rounds 1 and 2 repeated lease28's values to the digit); a comparison of two
different step compositions measures the GEMMs' batch-shape rounding, not the split.

  python bench/mixed_exact.py --a http://127.0.0.1:8001 --b http://127.0.0.1:8002 \
      --tokenizer $SMOLLM2 --long 30000 --short 300 700 1500 2500 --rounds 3 --out mixed.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exact_http import cache_warning, complete_with_usage  # noqa: E402  (one greedy completion)


def send_together(base: str, prompts: list[list[int]], max_tokens: int, stagger_s: float = 0.005,
                  complete_fn=complete_with_usage) -> list[tuple[list[str], list[float], int | None]]:
    """All prompts at once, in list order (each ``stagger_s`` after the one before, so the server
    sees them in that order and schedules them in one step): each one's tokens, logprobs and
    prompt tokens answered from the prefix cache."""
    def one(i):
        time.sleep(i * stagger_s)
        return complete_fn(base, prompts[i], max_tokens)
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, range(len(prompts))))


def compare(a: tuple[list[str], list[float]], b: tuple[list[str], list[float]], tol: float) -> dict:
    """Token-by-token comparison of two greedy continuations (as bench/exact_http.py)."""
    (tok_a, lp_a), (tok_b, lp_b) = a[:2], b[:2]
    first_diff = next((i for i, (x, y) in enumerate(zip(tok_a, tok_b)) if x != y), None)
    if first_diff is None and len(tok_a) != len(tok_b):
        first_diff = min(len(tok_a), len(tok_b))
    n_same = len(tok_a) if first_diff is None else first_diff
    max_dlp = max((abs(x - y) for x, y in zip(lp_a[:n_same], lp_b[:n_same])), default=0.0)
    identical = first_diff is None
    return {"generated": len(tok_a), "identical": identical, "first_difference_at": first_diff,
            "max_abs_logprob_diff_before_it": max_dlp,
            # a flip with equal tokens before it is a near-tie only if the two agreed closely there
            "ok": identical or (n_same > 0 and max_dlp <= tol)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="server under test (anchor, θ = ∞)")
    ap.add_argument("--b", required=True, help="reference server (stock FLASH_ATTN)")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--blocker", type=int, default=20000,
                    help="tokens of a prompt sent before the others, so that they arrive while the "
                         "server is busy with it and are scheduled together in its next step "
                         "(0: none); compared like the others")
    ap.add_argument("--long", type=int, default=30000, help="tokens of the long prompt (sent next)")
    ap.add_argument("--short", type=int, nargs="+", default=[300, 700, 1500, 2500],
                    help="tokens of the short prompts sent right after it")
    ap.add_argument("--rounds", type=int, default=3, help="compared rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1,
                    help="rounds sent first to both servers and not compared (their own prompts)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.warmup_rounds < 0:
        ap.error("--rounds must be at least 1 and --warmup-rounds at least 0")
    from vllm_anchor.serving.prompts import PromptBuilder, load_tokenizer
    builder = PromptBuilder(load_tokenizer(a.tokenizer), corpus="pydoc", mode="ids", seed=a.seed, max_len=a.long)
    lengths = ([a.blocker] if a.blocker else []) + [a.long] + list(a.short)
    for w in range(a.warmup_rounds):  # prompts of their own: the compared rounds' stay uncached
        warm = [builder.build(n, key=f"warmup{w}/{i}").ids for i, n in enumerate(lengths)]
        send_together(a.a, warm, a.max_tokens)
        send_together(a.b, warm, a.max_tokens)
    rounds, ok = [], True
    for r in range(a.rounds):
        # each prompt its own random start and prefix: no prompt is a prefix of another
        prompts = [builder.build(n, key=f"{r}/{i}").ids for i, n in enumerate(lengths)]
        out_a = send_together(a.a, prompts, a.max_tokens)
        out_b = send_together(a.b, prompts, a.max_tokens)
        rows = [{"prompt_tokens": n, **compare(x, y, a.tol), "cached_prompt_tokens_a": x[2],
                 "cached_prompt_tokens_b": y[2]} for n, x, y in zip(lengths, out_a, out_b)]
        rounds.append({"round": r, "requests": rows})
        for server, key in ((a.a, "cached_prompt_tokens_a"), (a.b, "cached_prompt_tokens_b")):
            cached = sum(row[key] or 0 for row in rows)
            line = cache_warning(f"{server} (round {r})", cached, sum(lengths))
            if line:
                print(line)
        for row in rows:
            ok &= row["ok"]
            print(f"round {r}: {row['prompt_tokens']:>6}-token prompt, {row['generated']} greedy tokens: "
                  f"identical={row['identical']} first_difference_at={row['first_difference_at']} "
                  f"max|dlogprob|={row['max_abs_logprob_diff_before_it']:.4f} -> {'ok' if row['ok'] else 'FAIL'}")
    with open(a.out, "w") as f:
        json.dump({"command": " ".join(sys.argv), "blocker": a.blocker, "long": a.long, "short": a.short,
                   "warmup_rounds": a.warmup_rounds, "ok": ok, "rounds": rounds}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
