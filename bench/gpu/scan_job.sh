#!/usr/bin/env bash
# GPU job 23 (one H100, one call, about 5 min): the scan's plain fast path. Job 21 measured the
# scan at 4.88 ms (Llama shape, 128k) against 3.62-3.72 ms before the tail existed: every scan
# program ran the tail's per-block load and the twin check. Now a segment without tail or twin
# runs a loop compiled without them (stripe_scan_kernel PLAIN_FAST_PATH, default on).
#   - the whole GPU suite (the scan changed);
#   - bench/step_profile.py, Llama shape at 128k, FA3 beside it: the fast path vs
#     --launch scan.PLAIN_FAST_PATH=False (the loop of 0093f08), twice each, alternating;
#   - bench/kernels.py smollm2 at 32k, theta 9/10/12 with step times, the tail on and off, G 2048
#     and 1024 (issue 2's SmolLM2 target).
# Results go straight to $OUT/scan/.
# Usage on the GPU host: bash bench/gpu/scan_job.sh
source bench/gpu/setup.sh
cd /tmp
R=$OUT/scan; mkdir -p "$R"
echo "== $GPU_NAME"; date
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" > "$R/gpu_tests.log" 2>&1
tail -3 "$R/gpu_tests.log"
lap "gpu tests"
step_profile_128k fast1
step_profile_128k slow1 scan.PLAIN_FAST_PATH=False
step_profile_128k fast2
step_profile_128k slow2 scan.PLAIN_FAST_PATH=False
timeout 200 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 9 10 12 \
  --steps --budget 0.08 --sweep base tail_tokens=0 group_size=1024 group_size=1024,tail_tokens=0 \
  --out "$R/sweep_scan.json" > "$R/sweep_scan.log" 2>&1
python3 - "$R/sweep_scan.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{s['variant']:<28} theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} "
          f"steps {s['anchor_step_ms']:.1f}/{s['stripe_step_ms']:.1f}/{s['sparse_step_ms']:.1f} ms fa3 {s['fa3_ms_all_layers']:.1f}")
PY
lap "smollm2 sweep"
date
