#!/usr/bin/env bash
# GPU job (one H100, one call, about 8 min): the backend's step routing of d0a0dbd (and the fallback
# to stock attention when the anchor path raises, 2b1dc4b) on real vLLM, so far only CPU-tested.
#   1. the GPU suite (the shared workspace is now keyed by plan too);
#   2. a mixed batch (bench/mixed_exact.py): a 20000-token prompt, then, while the server is busy
#      with it, one 30000-token prompt and four short new prompts, so vLLM schedules them in one
#      step with the short ones after the long one (V1's order); anchor at theta = inf (min_seq_len
#      4096, no guard) on the V1 runner (8001) and on V2 (8004) against stock FLASH_ATTN (8002),
#      greedy, 3 rounds of fresh prompts: every request must match stock token for token (or at a
#      near-tie). Before d0a0dbd the long prompt ran dense in such a step (only a qualifying tail
#      of the batch was anchored); now it runs anchor and the short prompts after it take
#      FlashAttention through their own metadata (fa_tail), which the server logs once;
#   3. speculative decoding (ngram drafts, 3 tokens): anchor defaults (8003), one 30000-token
#      prompt, 64 greedy tokens. The decode steps carry 4 query tokens of a 30000-token context,
#      which ran the anchor kernels before d0a0dbd; now the layer calls must be 30 (the prefill
#      step only), and vLLM's spec-decode counters show that drafts were verified.
# Usage on the GPU host: [GPU_TESTS=0] bash bench/gpu/routing_job.sh   (results: $OUT/routing.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results routing routing
echo "== $GPU_NAME"; date
[ "${GPU_TESTS:-1}" = 1 ] && gpu_suite 230
smollm2_common 32k
# theta = inf on the V1 runner (its reorder puts short new prompts after a long one) and on V2
VLLM_USE_V2_MODEL_RUNNER=0 serve_anchor 8001 "$EXACT_ANCHOR"; P1=$!
serve_fa 8002; P2=$!
serve_anchor 8003 '{}' --speculative-config \
  '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}'; P3=$!
serve_anchor 8004 "$EXACT_ANCHOR"; P4=$!
servers_up 360 8001:$P1 8002:$P2 8003:$P3 8004:$P4
lap "servers up"
for port in 8001 8004; do
  mixed_exact $port $port $R/mixed_exact_$port.json 2>&1 | tail -18
  anchor_metrics $port $R/metrics_$port.txt
  echo "port $port: $(grep -c 'first step with requests after the anchored ones' $R/server_$port.log) log line(s) of a step split around the anchored requests"
done
lap "mixed batch"
timeout 120 python3 - "$SMOLLM2" > $R/spec_decode.txt 2>&1 <<'PY'
import json, sys, urllib.request
from vllm_anchor.serving.prompts import PromptBuilder, load_tokenizer
ids = PromptBuilder(load_tokenizer(sys.argv[1]), corpus="pydoc", mode="ids", seed=7, max_len=30000).build(30000).ids
body = {"model": "smollm2", "prompt": ids, "max_tokens": 64, "temperature": 0.0, "ignore_eos": True}
req = urllib.request.Request("http://127.0.0.1:8003/v1/completions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=100) as r:
    out = json.load(r)
print("completion tokens", out["usage"]["completion_tokens"], "text", repr(out["choices"][0]["text"][:80]))
PY
cat $R/spec_decode.txt | tail -3
anchor_metrics 8003 $R/metrics_8003.txt
curl -s http://127.0.0.1:8003/metrics | grep -E "^vllm:spec_decode_num_(accepted|draft)_tokens_total" | tee $R/spec_counters.txt
lap "spec decode"
# the backend falls back to stock attention (and logs it) if the anchor path raises: that must
# not have happened, or the exactness above proves nothing about the split
echo "anchor-path failures logged: $(cat $R/server_800[134].log | grep -c 'anchor path failed')"
stop_servers $P1 $P2 $P3 $P4
date
