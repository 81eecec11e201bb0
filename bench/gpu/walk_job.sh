#!/usr/bin/env bash
# GPU job 21 (one H100, one call, about 4 min): checks the twin scan (a group's tail item no longer
# rescans the group's keys: the other item's scan programs write its list too) and the tail-hits
# kernel's new launch (the whole 256-key slice as one block, so each pass loads its query rows
# once), and looks for the TTFT gap of the 128k floor outside the kernels:
#   - GPU tests of the lists (theta = inf equals dense in bf16, partial selections against the
#     reference, the tail tests);
#   - bench/step_profile.py, Llama shape at 128k (10% strong columns), per-kernel times and FA3
#     in the same run, the tail kernel's new launch and its previous one (--launch);
#   - bench/prefill_walk.py, SmolLM2 shape (9 q / 3 kv heads, d 64), 131072 tokens in 16k-token
#     chunks, 30 layers per chunk, the floor (theta -1000) and the defaults: anchor path vs FA3
#     per chunk, host time of issuing the layers vs their GPU time.
# Results go straight to $OUT/walk/, so a call cut short still brings back what finished.
# Ran on an H100 80GB HBM3 at 0093f08 in 161 s (bench/results/lease20_h100/walk/; the floor walk's
# JSON did not come back, its log did). Its step-profile logs were step_profile_{new,before}.log; the
# shared helper (setup.sh step_profile_128k) now names them step_profile_tail_launch_{new,before}.log.
# Usage on the GPU host: bash bench/gpu/walk_job.sh
source bench/gpu/setup.sh
cd /tmp
R=$OUT/walk; mkdir -p "$R"
echo "== $GPU_NAME"; date
timeout 110 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu/test_kernels_gpu.py" \
  -k "(theta_inf_equals_dense and bf16) or partial_selection or tail" 2>&1 | tee "$R/gpu_tests.log" | tail -3
lap "gpu tests"
# walk NAME CONFIG [--profile]: SmolLM2's shape, 131072 tokens in 16k chunks, 30 layers per chunk
walk() {
  timeout 60 python3 "$REPO/bench/prefill_walk.py" --tokens 131072 --chunk 16384 --heads 9 3 64 --layers 30 \
    --config "$2" $3 --out "$R/walk_smollm2_shape_128k_$1.json" > "$R/walk_$1.log" 2>&1
  grep -v "^ \{6\}" "$R/walk_$1.log" | tail -22
  lap "walk ($1)"
}
# most needed first: the call may be cut short by the device budget
step_profile_128k tail_launch_new
walk floor '{"theta": -1000}' --profile
step_profile_128k tail_launch_before tail.BLOCK_N=64 tail.num_warps=4 tail.num_stages=3
walk defaults '{}'
date
