#!/usr/bin/env bash
# GPU job (one H100, one call, about 6 min): where the 32k prefill's time goes, stock against the
# anchor path, with the engine core in this process (bench/prefill_trace.py) so that a plain
# torch profiler sees the whole step. Three processes in turn, SmolLM2 YaRN x4, 65536 batched
# tokens (the launcher's default), prefix cache off, 32767-token real-text prompts (one output token fits 32768), 2 warm-up and
# 9 timed runs each, then one profiled run summarized by bench/trace_gaps.py:
#   stock FLASH_ATTN; the floor ({"theta": -1000, "density_guard": 1.0}: no stripes); the defaults.
# Ran on an H100 80GB HBM3 at 1835c38 + the 32767 fix (bench/results/lease24_h100/trace32k/).
# MP=1: the same three without the profiler, the engine core in its own process as `vllm serve`
# runs it (results in trace32k_mp/).
# Usage on the GPU host: [MP=1] bash bench/gpu/trace32k_job.sh
source bench/gpu/setup.sh
cd /tmp
if [ "${MP:-0}" = 1 ]; then NAME=trace32k_mp; TRACE=(); else NAME=trace32k; TRACE=(--trace); fi
job_results $NAME $NAME
echo "== $GPU_NAME"; date
[ "${MP:-0}" = 1 ] || export VLLM_ENABLE_V1_MULTIPROCESSING=0
run_one() {  # LABEL BACKEND ANCHOR_JSON
  timeout 170 python3 "$REPO/bench/prefill_trace.py" --model "$SMOLLM2" --backend "$2" --anchor "$3" \
    --tokens 32767 --max-model-len 32768 --runs 9 ${TRACE[@]:+--trace "$R/trace_$1.pt.trace.json.gz"} \
    --out "$R/prefill_$1.json" > "$R/prefill_$1.log" 2>&1
  echo "$1 exit $?"; grep -v "^INFO\|^WARNING\|^(EngineCore\|^\[" "$R/prefill_$1.log" | grep -A30 ": median" | head -30
  lap "$1"
}
run_one stock FLASH_ATTN '{}'
run_one floor anchor '{"theta": -1000, "density_guard": 1.0}'
run_one defaults anchor '{}'
# the traces of one 32k step are under 100 kB gzipped: they come back with the summaries
ls -la "$R"
date
