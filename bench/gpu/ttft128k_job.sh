#!/usr/bin/env bash
# GPU job 6 (one H100, about 3-5 min): TTFT and ITL at 32K and 131000 tokens, SmolLM2 YaRN x16:
# anchor (ANCHOR_CFG, default the current defaults) vs stock FLASH_ATTN, both up at once.
#   bash bench/gpu/ttft128k_job.sh                       # serving/ttft_smollm2_128k_defaults_vs_stock*
#   ANCHOR_CFG='{"share_gqa": false}' LABEL=anchor_per_head PROMPTS=6 NAME=ttft_128k_per_head_vs_stock \
#     bash bench/gpu/ttft128k_job.sh                     # the earlier per-query-head-lists run
#   EXTRA=--interleave PROMPTS=8 NAME=ttft_smollm2_128k_defaults_vs_stock_interleaved bash bench/gpu/ttft128k_job.sh
#     (prompts sent to the two servers in turn, so drift of the card hits both alike)
ANCHOR_CFG=${ANCHOR_CFG:-'{}'} LABEL=${LABEL:-anchor} PROMPTS=${PROMPTS:-4} EXTRA=${EXTRA:-}
NAME=${NAME:-ttft_smollm2_128k_defaults_vs_stock}
source bench/gpu/setup.sh
cd /tmp
R=/tmp/res128; mkdir -p $R
echo "== $GPU_NAME"; date
COMMON=(--hf-overrides "$YARN16" --max-model-len 131072 --kv-cache-memory-bytes 12G --served-model-name smollm2)
serve_anchor 8001 "$ANCHOR_CFG"; PA=$!
serve_fa 8002; PF=$!
wait_healthy 8001 $PA 360 && wait_healthy 8002 $PF 120 || { tail -40 $R/server_*.log; stop_servers $PA $PF; exit 1; }
timeout 240 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels $LABEL,stock --tokenizer "$SMOLLM2" --input-lens 32K,131000 --num-prompts $PROMPTS --num-warmups 1 \
  --output-len 64 --no-progress --result-dir $R --result-filename $NAME $EXTRA 2>&1 | tail -8
anchor_metrics 8001 $R/metrics_anchor.txt
stop_servers $PA $PF
tar czf "$OUT/ttft128k_job.tar.gz" -C /tmp res128; date
