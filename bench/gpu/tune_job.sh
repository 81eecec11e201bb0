#!/usr/bin/env bash
# GPU job 9 (one H100, three device calls of under 10 min, back to back on one warm machine):
#   A: GPU test suite + launch-parameter sweep, Llama-3.1-8B attention shape at 128k
#   B: sweep on the SmolLM2 shape (9/3 heads, d 64) at 32k + synthetic benchmark with A's winners
#   C: SmolLM2 benchmark (real Q/K/V, every layer, theta 8-16) with B's winners, and step times
# The winners are then copied into kernels/api.py:_launch_opts and kernels/plan.py.
# Usage on the GPU host: bash bench/gpu/tune_job.sh A|B|C   (results under $OUT)
source bench/gpu/setup.sh
cd /tmp
T=/tmp/tune; mkdir -p $T
echo "== $GPU_NAME, part $1"; date
case "$1" in
A)
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$T/gpu_tests.log" | tail -4
  timeout 360 python3 "$REPO/bench/tune.py" --tokens 131072 --rows 128 256 --budget 0.3 \
    --out $T/tune_llama8b_shape.json 2>&1 | tail -3
  ;;
B)
  timeout 200 python3 "$REPO/bench/tune.py" --tokens 32768 --heads 9 3 64 --rows 128 256 --budget 0.3 \
    --out $T/tune_smollm2_shape.json 2>&1 | tail -3
  timeout 330 python3 "$REPO/bench/kernels.py" synthetic --tuned $T/tune_llama8b_shape.json \
    --out $T/kernels_synthetic.json 2>&1 | tee $T/kernels_synthetic.log | grep "theta= 12.0 share=True"
  ;;
C)
  timeout 250 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --tuned $T/tune_smollm2_shape.json \
    --out $T/kernels_smollm2.json 2>&1 | grep -v "Loading weights" | tee $T/kernels_smollm2.log | tail -15
  timeout 150 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --tuned $T/tune_smollm2_shape.json \
    --lengths 32768 --thetas 8 10 12 --steps --out $T/kernels_smollm2_steps.json 2>&1 | grep '^{' \
    | tee $T/kernels_smollm2_steps.log
  ;;
esac
date
tar czf "$OUT/tune_job_$1.tar.gz" -C /tmp tune
