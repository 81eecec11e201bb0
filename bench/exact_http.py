"""Greedy output of one long prompt from two servers, token by token (issue 3's exactness check).

With θ = ∞ the anchor backend computes dense attention, so its greedy continuation of a 16k
prompt must equal stock FlashAttention's token for token; where bf16 rounding flips a near-tie,
the chosen tokens' logprobs must still agree within 1e-2 up to that point. The prompt is real
text (pydoc topics) sent as token IDs, so both servers see exactly the same tokens.

  python bench/exact_http.py --a http://127.0.0.1:8003 --b http://127.0.0.1:8002 \
      --tokenizer $SMOLLM2 --length 16384 --out exact.json
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request


def complete_with_usage(base: str, ids: list[int], max_tokens: int) -> tuple[list[str], list[float], int | None]:
    """One greedy completion: its tokens, their logprobs, and the prompt tokens the server's
    prefix cache answered (None when the server does not report them: vLLM needs
    ``--enable-prompt-tokens-details``)."""
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        model = json.load(r)["data"][0]["id"]
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
            "logprobs": 1, "return_tokens_as_token_ids": True, "ignore_eos": True}
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    lp = out["choices"][0]["logprobs"]
    cached = ((out.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return lp["tokens"], lp["token_logprobs"], cached


def cache_warning(server: str, cached: int | None, prompt_tokens: int) -> str | None:
    """A line saying that ``server`` answered part of a compared prompt from its prefix cache.

    The comparison is then against a different computation, not only a different kernel: on
    SmolLM2 a prefix-cache answer and a fresh prefill of the same prompt, both stock, first
    differed at token 37 with logprobs 0.158 apart (bench/results/lease28_h100/exact_floor/).
    vLLM's cache works in whole blocks, so a repeated prompt is answered from it in part."""
    if not cached:
        return None
    return (f"warning: {server} answered {cached} of {prompt_tokens} prompt tokens from its prefix cache: "
            f"compare fresh prefills (new prompts, or --no-enable-prefix-caching)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="server under test (anchor, θ = ∞)")
    ap.add_argument("--b", required=True, help="reference server (stock FLASH_ATTN)")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from vllm_anchor.serving.prompts import PromptBuilder, load_tokenizer
    prompt = PromptBuilder(load_tokenizer(a.tokenizer), corpus="pydoc", mode="ids", seed=1,
                           max_len=a.length).build(a.length)
    ids = prompt.ids
    tok_a, lp_a, cached_a = complete_with_usage(a.a, ids, a.max_tokens)
    tok_b, lp_b, cached_b = complete_with_usage(a.b, ids, a.max_tokens)
    first_diff = next((i for i, (x, y) in enumerate(zip(tok_a, tok_b)) if x != y), None)
    same = tok_a[:first_diff] if first_diff is not None else tok_a
    max_dlp = max((abs(x - y) for x, y in zip(lp_a[:len(same)], lp_b[:len(same)])), default=0.0)
    identical = first_diff is None and len(tok_a) == len(tok_b)
    result = {"prompt_tokens": len(ids), "generated": len(tok_a), "identical": identical,
              "first_difference_at": first_diff, "max_abs_logprob_diff_before_it": max_dlp,
              "ok": identical or max_dlp <= a.tol, "cached_prompt_tokens_a": cached_a,
              "cached_prompt_tokens_b": cached_b, "tokens_a": tok_a, "tokens_b": tok_b,
              "logprobs_a": lp_a, "logprobs_b": lp_b}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{len(ids)}-token prompt, {len(tok_a)} greedy tokens: identical={identical} "
          f"first_difference_at={first_diff} max|dlogprob|={max_dlp:.4f} -> {'ok' if result['ok'] else 'FAIL'}")
    for server, cached in ((a.a, cached_a), (a.b, cached_b)):
        line = cache_warning(server, cached, len(ids))
        if line:
            print(line)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
