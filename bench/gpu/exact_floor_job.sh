#!/usr/bin/env bash
# GPU job (one H100, one call, about 7 min): how far stock FlashAttention drifts from itself, the
# yardstick for bench/mixed_exact.py's result in lease28_h100/routing/. There anchor at theta = inf
# matched stock on every short prompt (|dlogprob| < 1e-6: the requests FlashAttention ran around
# the anchored ones are exact) but 4 of 12 long prompts (20000/30000 tokens) flipped a greedy token
# after 5-28 tokens, with top-1 logprobs 0.07-0.15 apart where tokens agreed; the single 16k prompt
# of revalidate_job.sh S has kept the same tokens since lease20 with logprobs 0.1926 apart.
#   1. the GPU suite (the Llama-shape scan launch changed: 128-key blocks, 1 stage);
#   2. the same mixed traffic (same seeds, so the same prompts) sent to a second stock server with
#      the same options (8005) and to stock with 8192-token chunks (8006, other GEMM shapes and
#      chunk boundaries), each against stock 8002, then anchor theta = inf (8001) again;
#   3. bench/exact_http.py's 16k prompt: 8006 and 8005 against 8002.
# Every comparison sends the same prompts, so from the second on stock 8002 answers them partly from
# its prefix cache while the other server computes them fresh: as run in lease28_h100/exact_floor/,
# this measured both stock's batching drift (8005, first) and its cached-vs-fresh drift (the rest).
# Usage on the GPU host: [GPU_TESTS=0] bash bench/gpu/exact_floor_job.sh   (results: $OUT/exact_floor.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results exact_floor exact_floor
echo "== $GPU_NAME"; date
[ "${GPU_TESTS:-1}" = 1 ] && gpu_suite 230
smollm2_common 32k
VLLM_USE_V2_MODEL_RUNNER=0 serve_anchor 8001 "$EXACT_ANCHOR"; P1=$!
serve_fa 8002; P2=$!
serve_fa 8005; P5=$!
serve_fa 8006 --max-num-batched-tokens 8192; P6=$!
servers_up 360 8001:$P1 8002:$P2 8005:$P5 8006:$P6
lap "servers up"
for port in 8005 8006 8001; do
  echo "== mixed traffic, $port against 8002 (the prompts of routing_job.sh's V1 run: seed 8001)"
  mixed_exact $port 8001 $R/mixed_exact_${port}_vs_8002.json > $R/mixed_exact_${port}_vs_8002.txt 2>&1
  grep -E "^round .* (2|3)0000-token" $R/mixed_exact_${port}_vs_8002.txt
  echo "short prompts ok: $(grep -E '^round .* [0-9]{3,4}-token' $R/mixed_exact_${port}_vs_8002.txt | grep -c -- '-> ok') of 12"
done
lap "mixed traffic"
for port in 8006 8005; do
  timeout 60 python3 "$REPO/bench/exact_http.py" --a http://127.0.0.1:$port --b http://127.0.0.1:8002 \
    --tokenizer "$SMOLLM2" --length 16384 --out $R/exact_16k_${port}_vs_8002.json 2>&1 | tail -1
done
lap "16k prompt"
anchor_metrics 8001 $R/metrics_8001.txt
echo "anchor-path failures logged: $(grep -c 'anchor path failed' $R/server_8001.log)"
stop_servers $P1 $P2 $P5 $P6
date
