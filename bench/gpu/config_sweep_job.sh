#!/usr/bin/env bash
# GPU job 14 (one H100, three calls back to back on one warm machine: A and B about 3 min, C 7.5):
#   A, B: bench/kernels.py smollm2 at 32k (real Q/K/V, all 30 layers, theta 7-12, step times):
#         which AnchorConfig (group size, pooling block, GQA sharing) reaches mean recall >= 0.95
#         at the lowest cost; A sweeps the group size, B the pooling block and per-head lists
#   C:    tile order A/B (a LONGEST_FIRST launch option, reverse tile order, of the anchor and sparse
#         kernels, removed after this run: no gain):
#         synthetic 128k / 10% and SmolLM2 32k steps, off / on / off / on, plus the GPU suite
# Usage on the GPU host: bash bench/gpu/config_sweep_job.sh A|B|C   (results: $OUT/config_sweep_$1.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results config_sweep config_sweep_$1
echo "== $GPU_NAME, part $1"; date
THETAS=(7 8 9 10 11 12)
sweep() {  # sweep NAME SPEC...: one process, Q/K/V captured once, every SPEC x theta
  local name=$1; shift
  timeout 280 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas "${THETAS[@]}" \
    --steps --budget 0.08 --sweep "$@" --out "$R/sweep_$name.json" 2>&1 | grep -v "Loading weights" > "$R/sweep_$name.log"
  python3 - "$R/sweep_$name.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{s['variant']:<34} theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} "
          f"p5 {s['recall_p5_mean']:.3f} attended {s['attended_fraction_mean']:.3f} "
          f"steps {s['anchor_step_ms']:.1f}/{s['stripe_step_ms']:.1f}/{s['sparse_step_ms']:.1f} ms fa3 {s['fa3_ms_all_layers']:.1f}")
PY
  lap "sweep $name"
}
case "$1" in
A) sweep group base group_size=1024 group_size=512 group_size=256 ;;
B) sweep pool_share pool_block=64 group_size=1024,pool_block=64 share_gqa=false group_size=1024,share_gqa=false ;;
C)
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$R/gpu_tests.log" | tail -2
  lap "gpu tests"
  ON=(--launch anchor.LONGEST_FIRST=True sparse.LONGEST_FIRST=True)
  for run in off1 on1 off2 on2; do
    opts=(); [[ $run == on* ]] && opts=("${ON[@]}")
    timeout 60 python3 "$REPO/bench/kernels.py" synthetic --lengths 131072 --densities 0.1 "${opts[@]}" \
      --out "$R/synthetic_$run.json" 2>&1 | tee "$R/synthetic_$run.log" | grep "theta= 12.0 share=True"
    timeout 100 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 10 12 --steps \
      "${opts[@]}" --out "$R/smollm2_$run.json" 2>&1 | grep -v "Loading weights" | cut -c1-400 > "$R/smollm2_$run.log"
    python3 - "$R/smollm2_$run.json" $run <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{sys.argv[2]} smollm2 theta {s['theta']}: x{s['speedup_all_layers']:.3f} "
          f"steps {s['anchor_step_ms']:.2f}/{s['stripe_step_ms']:.2f}/{s['sparse_step_ms']:.2f} ms fa3 {s['fa3_ms_all_layers']:.1f}")
PY
    lap "tile order $run"
  done
  ;;
esac
date
