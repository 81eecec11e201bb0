#!/usr/bin/env bash
# GPU job 22 (one H100, one call, about 5 min): where the served 128k floor loses ~33 ms per step.
# bench/prefill_walk.py (job 21) put the anchor path's kernels at 145 ms for a 131072-token
# prompt in 16k chunks (SmolLM2's shape) against FA3's 1253 ms, which predicts a floor TTFT near
# 443 ms; the server measured 709 ms (stock 1550 in that run). Here vLLM's own torch profiler records the
# worker while each server prefills one 131000-token prompt, after one unprofiled warm-up prompt:
#   stock FLASH_ATTN (8002), the floor (8004: theta -1000, every chunk anchored, no guard), the
#   defaults (8001); bench/trace_gaps.py then lists each trace's GPU idle gaps, the host calls
#   inside them, per-step busy time and the CUDA runtime totals (summaries only: traces are big).
# Ran on an H100 80GB HBM3 at fd06433 (bench/results/lease21_h100/trace/): only the defaults
# server's trace held the request (its summary and vLLM's profiler table are there); the stock and
# floor traces came back empty (the profiler table lists no engine step, cause not found), and
# only 8 of the files written to $OUT/trace came back (the device's limit). Results now go to
# $OUT/trace.tar.gz, with each bench run's whole output and the profiler's own table, and the
# servers run at 16384 batched tokens as they did then.
# Usage on the GPU host: bash bench/gpu/trace_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results trace trace
echo "== $GPU_NAME"; date
smollm2_common 128k
COMMON=("${COMMON[@]/12G/10G}" --max-num-batched-tokens 16384)
prof() { echo "{\"profiler\": \"torch\", \"torch_profiler_dir\": \"/tmp/prof-$1\", \"torch_profiler_with_stack\": false, \"ignore_frontend\": true}"; }
serve_fa 8002 --profiler-config "$(prof 8002)"; P2=$!
serve_anchor 8004 '{"theta": -1000, "min_seq_len": 1, "density_guard": 1.0}' --profiler-config "$(prof 8004)"; P4=$!
serve_anchor 8001 '{}' --profiler-config "$(prof 8001)"; P1=$!
servers_up 300 8002:$P2 8004:$P4 8001:$P1
lap "servers up"
one_prompt() {  # one_prompt PORT SEED: a fresh 131000-token prompt, 1 output token; prints its TTFT line
  timeout 60 vllm-anchor bench --base-url http://127.0.0.1:$1 --tokenizer "$SMOLLM2" --input-lens 131000 \
    --num-prompts 1 --num-warmups 0 --output-len 1 --seed $2 --no-progress --result-dir $R \
    --result-filename ttft_$1_seed$2 > $R/bench_$1_seed$2.log 2>&1; grep "^results:" $R/bench_$1_seed$2.log || tail -3 $R/bench_$1_seed$2.log
}
for port in 8002 8004 8001; do
  one_prompt $port 1  # warm-up, not profiled
  curl -s -X POST http://127.0.0.1:$port/start_profile >/dev/null
  one_prompt $port 2
  curl -s -X POST http://127.0.0.1:$port/stop_profile >/dev/null
  for _ in $(seq 30); do  # the worker writes its trace after stop_profile returns
    t=$(find /tmp/prof-$port -name "*.pt.trace.json*" -printf "%T@ %p\n" 2>/dev/null | sort -nr | head -1 | cut -d" " -f2-)
    [ -n "$t" ] && break; sleep 2
  done
  while [ -n "$t" ]; do  # until the file stops growing
    n=$(stat -c %s "$t"); sleep 3; [ "$(stat -c %s "$t")" = "$n" ] && break
  done
  ls -laR /tmp/prof-$port/ > $R/trace_files_$port.txt 2>&1
  cat /tmp/prof-$port/profiler_out_*.txt > $R/profiler_table_$port.txt 2>/dev/null
  [ -n "$t" ] && timeout 120 python3 "$REPO/bench/trace_gaps.py" "$t" --out $R/trace_gaps_$port.json > $R/trace_gaps_$port.log 2>&1
  head -24 $R/trace_gaps_$port.log
  lap "trace $port"
done
anchor_metrics 8004 $R/metrics_8004.txt
anchor_metrics 8001 $R/metrics_8001.txt
stop_servers $P1 $P2 $P4
date
