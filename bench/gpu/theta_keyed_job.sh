#!/usr/bin/env bash
# GPU job 31 (one H100, one call, about 5 min): with the density guard keyed by context (ee3a7d2),
# what TTFT at 131000 tokens does each theta give? The theta rows of the README's 65536-chunk table
# (lease21_h100/chunk, theta64k) were measured with the previous guard, one verdict per layer.
# Four SmolLM2 YaRN x16 servers at once (6 GiB of KV cache each, 65536 batched tokens): stock
# FLASH_ATTN (8002), the defaults (theta 12, 8011), theta 10 (8013), theta 9 (8014); each anchor
# server against stock with 32K and 131000-token prompts interleaved in one bench run (6 each after
# one warm-up), the bench of guard_key_job.sh MIX=1. Results: $OUT/theta_keyed.tar.gz.
# Usage on the GPU host: bash bench/gpu/theta_keyed_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results theta_keyed theta_keyed
echo "== $GPU_NAME"; date
smollm2_common 128k
COMMON=("${COMMON[@]/12G/6G}")
serve_fa 8002; P2=$!
serve_anchor 8011 '{}'; P11=$!
serve_anchor 8013 '{"theta": 10}'; P13=$!
serve_anchor 8014 '{"theta": 9}'; P14=$!
servers_up 300 8002:$P2 8011:$P11 8013:$P13 8014:$P14
lap "servers up"
for run in "8011 theta12" "8013 theta10" "8014 theta9"; do
  set -- $run
  STOCK_PORT=8002 ttft_vs_stock 200 $1 $2 ttft_$2_mix_vs_stock --input-lens 32K,131000 --num-prompts 6
  lap "ttft $2"
  anchor_metrics $1 $R/metrics_$2.txt
done
stop_servers $P2 $P11 $P13 $P14
date
