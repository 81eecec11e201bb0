#!/usr/bin/env bash
# GPU job 25 (one H100, one call, about 5 min): with 65536-token chunks (job 24: the floor served
# 131000 tokens at 0.24x stock), how far does theta take the 128k TTFT? Five SmolLM2 YaRN x16
# servers at once, all at 65536 batched tokens, 6 GiB of KV cache each: stock (8012), theta 10
# (8021), theta 9 (8022), G 1024 theta 9 tail 0 (8023) (the defaults at 65536: job 24);
# TTFT at 32K and 131000 tokens, 5 prompts each, interleaved with stock. Results: $OUT/theta64k.tar.gz
# Ran on an H100 80GB HBM3 at 28964e0 (bench/results/lease21_h100/theta64k/). Its first try, with a
# fifth server for the defaults, stopped at start-up: that server's engine found less free memory
# than --gpu-memory-utilization (0.92 by default) asks for, which vLLM checks even with
# --kv-cache-memory-bytes; hence the 0.15 below.
# Usage on the GPU host: bash bench/gpu/theta64k_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results theta64k theta64k
echo "== $GPU_NAME"; date
smollm2_common 128k
COMMON=("${COMMON[@]/12G/6G}" --max-num-batched-tokens 65536 --gpu-memory-utilization 0.15)
serve_fa 8012; P12=$!

serve_anchor 8021 '{"theta": 10}'; P21=$!
serve_anchor 8022 '{"theta": 9}'; P22=$!
serve_anchor 8023 '{"theta": 9, "group_size": 1024, "tail_tokens": 0}'; P23=$!
servers_up 360 8012:$P12 8021:$P21 8022:$P22 8023:$P23
lap "servers up"
for run in "8022 theta9" "8021 theta10" "8023 g1024_theta9_tail0"; do
  set -- $run
  STOCK_PORT=8012 ttft_vs_stock 100 $1 $2 ttft_128k_64k_$2_vs_stock --input-lens 32K,131000 --num-prompts 5
  lap "ttft $2"
  anchor_metrics $1 $R/metrics_$2.txt
done
stop_servers $P12 $P21 $P22 $P23
date
