#!/usr/bin/env bash
# GPU job 16 (one H100, three calls back to back on one warm machine, K ~6 min, S ~8, T ~4):
# re-measures, on the current kernels, the issue-3 targets that were last measured on builds
# before stop 11's kernel changes.
#   K: GPU test suite (now also 256-row sparse tiles at head_dim 256); Llama-3.1-8B architecture
#      with random weights (bench/configs/llama-3.1-8b, --load-format dummy, eager), TTFT at 32768
#      and 131000 tokens, stock FLASH_ATTN then anchor (defaults), bench/serve_offline.py in-process
#      (16384-token chunks up to 52f8149; from d8b6724 the launcher's 65536, see guard_itl_job.sh G)
#      (issue 3: <= 1.05x, the density guard sends near-uniform layers dense)
#   S: SmolLM2 YaRN x4 (32k), three servers at once: anchor defaults (8001), stock FLASH_ATTN (8002),
#      anchor theta=inf on the V1 model runner without prefix caching (8003); the theta=inf greedy
#      check 8003 vs 8002 over HTTP (16k prompt, 64 tokens), decode ITL 8001 vs 8002 (256 tokens
#      after 16K / 32000-token prompts, 60 per length, interleaved), the long-context suite with
#      the defaults at 32000 tokens (15 samples per cell) beside stock in the same lease
#   T: SmolLM2 YaRN x16 (128k), anchor defaults vs stock: TTFT at 32K and 131000, interleaved, 8 prompts
# Usage on the GPU host: [GPU_TESTS=0] bash bench/gpu/revalidate_job.sh K|S|T   (results: $OUT/revalidate_$1.tar.gz)
PART=$1
case "$PART" in K|S|T) ;; *) echo "usage: bash bench/gpu/revalidate_job.sh K|S|T" >&2; exit 2 ;; esac
source bench/gpu/setup.sh
cd /tmp
job_results revalidate_$PART revalidate_$PART
echo "== $GPU_NAME, part $PART"; date

if [ "$PART" = K ]; then
  if [ "${GPU_TESTS:-1}" = 1 ]; then  # GPU_TESTS=0: the Llama part only (the suite ran in the same lease)
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$R/gpu_tests.log" | tail -3
    lap "gpu tests"
  fi
  llama_dummy_guard 220
  exit 0
fi

if [ "$PART" = S ]; then smollm2_common 32k; else smollm2_common 128k; fi
serve_anchor 8001 '{}'; P1=$!
serve_fa 8002; P2=$!
UP=(8001:$P1 8002:$P2)
if [ "$PART" = S ]; then
  VLLM_USE_V2_MODEL_RUNNER=0 serve_anchor 8003 "$EXACT_ANCHOR" \
    --no-enable-prefix-caching; UP+=(8003:$!)
fi
PIDS=("${UP[@]#*:}")
servers_up 360 "${UP[@]}"
lap "servers up"

if [ "$PART" = S ]; then
  timeout 60 python3 "$REPO/bench/exact_http.py" --a http://127.0.0.1:8003 --b http://127.0.0.1:8002 \
    --tokenizer "$SMOLLM2" --length 16384 --out $R/exact_inf_v1_noprefix_vs_fa.json 2>&1 | tail -4
  lap "exact"
  timeout 260 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
    --labels anchor,stock --interleave --tokenizer "$SMOLLM2" --input-lens 16K,32000 --num-prompts 60 --num-warmups 2 \
    --output-len 256 --no-progress --result-dir $R --result-filename itl_smollm2_anchor_vs_stock 2>&1 | tail -8
  lap "itl"
  timeout 130 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
    --labels anchor_default,stock --tokenizer "$SMOLLM2" --lengths 32000 --samples 15 --concurrency 8 \
    --out $R/longctx_smollm2_default_32k_vs_stock.json 2>&1 | grep -v "^\[longctx\] [0-9]*/" | head -12
  lap "suite"
  anchor_metrics 8003 $R/metrics_8003.txt
else
  timeout 240 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
    --labels anchor,stock --tokenizer "$SMOLLM2" --input-lens 32K,131000 --num-prompts 8 --num-warmups 1 \
    --output-len 64 --interleave --no-progress --result-dir $R --result-filename ttft_smollm2_128k_defaults_vs_stock 2>&1 | tail -8
  lap "ttft"
fi
anchor_metrics 8001 $R/metrics_8001.txt
stop_servers "${PIDS[@]}"
date
