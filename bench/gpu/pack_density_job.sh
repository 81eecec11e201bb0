#!/usr/bin/env bash
# GPU job (one H100, one call, about 5 min): the density guard's numerator summed by the pack step
# (fp64 atomics) instead of four tensor ops per anchored layer call.
#   - the whole GPU suite (bf16 and fp16 kernels, the backend on the GPU);
#   - bench/gpu/trace32k_job.sh mode A: stock, floor and defaults at 32767 tokens with the engine in
#     this process, to set against lease24_h100/trace32k/ (the same job before this change).
# Usage on the GPU host: bash bench/gpu/pack_density_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results pack_density pack_density
echo "== $GPU_NAME"; date
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" > "$R/gpu_tests.log" 2>&1
tail -3 "$R/gpu_tests.log"
lap "gpu tests"
cd "$REPO" && MODE=A bash bench/gpu/trace32k_job.sh
