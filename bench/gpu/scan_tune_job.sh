#!/usr/bin/env bash
# GPU job (one H100, one call, about 7 min): the stripe scan's num_warps and num_stages, which no
# sweep has varied (bench/tune.py swept segment length and key block at 4 warps, 3 stages). The
# scan runs about 100 TFLOP/s at 128k (0.55 TFLOP in 4.9-5.5 ms, lease21_h100/scan/), far below
# the anchor (313) and sparse (458) kernels, and is 11-12% of the whole anchor path at 10%
# density, where that path is 4.95-5.01x FA3 against the issue's 5x.
#   1. bench/tune.py --kernels stripe at the Llama-3.1-8B shape (131072 tokens) and SmolLM2's
#      (32768), segment x key block x warps x stages;
#   2. bench/step_profile.py at 128k with FA3 beside it, the defaults and the Llama sweep's fastest
#      scan launch (as --launch overrides; a different segment length is only reported), twice each,
#      alternating: the whole path's ratio to FA3.
# Usage on the GPU host: bash bench/gpu/scan_tune_job.sh   (results: $OUT/scan_tune.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results scan_tune scan_tune
echo "== $GPU_NAME"; date
SWEEP=(--kernels stripe --rows 256 --block-n 32 64 128 --scan-warps 4 8 --scan-stages 1 2 3 4 --budget 0.2)
timeout 200 python3 "$REPO/bench/tune.py" --tokens 131072 --segment-tokens 2048 4096 "${SWEEP[@]}" \
  --out $R/tune_scan_llama8b_shape.json > $R/tune_scan_llama8b_shape.log 2>&1
lap "sweep, Llama shape"
timeout 150 python3 "$REPO/bench/tune.py" --tokens 32768 --heads 9 3 64 --segment-tokens 1024 2048 "${SWEEP[@]}" \
  --out $R/tune_scan_smollm2_shape.json > $R/tune_scan_smollm2_shape.log 2>&1
lap "sweep, SmolLM2 shape"
BEST=$(python3 - $R/tune_scan_llama8b_shape.json $R/tune_scan_smollm2_shape.json <<'PY'
import json, sys
for i, path in enumerate(sys.argv[1:]):
    rows = [r for r in json.load(open(path))["rows"] if r["kernel"] == "stripe" and "ms" in r]
    rows.sort(key=lambda r: r["ms"])
    for r in rows[:4]:
        print(path.rsplit("/", 1)[-1], r, file=sys.stderr)
    if i == 0 and rows:
        b = rows[0]
        print(f"scan.BLOCK_N={b['block_n']} scan.num_warps={b['num_warps']} scan.num_stages={b['num_stages']}")
        print(f"(fastest segment_tokens {b['segment_tokens']}; step_profile keeps the default)", file=sys.stderr)
PY
)
echo "fastest scan launch at the Llama shape: ${BEST:-none}"
if [ -n "$BEST" ]; then
  for round in 1 2; do
    step_profile_128k default$round
    step_profile_128k best$round $BEST
  done
fi
date
