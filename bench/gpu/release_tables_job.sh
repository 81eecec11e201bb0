#!/usr/bin/env bash
# GPU job 13 (one H100, two calls of about 5 min, A then B): the issue's full tables with the committed defaults, after
# the sparse step got its own 256-row tiles at head_dim 128 and its block body one helper:
#   A: GPU test suite; bench/kernels.py synthetic (8k/32k/64k/128k x 10% / 2% / 30% strong columns)
#   B: bench/kernels.py smollm2 (8k/16k/32k x theta 8-16, all 30 layers, real Q/K/V)
# Usage on the GPU host: bash bench/gpu/release_tables_job.sh A|B   (results: $OUT/release_tables_$1.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results release_tables release_tables_$1
echo "== $GPU_NAME"; date
case "$1" in
A)
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$R/gpu_tests.log" | tail -2
lap "gpu tests"
timeout 300 python3 "$REPO/bench/kernels.py" synthetic --out "$R/kernels_synthetic.json" 2>&1 \
  | tee "$R/kernels_synthetic.log" | grep "theta= 12.0 share=True"
lap "synthetic"
;;
B)
timeout 400 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --out "$R/kernels_smollm2.json" 2>&1 \
  | grep -v "Loading weights" > "$R/kernels_smollm2.log"
python3 - "$R/kernels_smollm2.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{s['tokens']:>6} theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} "
          f"p5 {s['recall_p5_mean']:.3f} worst layer {s['worst_layer']} {s['worst_layer_recall_mean']:.3f} "
          f"density {s['stripe_density_mean']:.3f} err {s['rel_err_mean']:.3f}")
PY
lap "smollm2"
;;
esac
date
