#!/usr/bin/env bash
# GPU job 12 (one H100, two device calls of under 10 min, back to back on one warm machine):
#   A: GPU test suite (now also the sparse step's own tile size); where one call spends its time
#      (each step eager and as a CUDA-graph replay, every kernel's GPU time) at the Llama shape
#      (128k) and the SmolLM2 shape (32k); sweep the sparse step's rows per program (128 / 256)
#      at 128k, and the anchor at 256 rows
#   B: synthetic benchmark at 32k + 128k, 10% density, with the defaults (D) and with A's sparse
#      winner (T), alternating D T D T (the second pair at 128k only); SmolLM2 32k steps
# Usage on the GPU host: bash bench/gpu/sparse_tiles_job.sh A|B   (results: $OUT/sparse_tiles_$1.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results sparse_tiles sparse_tiles_$1
echo "== $GPU_NAME, part $1"; date
case "$1" in
A)
  timeout 220 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$R/gpu_tests.log" | tail -3
  lap "gpu tests"
  timeout 90 python3 "$REPO/bench/step_profile.py" --tokens 131072 --out $R/step_profile_llama8b_shape.json 2>&1 | tail -16
  timeout 60 python3 "$REPO/bench/step_profile.py" --tokens 32768 --heads 9 3 64 --out $R/step_profile_smollm2_shape.json 2>&1 | tail -16
  lap "step profiles"
  timeout 150 python3 "$REPO/bench/tune.py" --kernels sparse --tokens 131072 --rows 128 256 --block-n 64 128 \
    --warps 4 8 --stages 2 3 --budget 0.2 --out $R/tune_sparse_rows_llama8b_shape.json 2>&1 | grep -v "^{'kernel'" | tail -2
  lap "sparse sweep"
  timeout 100 python3 "$REPO/bench/tune.py" --kernels anchor --tokens 131072 --rows 256 --block-n 32 64 \
    --warps 8 --stages 2 3 --budget 0.2 --out $R/tune_anchor_rows256_llama8b_shape.json 2>&1 | grep -v "^{'kernel'" | tail -2
  lap "anchor sweep"
  ;;
B)
  for run in D1 T1 D2 T2; do
    tuned=(); [ "${run:0:1}" = T ] && tuned=(--tuned $R/tune_sparse_rows_llama8b_shape.json)
    lengths="32768 131072"; [ "${run:1}" = 2 ] && lengths=131072
    timeout 150 python3 "$REPO/bench/kernels.py" synthetic --lengths $lengths --densities 0.10 "${tuned[@]}" \
      --out "$R/synthetic_$run.json" 2>&1 | tee "$R/synthetic_$run.log" | grep "theta= 12.0 share=True"
    lap "synthetic $run"
  done
  timeout 120 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 8 10 12 \
    --steps --out "$R/smollm2_steps.json" 2>&1 | grep -v "Loading weights" | tail -1
  python3 - "$R/smollm2_steps.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} fa3 {s['fa3_ms_all_layers']:.1f} "
          f"anchor {s['anchor_ms_all_layers']:.1f} ms (steps {s['anchor_step_ms']:.1f} / {s['stripe_step_ms']:.1f} / {s['sparse_step_ms']:.1f})")
PY
  lap "smollm2"
  ;;
esac
date
