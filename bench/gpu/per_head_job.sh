#!/usr/bin/env bash
# GPU job 5 (one H100, about 8 min): per-query-head stripe lists (share_gqa=false) served, and the
# exactness check under the V1 model runner with a same-runner control. SmolLM2, YaRN x4, 32k,
# four servers side by side (fixed 6 GiB KV cache each):
#   8001 anchor share_gqa=false (theta 12)     8002 stock FLASH_ATTN (V2 runner)
#   8003 anchor theta=inf, V1 runner, no prefix caching      8004 stock FLASH_ATTN, V1 runner, no prefix caching
# Then: exact 8003 vs 8004 (same runner) and 8002 vs 8004 (stock vs stock, the noise floor),
# the long-context suite 8001 vs 8002 at 8k/16k/32k, TTFT A/B at 8K/16K/32000, /metrics of 8001.
source bench/gpu/setup.sh
cd /tmp
R=/tmp/res; mkdir -p $R
echo "== $GPU_NAME"; date
COMMON=(--hf-overrides "$YARN4" --max-model-len 32768 --kv-cache-memory-bytes 6G --served-model-name smollm2)
serve_anchor 8001 '{"share_gqa": false}'; P1=$!
serve_fa 8002; P2=$!
VLLM_USE_V2_MODEL_RUNNER=0 serve_anchor 8003 "$EXACT_ANCHOR" \
  --no-enable-prefix-caching; P3=$!
VLLM_USE_V2_MODEL_RUNNER=0 serve_fa 8004 --no-enable-prefix-caching; P4=$!
ok=1
for pp in "8001 $P1" "8002 $P2" "8003 $P3" "8004 $P4"; do wait_healthy $pp 400 || ok=0; done
if [ $ok = 0 ]; then tail -30 $R/server_*.log; tar czf "$OUT/per_head_job.tar.gz" -C /tmp res; stop_servers $P1 $P2 $P3 $P4; exit 1; fi
grep -h "Model Runner\|gpu_model_runner.py" $R/server_8003.log $R/server_8004.log | head -3
grep -h "vllm-anchor:" $R/server_8001.log $R/server_8003.log | sort | uniq -c | head -6
T=$SECONDS
timeout 60 python3 "$REPO/bench/exact_http.py" --a http://127.0.0.1:8003 --b http://127.0.0.1:8004 \
  --tokenizer "$SMOLLM2" --length 16384 --out $R/exact_anchor_inf_v1_vs_fa_v1.json
timeout 60 python3 "$REPO/bench/exact_http.py" --a http://127.0.0.1:8002 --b http://127.0.0.1:8004 \
  --tokenizer "$SMOLLM2" --length 16384 --out $R/exact_fa_v2_vs_fa_v1.json
anchor_metrics 8003 $R/metrics_8003.txt
timeout 200 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor_per_head,stock --tokenizer "$SMOLLM2" --lengths 8000 16000 32000 --samples 10 --concurrency 8 \
  --out $R/longctx_smollm2_per_head_vs_stock.json 2>&1 | grep -v "^\[longctx\] [0-9]*/" | tail -4
echo "evals: $((SECONDS - T)) s"; T=$SECONDS
timeout 100 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor_per_head,stock --tokenizer "$SMOLLM2" --input-lens 8K,16K,32000 --num-prompts 8 --num-warmups 2 \
  --output-len 16 --no-progress --result-dir $R --result-filename ttft_smollm2_per_head_vs_stock 2>&1 | tail -6
echo "ttft: $((SECONDS - T)) s"
anchor_metrics 8001 $R/metrics_8001.txt
stop_servers $P1 $P2 $P3 $P4
tar czf "$OUT/per_head_job.tar.gz" -C /tmp res; date
