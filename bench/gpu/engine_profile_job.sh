#!/usr/bin/env bash
# GPU job (one H100, one call, about 4 min): why the anchor path's 32k step is slower and noisier
# with vLLM's engine core in its own process (as `vllm serve` runs it) than in the caller's
# (lease24_h100/trace32k_mp2/, trace32k_diag/), while stock's is not. The backend's own step
# profiler (vllm_anchor/engine_profile.py, VLLM_ANCHOR_PROFILE_*) records inside whichever process
# runs the model: a torch profiler trace of one long step, plus the garbage collections and the
# CPU time of every thread of that process in the window.
# bench/prefill_trace.py, SmolLM2 YaRN x4, 32767-token prompts, 2 warm-up + 5 timed runs per process.
# Only the prompts' 32767-token steps count (VLLM_ANCHOR_PROFILE_MIN_TOKENS): step 5 is the third
# timed run (inflated by the profiler, and the next run by the trace's export):
#   floor_mp      {"theta": -1000, "density_guard": 1.0}, engine core in its own process, step 5 traced
#   floor_inproc  the same, engine core in this process
#   off_mp        {"enabled": false} (FlashAttention through this backend: stock's path), own process
#   floor_mp_light  own process, no torch profiler: GC and thread CPU over steps 3-6 (timed runs 1-4)
# The run in bench/results/lease25_h100/engine_profile/ (311212d) counted steps of >= 1024 tokens, which
# took in three of vLLM's start-up builds: its traced step was the second warm-up run, and its light
# window opened during start-up.
# Usage on the GPU host: bash bench/gpu/engine_profile_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results engine_profile engine_profile
echo "== $GPU_NAME"; date
FLOOR='{"theta": -1000, "density_guard": 1.0}'
run_one() {  # LABEL ANCHOR_JSON MULTIPROCESSING(1|0) TORCH_TRACE(1|0) STEPS
  local label=$1 anchor=$2 d=$R/$1
  mkdir -p "$d"
  VLLM_ENABLE_V1_MULTIPROCESSING=$3 VLLM_ANCHOR_PROFILE_DIR=$d VLLM_ANCHOR_PROFILE_TORCH=$4 VLLM_ANCHOR_PROFILE_STEPS=$5 \
    VLLM_ANCHOR_PROFILE_MIN_TOKENS=32767 \
    timeout 150 python3 "$REPO/bench/prefill_trace.py" --model "$SMOLLM2" --backend anchor --anchor "$anchor" \
    --tokens 32767 --max-model-len 32768 --kv-cache-gib 6 --warmup 2 --runs 5 --out "$d/prefill.json" > "$d/prefill.log" 2>&1
  echo "$label exit $?"; grep ": median" "$d/prefill.log"
  for t in "$d"/engine-*.pt.trace.json.gz; do
    [ -f "$t" ] && python3 "$REPO/bench/trace_gaps.py" "$t" --op vllm::unified_attention_with_output --top 10 \
      --out "$d/gaps.json" | grep -v "^  step" | head -24
  done
  for j in "$d"/engine-*[0-9].json; do
    [ -f "$j" ] && python3 - "$j" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  window {r['window_ms']:.1f} ms over builds {[t for _, t in r['builds_ms_tokens']]}; torch threads {r['torch_threads']}"
      f" (OMP_NUM_THREADS {r['omp_num_threads_env']}), {len(r['cpu_affinity'] or [])} CPUs allowed, gc frozen {r['gc_frozen']}")
print(f"  gc: {len(r['gc'])} collections, {r['gc_ms_total']:.2f} ms; longest "
      + ", ".join(f"gen{g['generation']} {g['ms']:.2f} ms" for g in sorted(r['gc'], key=lambda g: -g['ms'])[:4]))
print("  thread CPU ms: " + "; ".join(f"{t['name']} {t['cpu_ms']:.0f}" for t in r["threads_cpu_ms"][:8]))
PY
  done
  lap "$label"
}
run_one floor_mp "$FLOOR" 1 1 5
run_one floor_inproc "$FLOOR" 0 1 5
run_one off_mp '{"enabled": false}' 1 1 5
run_one floor_mp_light "$FLOOR" 1 0 3:4
ls -la "$R"/*
date
