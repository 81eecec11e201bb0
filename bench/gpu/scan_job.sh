#!/usr/bin/env bash
# GPU job 23 (one H100, one call, about 5 min): the kernels after a change to the stripe scan.
#   - the whole GPU suite;
#   - bench/step_profile.py, Llama shape at 128k, FA3 beside it, twice;
#   - bench/kernels.py smollm2 at 32k, theta 9/10/12 with step times, the tail on and off, G 2048
#     and 1024 (issue 2's SmolLM2 target).
# Ran on an H100 80GB HBM3 at fd06433 (bench/results/lease21_h100/scan/) as an A/B of the scan's
# plain fast path (PLAIN_FAST_PATH, then the default) against the tail-aware loop of 0093f08
# (--launch scan.PLAIN_FAST_PATH=False), alternating: the fast path was slower (scan 5.49/5.50 ms
# vs 4.93/4.90 ms) and was removed in 28964e0, so that option no longer exists. That run wrote its
# files straight to $OUT/scan and the sweep's JSON and log did not come back (8 files at most);
# results now go to $OUT/scan.tar.gz.
# Usage on the GPU host: bash bench/gpu/scan_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results scan scan
echo "== $GPU_NAME"; date
gpu_suite 200
step_profile_128k run1
step_profile_128k run2
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
