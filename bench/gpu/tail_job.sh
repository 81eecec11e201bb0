#!/usr/bin/env bash
# GPU job 17 (one H100): does scoring the chunk's last queries one by one (AnchorConfig.tail_tokens)
# win back the long-context suite points the defaults lost at 32k, and what does it cost?
# bench/results/revalidate_h100/ measured the defaults (then pooled only) at -5.0 points
# [-8.3, -1.8] vs stock at 32000 tokens, with the needle at depth 0.5 found 1 of 15 times vs 7.
#   Q (about 5.5 min; ran, bench/results/tail_h100/): the GPU tests that compare partial
#      selections with the reference (bf16 and fp16, tail on); SmolLM2 YaRN x4 (32k), three servers
#      at once: anchor with tail_tokens 64 (8001), stock FLASH_ATTN (8002), anchor with tail_tokens 0
#      (8004); the suite at 32000 tokens (15 samples per cell) for both anchor servers against
#      stock, then TTFT at 32000, interleaved, tail 64 vs stock
#   T (about 5 min; not run yet): the tail's cost. The GPU tests of the tail; the same three servers
#      at YaRN x16 (128k); TTFT at 32K and 131000, 8 prompts each, interleaved, each anchor server
#      against stock (the estimate: scan work +56% per 128k prefill in 16k chunks, a few % of TTFT)
# Usage on the GPU host: bash bench/gpu/tail_job.sh Q|T   (results: $OUT/tail_$1.tar.gz)
PART=${1:-Q}
case "$PART" in Q|T) ;; *) echo "usage: bash bench/gpu/tail_job.sh Q|T" >&2; exit 2 ;; esac
source bench/gpu/setup.sh
cd /tmp
job_results tail_$PART tail_$PART
echo "== $GPU_NAME, part $PART"; date
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" -k "partial_selection or tail" 2>&1 \
  | tee "$R/gpu_tests.log" | tail -2
lap "gpu tests"
if [ "$PART" = Q ]; then smollm2_common 32k; else smollm2_common 128k; fi
serve_anchor 8001 '{"tail_tokens": 64}'; P1=$!
serve_fa 8002; P2=$!
serve_anchor 8004 '{"tail_tokens": 0}'; P4=$!
servers_up 300 8001:$P1 8002:$P2 8004:$P4
lap "servers up"
for run in "8001 tail64" "8004 tail0"; do
  set -- $run
  if [ "$PART" = Q ]; then
    timeout 130 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:8002 \
      --labels anchor_$2,stock --tokenizer "$SMOLLM2" --lengths 32000 --samples 15 --concurrency 8 \
      --out $R/longctx_smollm2_$2_32k_vs_stock.json 2>&1 | grep -v "^\[longctx\] [0-9]*/" | grep "overall\|depth 32000@0.5\|niah_single |"
    lap "suite $2"
  else
    ttft_vs_stock 150 $1 $2 ttft_128k_$2_vs_stock --input-lens 32K,131000 --num-prompts 8
    lap "ttft $2"
  fi
  anchor_metrics $1 $R/metrics_$2.txt
done
if [ "$PART" = Q ]; then
  ttft_vs_stock 60 8001 tail64 ttft_tail64_vs_stock --input-lens 32000 --num-prompts 6
  lap "ttft"
fi
stop_servers $P1 $P2 $P4
date
