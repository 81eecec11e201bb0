#!/usr/bin/env bash
# GPU job (one H100, one call, 3-4 min per mode): where a long prefill's time goes, stock against
# the anchor path, measured with vLLM's offline engine (bench/prefill_trace.py): no HTTP, no API
# server, prompts sent as token IDs. Three processes in turn, SmolLM2, 65536 batched tokens (the
# launcher's default), prefix cache off, real-text prompts, 2 warm-up and 9 timed runs each:
#   stock FLASH_ATTN; the floor ({"theta": -1000, "density_guard": 1.0}: no stripes); the defaults.
# Modes:
#   A  (default) 32767-token prompts (one output token fits 32768), YaRN x4, the engine core in
#      this process and one profiled run summarized by bench/trace_gaps.py. Ran on an H100 80GB
#      HBM3 at 1835c38 with the 32767 fix (bench/results/lease24_h100/trace32k/).
#   MP the same without the profiler, the engine core in its own process as `vllm serve` runs it.
#      Ran at 7df7fd0 (lease24_h100/trace32k_mp/); L too (trace128k/). MP2: the same, stock and the floor only, with
#      vLLM's per-request engine clocks (queued/scheduled/first token) in each run's record.
#   L  131000-token prompts, YaRN x16 (131072 positions), engine in this process, profiled.
#   D  why the floor's engine step took ~100 ms out of process (MP2) against ~68 ms for the whole
#      request in process (A): the floor three times, no profiler: out of process with
#      OMP_NUM_THREADS=16 (vLLM sets 1 for its engine process unless the variable is set), in
#      process with OMP_NUM_THREADS=1, out of process with async scheduling off.
# SKIP_STOCK=1 leaves stock out (an A/B of an anchor-only switch against a stock run of the same lease).
# Usage on the GPU host: [MODE=A|MP|MP2|L|D] [SKIP_STOCK=1] bash bench/gpu/trace32k_job.sh
source bench/gpu/setup.sh
cd /tmp
MODE=${MODE:-A}
TOKENS=32767 MAXLEN=32768 KV=6 RUNS=9 TRACE=1
case "$MODE" in
  A) NAME=trace32k ;;
  MP) NAME=trace32k_mp; TRACE=0 ;;
  MP2) NAME=trace32k_mp2; TRACE=0 ;;
  L) NAME=trace128k; TOKENS=131000 MAXLEN=131072 KV=12 RUNS=7 ;;
  D) NAME=trace32k_diag; TRACE=0 ;;
  *) echo "MODE A, MP, MP2, L or D, got '$MODE'"; exit 2 ;;
esac
job_results $NAME $NAME
echo "== $GPU_NAME"; date
[ $TRACE = 1 ] && export VLLM_ENABLE_V1_MULTIPROCESSING=0
run_one() {  # LABEL BACKEND ANCHOR_JSON [prefill_trace.py options...]
  local trace=() label=$1 backend=$2 anchor=$3
  shift 3
  [ $TRACE = 1 ] && trace=(--trace "$R/trace_$label.pt.trace.json.gz")
  set -- "$label" "$backend" "$anchor" "$@"
  timeout 170 python3 "$REPO/bench/prefill_trace.py" --model "$SMOLLM2" --backend "$backend" --anchor "$anchor" \
    --tokens $TOKENS --max-model-len $MAXLEN --kv-cache-gib $KV --runs $RUNS "${trace[@]}" "${@:4}" \
    --out "$R/prefill_$1.json" > "$R/prefill_$1.log" 2>&1
  echo "$1 exit $?"; grep -v "^INFO\|^WARNING\|^(EngineCore\|^\[" "$R/prefill_$1.log" | grep -A30 ": median" | head -30
  lap "$1"
}
FLOOR='{"theta": -1000, "density_guard": 1.0}'
if [ "$MODE" = D ]; then
  OMP_NUM_THREADS=16 run_one floor_mp_omp16 anchor "$FLOOR"
  VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 run_one floor_inproc_omp1 anchor "$FLOOR"
  run_one floor_mp_sync anchor "$FLOOR" --no-async-scheduling
else
  [ -n "$SKIP_STOCK" ] || run_one stock FLASH_ATTN '{}'
  run_one floor anchor "$FLOOR"
  [ "$MODE" = MP2 ] || run_one defaults anchor '{}'
fi
# the traces of one prompt's prefill are small gzipped (under 100 kB at 32k): they come back too
ls -la "$R"
date
