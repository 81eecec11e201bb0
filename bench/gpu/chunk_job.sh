#!/usr/bin/env bash
# GPU job 24 (one H100, one call, about 8 min): is the served 128k floor bound by vLLM's cost per
# engine step? The floor (theta -1000, every chunk anchored, no guard) served 131000 tokens in
# 709 ms against stock's 1550 (lease20_h100/trade_T), where its GPU work is about 230 ms: the anchor
# kernels 145 ms (bench/prefill_walk.py) plus about 85 ms for the rest of the model (the profiler
# table of the defaults server, lease21_h100/trace/). With 16384-token chunks a 131000-token prompt
# takes 8 engine steps; if each step costs the host ~60 ms whatever the GPU does, the floor is
# host-bound and 65536-token chunks (2 steps) should cut it. Five SmolLM2 YaRN x16 servers at once
# (6 GiB of KV cache each):
#   stock FLASH_ATTN at 16384 (8002) and 65536 (8012) batched tokens,
#   the floor at 16384 (8004) and 65536 (8014), the defaults at 65536 (8011);
# TTFT at 32K and 131000 tokens, 5 prompts each, interleaved, each anchor server against the stock
# server of its own chunk size. Results: $OUT/chunk.tar.gz (the server logs, bench JSONs, /metrics).
# Ran on an H100 80GB HBM3 at 28964e0 (bench/results/lease21_h100/chunk/), when 16384 was both
# servers' default chunk; the 16384 servers now name it (the launcher's default is 65536 since).
# Usage on the GPU host: bash bench/gpu/chunk_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results chunk chunk
echo "== $GPU_NAME"; date
smollm2_common 128k
COMMON=("${COMMON[@]/12G/6G}")
FLOOR='{"theta": -1000, "min_seq_len": 1, "density_guard": 1.0}'
serve_fa 8002 --max-num-batched-tokens 16384; P2=$!
serve_fa 8012 --max-num-batched-tokens 65536; P12=$!
serve_anchor 8004 "$FLOOR" --max-num-batched-tokens 16384; P4=$!
serve_anchor 8014 "$FLOOR" --max-num-batched-tokens 65536; P14=$!
serve_anchor 8011 '{}' --max-num-batched-tokens 65536; P11=$!
servers_up 360 8002:$P2 8012:$P12 8004:$P4 8014:$P14 8011:$P11
lap "servers up"
grep -h "max_num_batched_tokens" $R/server_80*.log | grep -o "'port': [0-9]*\|'max_num_batched_tokens': [0-9]*" | paste - - 
for run in "8014 8012 floor_64k" "8004 8002 floor_16k" "8011 8012 defaults_64k"; do
  set -- $run
  STOCK_PORT=$2 ttft_vs_stock 130 $1 $3 ttft_128k_$3_vs_stock --input-lens 32K,131000 --num-prompts 5
  lap "ttft $3"
  anchor_metrics $1 $R/metrics_$3.txt
done
stop_servers $P2 $P12 $P4 $P14 $P11
date
