#!/usr/bin/env bash
# GPU job (one H100, one call, about 8 min): the anchor path's host time per layer call with
# kernels.launch (compiled kernels launched directly after their first call; on by default at 9ec9bc0,
# off since: no saving established), the pack step's density sum on by default, and the pooled
# queries kept in the workspace. Ran at 9ec9bc0 (bench/results/lease25_h100/host_path/).
#   1. bench/host_overhead.py: host us per anchored layer call, Triton's launches vs direct ones;
#   2. the whole GPU suite (at 9ec9bc0 only the direct-launch and pack-step tests ran: -k);
#   3. bench/gpu/trace32k_job.sh mode A (stock, floor, defaults at 32767 tokens, engine in process,
#      one profiled run each), to set against lease25_h100/trace32k_pack_{on,off}/ and host_path/trace32k/.
# (At 9ec9bc0 the job also ran mode MP2: lease25_h100/host_path/trace32k_mp2/.)
# Ran again at 4602693, the vectorized planner's first GPU run (bench/results/lease26_h100/host_path/):
# suite 51 passed, the plan's GPU idle gone from the 32k traces.
# Usage on the GPU host: bash bench/gpu/host_path_job.sh   (about 8-9 min: give it the call's 600 s)
source bench/gpu/setup.sh
cd /tmp
job_results host_path host_path
echo "== $GPU_NAME"; date
timeout 120 python3 "$REPO/bench/host_overhead.py" --out "$R/host_overhead.json" 2>&1 | grep -v -i warn
lap "host overhead"
gpu_suite 230
cd "$REPO" && MODE=A bash bench/gpu/trace32k_job.sh 2>&1 | grep "exit\|: median\|profiled run\|gap at\|^--"
date
