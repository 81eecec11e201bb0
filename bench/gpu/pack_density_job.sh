#!/usr/bin/env bash
# GPU job (one H100, one call, about 5 min): the density guard's numerator summed by the pack step
# (fp64 atomics, kernels.api.PACK_COUNTS_SELECTED, off by default) instead of four tensor ops per
# anchored layer call.
#   - the whole GPU suite (its test_pack_step_counts_the_selected_pairs_on_the_gpu turns it on);
#   - bench/gpu/trace32k_job.sh mode A with ANCHOR_KERNELS_PACK_COUNTS=1: stock, floor and defaults
#     at 32767 tokens with the engine in this process, to set against lease24_h100/trace32k/.
# A first run (8fd57aa, where the sum was always on) was cut off by the session's device budget
# before anything came back; the switch was added after it. Not run since.
# Usage on the GPU host: bash bench/gpu/pack_density_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results pack_density pack_density
echo "== $GPU_NAME"; date
gpu_suite 200
cd "$REPO" && ANCHOR_KERNELS_PACK_COUNTS=1 MODE=A bash bench/gpu/trace32k_job.sh
