#!/usr/bin/env bash
# GPU job 17 (one H100, one call of about 6 min): does scoring the chunk's last queries one by one
# (AnchorConfig.tail_tokens) win back the long-context suite points the defaults lost at 32k?
# bench/results/revalidate_h100/ measured the defaults (then pooled only) at -5.0 points
# [-8.3, -1.8] vs stock at 32000 tokens, with the needle at depth 0.5 found 1 of 15 times vs 7.
#   the GPU tests that compare partial selections with the reference (bf16 and fp16, tail on);
#   SmolLM2 YaRN x4 (32k), three servers at once: anchor with tail_tokens 64 (8001), stock
#   FLASH_ATTN (8002), anchor with tail_tokens 0 (8004); the suite at 32000 tokens (15 samples per
#   cell) for both anchor servers against stock, then TTFT at 32000, interleaved, tail 64 vs stock
# Usage on the GPU host: bash bench/gpu/tail_job.sh   (results: $OUT/tail.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results tail tail
echo "== $GPU_NAME"; date
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" -k "partial_selection" 2>&1 \
  | tee "$R/gpu_tests.log" | tail -2
lap "gpu tests"
COMMON=(--hf-overrides "$YARN4" --max-model-len 32768 --kv-cache-memory-bytes 6G --served-model-name smollm2)
serve_anchor 8001 '{"tail_tokens": 64}'; P1=$!
serve_fa 8002; P2=$!
serve_anchor 8004 '{"tail_tokens": 0}'; P4=$!
ok=1
for pp in "8001 $P1" "8002 $P2" "8004 $P4"; do wait_healthy $pp 300 || ok=0; done
[ $ok = 1 ] || { tail -30 $R/server_*.log; stop_servers $P1 $P2 $P4; exit 1; }
lap "servers up"
for run in "8001 tail64" "8004 tail0"; do
  set -- $run
  timeout 130 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:8002 \
    --labels anchor_$2,stock --tokenizer "$SMOLLM2" --lengths 32000 --samples 15 --concurrency 8 \
    --out $R/longctx_smollm2_$2_32k_vs_stock.json 2>&1 | grep -v "^\[longctx\] [0-9]*/" | grep "overall\|depth 32000@0.5\|niah_single |"
  lap "suite $2"
  anchor_metrics $1 $R/metrics_$2.txt
done
timeout 60 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor_tail64,stock --tokenizer "$SMOLLM2" --input-lens 32000 --num-prompts 6 --num-warmups 1 \
  --output-len 16 --interleave --no-progress --result-dir $R --result-filename ttft_tail64_vs_stock 2>&1 | tail -3
lap "ttft"
stop_servers $P1 $P2 $P4
date
