#!/usr/bin/env bash
# GPU job (one H100, one call, about 8 min): the anchor path's host time per layer call with
# kernels.launch (compiled kernels launched directly after their first call; on by default at 9ec9bc0,
# off since: no saving established), the pack step's density sum on by default, and the pooled
# queries kept in the workspace. Ran at 9ec9bc0 (bench/results/lease25_h100/host_path/).
#   1. bench/host_overhead.py: host us per anchored layer call, Triton's launches vs direct ones;
#   2. the GPU tests of the direct launch and the pack step's sum;
#   3. bench/gpu/trace32k_job.sh mode A (stock, floor, defaults at 32767 tokens, engine in process,
#      one profiled run each), to set against lease25_h100/trace32k_{on,off}/;
#   4. mode MP2 (stock and the floor with the engine core in its own process, as served).
# Usage on the GPU host: bash bench/gpu/host_path_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results host_path host_path
echo "== $GPU_NAME"; date
timeout 120 python3 "$REPO/bench/host_overhead.py" --out "$R/host_overhead.json" 2>&1 | grep -v -i warn
lap "host overhead"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu/test_kernels_gpu.py" \
  -k "direct_launch or pack_step" > "$R/gpu_tests.log" 2>&1
tail -2 "$R/gpu_tests.log"
lap "gpu tests"
cd "$REPO" && MODE=A bash bench/gpu/trace32k_job.sh 2>&1 | grep "exit\|: median\|profiled run\|^--"
cd "$REPO" && MODE=MP2 bash bench/gpu/trace32k_job.sh 2>&1 | grep "exit\|: median\|^--"
date
