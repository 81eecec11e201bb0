#!/usr/bin/env bash
# GPU job 18 (one H100, three calls back to back on one warm machine): with the question tail on
# (tail_tokens 64, the default since job 17), can a cheaper setting keep the long-context suite,
# what does the tail cost, and how low can the anchor path take TTFT at all?
#   K (about 5 min): the whole GPU suite (the kernels changed since it last ran in full: the tail
#      loop in the scan, one load_q_rows helper); bench/kernels.py smollm2 at 32k, theta 8-12 with
#      step times, G 2048 and 1024, tail 64 and 0 (recall and the tail's kernel cost); the
#      synthetic Llama shape at 32k and 128k with the default tail
#   A (about 7 min): SmolLM2 YaRN x4 (32k), four servers at once: stock FLASH_ATTN (8002) and,
#      all with the default tail 64, theta 10 (8001), G 1024 theta 10 (8003), G 1024 (8004); the
#      suite at 32000 tokens (15 samples per cell) for each anchor server against stock, the three
#      runs side by side
#   T (about 5 min): SmolLM2 YaRN x16 (128k), five servers at once (10 GiB of KV cache each):
#      stock (8002), defaults (8001), tail 0 (8005), $CAND (8003, default G 1024), and
#      the floor (8004: theta -1000, every chunk anchored, no guard: no stripes at all, so only the
#      anchor region and the stripe search run; the TTFT no theta can beat); TTFT at 32K and
#      131000, 8 prompts each, interleaved, each anchor server against stock
# Ran on an H100 80GB HBM3 at 3e72d0c (bench/results/trade_h100/). Part A overran its 590 s call:
# a bare `wait` waited for the servers too (fixed since); its suites had finished, and their files
# were fetched from the same warm machine with a second call. In part T, ports 8001/8003/8004
# reused part A's stats folders, so those /metrics files sum both parts (serve_anchor now starts
# each server with an empty folder).
# Usage on the GPU host: [CAND=JSON] bash bench/gpu/trade_job.sh K|A|T   (results: $OUT/trade_$1.tar.gz)
PART=${1:-K}
case "$PART" in K|A|T) ;; *) echo "usage: bash bench/gpu/trade_job.sh K|A|T" >&2; exit 2 ;; esac
CAND=${CAND:-'{"group_size": 1024}'}  # the 3e72d0c run used '{"theta": 10}'
source bench/gpu/setup.sh
cd /tmp
job_results trade_$PART trade_$PART
echo "== $GPU_NAME, part $PART"; date

summary_lines() {  # summary_lines JSON: one line per (variant, theta) of a bench/kernels.py smollm2 file
  python3 - "$1" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{s['variant']:<28} theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} "
          f"p5 {s['recall_p5_mean']:.3f} attended {s['attended_fraction_mean']:.3f} "
          f"steps {s['anchor_step_ms']:.1f}/{s['stripe_step_ms']:.1f}/{s['sparse_step_ms']:.1f} ms fa3 {s['fa3_ms_all_layers']:.1f}")
PY
}

if [ "$PART" = K ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$R/gpu_tests.log" | tail -3
  lap "gpu tests"
  timeout 240 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 8 9 10 12 \
    --steps --budget 0.08 --sweep base tail_tokens=0 group_size=1024 group_size=1024,tail_tokens=0 \
    --out "$R/sweep_tail.json" 2>&1 | grep -v "Loading weights" | cut -c1-400 > "$R/sweep_tail.log"
  summary_lines "$R/sweep_tail.json"
  lap "smollm2 sweep"
  timeout 120 python3 "$REPO/bench/kernels.py" synthetic --lengths 32768 131072 --densities 0.10 0.02 \
    --out "$R/kernels_synthetic.json" 2>&1 | tee "$R/kernels_synthetic.log" | grep "share=True" | cut -c1-300
  lap "synthetic"
elif [ "$PART" = A ]; then
  smollm2_common 32k
  serve_anchor 8001 '{"theta": 10}'; P1=$!
  serve_fa 8002; P2=$!
  serve_anchor 8003 '{"group_size": 1024, "theta": 10}'; P3=$!
  serve_anchor 8004 '{"group_size": 1024}'; P4=$!
  servers_up 300 8001:$P1 8002:$P2 8003:$P3 8004:$P4
  lap "servers up"
  SUITES=()
  for run in "8001 theta10" "8003 g1024_theta10" "8004 g1024"; do
    set -- $run
    timeout 330 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:8002 \
      --labels anchor_$2,stock --tokenizer "$SMOLLM2" --lengths 32000 --samples 15 --concurrency 8 \
      --out $R/longctx_smollm2_$2_tail64_32k_vs_stock.json > $R/suite_$2.log 2>&1 &
    SUITES+=($!)
  done
  wait "${SUITES[@]}"  # the suites only: a bare `wait` would also wait for the servers
  for name in theta10 g1024_theta10 g1024; do
    echo "-- $name"; grep -v "^\[longctx\] [0-9]*/" $R/suite_$name.log | grep "overall\|depth 32000@0.5\|niah_single |"
  done
  lap "suites"
  for run in "8001 theta10" "8003 g1024_theta10" "8004 g1024"; do set -- $run; anchor_metrics $1 $R/metrics_$2.txt; done
  stop_servers $P1 $P2 $P3 $P4
else
  smollm2_common 128k
  COMMON=("${COMMON[@]/12G/10G}")
  serve_anchor 8001 '{}'; P1=$!
  serve_fa 8002; P2=$!
  serve_anchor 8003 "$CAND"; P3=$!
  serve_anchor 8004 '{"theta": -1000, "min_seq_len": 1, "density_guard": 1.0}'; P4=$!
  serve_anchor 8005 '{"tail_tokens": 0}'; P5=$!
  echo "candidate (8003): $CAND"
  servers_up 360 8001:$P1 8002:$P2 8003:$P3 8004:$P4 8005:$P5
  lap "servers up"
  for run in "8001 defaults" "8005 tail0" "8003 candidate" "8004 floor"; do
    set -- $run
    ttft_vs_stock 120 $1 $2 ttft_128k_$2_vs_stock --input-lens 32K,131000 --num-prompts 8
    lap "ttft $2"
    anchor_metrics $1 $R/metrics_$2.txt
  done
  stop_servers $P1 $P2 $P3 $P4 $P5
fi
date
