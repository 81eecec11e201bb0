#!/usr/bin/env bash
# GPU job 15 (one H100, two calls back to back, 6 and 3 min): is group_size 1024 a better
# default? bench/results/config_sweep_h100/ (kernels, real SmolLM2 Q/K/V at 32k) measured it
# 1.63x vs 1.49x at theta 12 (recall 0.986 vs 0.989) and 2.34x at theta 10 (recall 0.967).
#   Q: SmolLM2 YaRN x4 (32k), three servers at once: anchor G 1024 theta 12 (8001), anchor
#      G 1024 theta 10 (8004), stock FLASH_ATTN (8002); the long-context suite at 32000 tokens
#      (15 samples per cell; shorter prompts run stock attention below min_seq_len) and TTFT at
#      32000, prompts sent to anchor and stock in turn
#   T: SmolLM2 YaRN x16 (128k), the same three servers: TTFT at 32K and 131000, interleaved
# Usage on the GPU host: bash bench/gpu/group1024_job.sh Q|T   (results: $OUT/group1024_$1.tar.gz)
PART=$1
source bench/gpu/setup.sh
cd /tmp
job_results group1024_$PART group1024_$PART
echo "== $GPU_NAME, part $PART"; date
if [ "$PART" = Q ]; then smollm2_common 32k; else smollm2_common 128k; fi
serve_anchor 8001 '{"group_size": 1024}'; P1=$!
serve_fa 8002; P2=$!
serve_anchor 8004 '{"group_size": 1024, "theta": 10}'; P4=$!
servers_up 300 8001:$P1 8002:$P2 8004:$P4
lap "servers up"
for run in "8001 g1024" "8004 g1024_theta10"; do
  set -- $run
  if [ "$PART" = Q ]; then
    timeout 150 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:8002 \
      --labels anchor_$2,stock --tokenizer "$SMOLLM2" --lengths 32000 --samples 15 --concurrency 8 \
      --out $R/longctx_smollm2_$2_32k_vs_stock.json 2>&1 | grep -v "^\[longctx\] [0-9]*/" | head -12
    lap "suite $2"
    LENS=32000
  else
    LENS=32K,131000
  fi
  timeout 100 vllm-anchor bench --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:8002 \
    --labels anchor_$2,stock --tokenizer "$SMOLLM2" --input-lens $LENS --num-prompts 6 --num-warmups 1 \
    --output-len 16 --interleave --no-progress --result-dir $R --result-filename ttft_$2_vs_stock 2>&1 | tail -6
  lap "ttft $2"
  anchor_metrics $1 $R/metrics_$2.txt
done
stop_servers $P1 $P2 $P4
date
