#!/usr/bin/env bash
# GPU job 9 (one H100, two device calls of under 10 min, back to back on one warm machine):
#   A: GPU test suite + launch-parameter sweeps: Llama-3.1-8B attention shape at 128k, SmolLM2
#      shape (9/3 heads, d 64) at 32k
#   B: synthetic benchmark and SmolLM2 benchmark (real Q/K/V, every layer, theta 8-16, then step
#      times at 32k) with A's winners
#   L: after the softmax scale was folded into the exponent (ea1e351), sweep block sizes / warps /
#      stages again for both shapes (rescale every block, RESCALE_TAU 0), then time the winners
#      (synthetic 128k/10%, SmolLM2 32k steps); results: bench/results/*_fma_*h100*
# The winners are then copied into kernels/api.py:_launch_opts and kernels/plan.py.
# Usage on the GPU host: bash bench/gpu/tune_job.sh A|B|L   (results under $OUT)
source bench/gpu/setup.sh
cd /tmp
T=/tmp/tune; mkdir -p $T
echo "== $GPU_NAME, part $1"; date
case "$1" in
A)
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$T/gpu_tests.log" | tail -4
  timeout 200 python3 "$REPO/bench/tune.py" --tokens 131072 --rows 128 --block-n 32 64 --stages 2 3 \
    --segment-tokens 4096 --budget 0.2 --out $T/tune_llama8b_shape.json 2>&1 | tail -1
  timeout 150 python3 "$REPO/bench/tune.py" --tokens 32768 --heads 9 3 64 --rows 128 --block-n 32 64 128 \
    --stages 2 --segment-tokens 1024 2048 --budget 0.2 --out $T/tune_smollm2_shape.json 2>&1 | tail -1
  ;;
B)
  timeout 240 python3 "$REPO/bench/kernels.py" synthetic --tuned $T/tune_llama8b_shape.json \
    --out $T/kernels_synthetic.json 2>&1 | tee $T/kernels_synthetic.log | grep "theta= 12.0 share=True"
  timeout 200 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --tuned $T/tune_smollm2_shape.json \
    --out $T/kernels_smollm2.json 2>&1 | grep '^{' | cut -c1-330 | tee $T/kernels_smollm2.log
  timeout 120 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --tuned $T/tune_smollm2_shape.json \
    --lengths 32768 --thetas 8 10 12 --steps --out $T/kernels_smollm2_steps.json 2>&1 | grep '^{' \
    | tee $T/kernels_smollm2_steps.log | cut -c1-200
  ;;
L)
  timeout 210 python3 "$REPO/bench/tune.py" --tokens 131072 --rows 128 --block-n 32 64 128 --warps 4 8 \
    --stages 2 3 --rescale-tau 0 --segment-tokens 4096 --budget 0.2 --out $T/tune_llama8b_shape_fma.json 2>&1 | tail -1
  timeout 150 python3 "$REPO/bench/tune.py" --tokens 32768 --heads 9 3 64 --rows 128 --block-n 64 128 --warps 4 8 \
    --stages 2 3 --rescale-tau 0 --segment-tokens 2048 --budget 0.2 --out $T/tune_smollm2_shape_fma.json 2>&1 | tail -1
  timeout 90 python3 "$REPO/bench/kernels.py" synthetic --lengths 131072 --densities 0.10 \
    --tuned $T/tune_llama8b_shape_fma.json --out $T/kernels_synthetic_fma_tuned.json 2>&1 \
    | tee $T/kernels_synthetic_fma_tuned.log | grep "share=True"
  timeout 100 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --tuned $T/tune_smollm2_shape_fma.json \
    --lengths 32768 --thetas 8 10 12 --steps --out $T/kernels_smollm2_fma_tuned.json 2>&1 | grep '^{' | cut -c1-330
  ;;
esac
date
tar czf "$OUT/tune_job_$1.tar.gz" -C /tmp tune
