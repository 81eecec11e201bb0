#!/usr/bin/env bash
# GPU job 19 (one H100, about 2 min): the tail's columns now go to a list of the tail's own rows
# (plan: a second item per group that holds tail rows) instead of the whole group's list.
# Checks the GPU tests that touch the tail and the sparse step's lists (bf16/fp16), then
# bench/kernels.py smollm2 at 32k, theta 10 and 12, step times, tail 64 vs 0 (job 18 measured
# tail 64 with the group-wide list at 1.26x vs 1.48x, theta 12; 1.69x vs 2.04x, theta 10).
# Writes straight into $OUT (no archive), so a call cut short still returns what finished.
# Ran at 5cfd422 on an H100 80GB HBM3 (bench/results/tail_rows_h100/); the tail-hits launch that
# followed is measured by trade_job.sh K and T.
# Usage on the GPU host: bash bench/gpu/tail_rows_job.sh
source bench/gpu/setup.sh
cd /tmp
R=$OUT
echo "== $GPU_NAME"; date
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" \
  -k "tail or random_selection or partial_selection" 2>&1 | tee "$R/gpu_tests.log" | tail -3
lap "gpu tests"
timeout 110 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 10 12 \
  --steps --budget 0.05 --sweep base tail_tokens=0 --out "$R/sweep_tail_rows.json" 2>&1 \
  | grep -v "Loading weights" | cut -c1-400 > "$R/sweep_tail_rows.log"
python3 - "$R/sweep_tail_rows.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{s['variant']:<16} theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} "
          f"p5 {s['recall_p5_mean']:.3f} attended {s['attended_fraction_mean']:.3f} "
          f"steps {s['anchor_step_ms']:.1f}/{s['stripe_step_ms']:.1f}/{s['sparse_step_ms']:.1f} ms fa3 {s['fa3_ms_all_layers']:.1f}")
PY
lap "smollm2 sweep"
date
