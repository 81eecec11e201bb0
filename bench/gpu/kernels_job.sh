#!/usr/bin/env bash
# GPU job 1 (one H100, about 8 min): GPU test suite, the SmolLM2 kernel benchmark on real Q/K/V
# (default config, then config variants at 32k with per-step times), and the calibration tables.
# Usage on the GPU host: bash bench/gpu/kernels_job.sh   (results under $OUT)
source bench/gpu/setup.sh
cd /tmp
echo "== $GPU_NAME"; date
T=$SECONDS
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$OUT/gpu_tests.log" | tail -4
echo "gpu tests: $((SECONDS - T)) s"; T=$SECONDS
timeout 200 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" \
  --out "$OUT/kernels_smollm2.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/kernels_smollm2.log"
echo "smollm2 default sweep: $((SECONDS - T)) s"; T=$SECONDS
# Variants at 32k, with step times: which knob moves SmolLM2's density/recall/speed trade-off.
for v in "" "--no-share-gqa" "--local-tokens 1024" "--local-tokens 2048 --no-share-gqa" "--pool-block 64"; do
  tag=$(echo "default $v" | tr -d ' -' )
  echo "== variant: ${v:-default}"
  timeout 90 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 8 10 12 \
    --steps $v --out "/tmp/var_$tag.json" 2>&1 | grep '^{' | tee -a "$OUT/kernels_smollm2_variants.log"
done
python3 - "$OUT/kernels_smollm2_variants.json" /tmp/var_*.json <<'PY'
import json, sys
out = {p: json.load(open(p)) for p in sys.argv[2:]}
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
echo "variants: $((SECONDS - T)) s"; T=$SECONDS
timeout 150 vllm-anchor calibrate --model "$SMOLLM2" --device cuda --lengths 8192 16384 32768 \
  --thetas 8 10 12 14 16 --out "$OUT/calibrate_smollm2_h100.json" 2>&1 | grep -v "Loading weights" | tail -60 \
  | tee "$OUT/calibrate_smollm2_h100.log"
echo "calibrate: $((SECONDS - T)) s"; date
