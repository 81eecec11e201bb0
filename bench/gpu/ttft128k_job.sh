#!/usr/bin/env bash
# GPU job 6 (one H100, about 5 min): TTFT and ITL at 32K and 131000 tokens, SmolLM2 YaRN x16:
# anchor with per-query-head lists (share_gqa=false) vs stock FLASH_ATTN, both up at once.
source bench/gpu/setup.sh
cd /tmp
R=/tmp/res128; mkdir -p $R
echo "== $GPU_NAME"; date
COMMON=(--hf-overrides "$YARN16" --max-model-len 131072 --kv-cache-memory-bytes 12G --served-model-name smollm2)
serve_anchor 8001 '{"share_gqa": false}'; PA=$!
serve_fa 8002; PF=$!
wait_healthy 8001 $PA 360 && wait_healthy 8002 $PF 120 || { tail -40 $R/server_*.log; stop_servers $PA $PF; exit 1; }
timeout 240 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor_per_head,stock --tokenizer "$SMOLLM2" --input-lens 32K,131000 --num-prompts 6 --num-warmups 1 \
  --output-len 64 --no-progress --result-dir $R --result-filename ttft_128k_per_head_vs_stock 2>&1 | tail -8
anchor_metrics 8001 $R/metrics_anchor.txt
stop_servers $PA $PF
tar czf "$OUT/ttft128k_job.tar.gz" -C /tmp res128; date
