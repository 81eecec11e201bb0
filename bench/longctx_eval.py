"""Long-context task suite (needle in a haystack, RULER-style tasks, hard-needle) against any
OpenAI-compatible server, optionally side by side with a second one.

    python bench/longctx_eval.py --base-url http://127.0.0.1:8000 \
        --compare-url http://127.0.0.1:8001 --labels anchor,stock \
        --tokenizer ~/.cache/vllm-anchor/models/smollm2-135m-instruct \
        --lengths 4K 8K 16K 32K --samples 10 --out bench/results/longctx.json

Writes OUT (JSON: per-task scores with 95% intervals, paired differences, every prediction),
OUT with .md (side-by-side table) and OUT with .png (bar plot). The logic lives in
``vllm_anchor.evals.harness``.
"""
import sys

from vllm_anchor.evals.harness import main

if __name__ == "__main__":
    sys.exit(main())
