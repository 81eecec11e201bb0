#!/usr/bin/env bash
# GPU job 8 (one H100, about 5 min): decode inter-token latency, anchor (defaults) vs stock
# FLASH_ATTN, SmolLM2 YaRN x4: 256 generated tokens after 16K and 32000-token prompts, one
# request at a time, each prompt sent to both servers in turn (--interleave, ABBA order), so
# that drift of the shared host over the run lands on both alike. ITL moves ±20% per request:
# the comparison table's bootstrap interval of the ITL ratio needs ~60 requests to resolve 3%.
source bench/gpu/setup.sh
cd /tmp
R=/tmp/resitl; mkdir -p $R
COMMON=(--hf-overrides "$YARN4" --max-model-len 32768 --kv-cache-memory-bytes 8G --served-model-name smollm2)
serve_anchor 8001 '{}'; PA=$!
serve_fa 8002; PF=$!
wait_healthy 8001 $PA 300 && wait_healthy 8002 $PF 120 || { stop_servers $PA $PF; exit 1; }
timeout 400 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor,stock --interleave --tokenizer "$SMOLLM2" --input-lens 16K,32000 --num-prompts ${ITL_PROMPTS:-60} --num-warmups 2 \
  --output-len 256 --no-progress --result-dir $R --result-filename itl_smollm2_anchor_vs_stock 2>&1 | tail -5
stop_servers $PA $PF
tar czf "$OUT/itl_job.tar.gz" -C /tmp resitl
