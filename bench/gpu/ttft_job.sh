#!/usr/bin/env bash
# GPU job 10 (one H100, about 8 min): TTFT of SmolLM2 (YaRN x16, 128k) with the tuned kernels:
# anchor with the previous defaults (density guard 0.3, min_seq_len 16384) and with the current
# ones (0.5, 24576), each against stock FLASH_ATTN, all three servers up at once (12 GiB of KV
# cache each); prompts sent to anchor and stock in turn (--interleave), 16K / 32K / 131000
# tokens. Then each anchor server's /metrics (dense fallbacks). The committed H200 results ran
# the previous defaults as '{}' and 0.5 with min_seq_len 16384 (bench/results/README.md).
source bench/gpu/setup.sh
cd /tmp
R=/tmp/resttft; mkdir -p $R
echo "== $GPU_NAME"; date
COMMON=(--hf-overrides "$YARN16" --max-model-len 131072 --kv-cache-memory-bytes 12G --served-model-name smollm2)
serve_anchor 8001 '{"density_guard": 0.3, "min_seq_len": 16384}'; PA=$!
serve_anchor 8003 '{}'; PG=$!
serve_fa 8002; PF=$!
wait_healthy 8001 $PA 360 && wait_healthy 8003 $PG 200 && wait_healthy 8002 $PF 120 \
  || { tail -30 $R/server_*.log; stop_servers $PA $PG $PF; exit 1; }
for pair in "8001 anchor_previous_defaults" "8003 anchor"; do
  set -- $pair
  timeout 200 vllm-anchor bench --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:8002 \
    --labels $2,stock --interleave --tokenizer "$SMOLLM2" --input-lens 16K,32K,131000 --num-prompts 8 \
    --num-warmups 1 --output-len 8 --no-progress --result-dir $R --result-filename ttft_${2}_vs_stock 2>&1 | tail -6
  anchor_metrics $1 $R/metrics_$2.txt
done
stop_servers $PA $PG $PF
tar czf "$OUT/ttft_job.tar.gz" -C /tmp resttft; date
