#!/usr/bin/env bash
# GPU job (one H100, one call, about 5 min): the density guard's numerator summed by the pack step
# (fp64 atomics, kernels.api.PACK_COUNTS_SELECTED, off by default then, on since) instead of four
# tensor ops per anchored layer call.
#   - the whole GPU suite (its test_pack_step_counts_the_selected_pairs_on_the_gpu turns it on);
#   - bench/gpu/trace32k_job.sh mode A with ANCHOR_KERNELS_PACK_COUNTS=1: stock, floor and defaults
#     at 32767 tokens with the engine in this process, to set against lease24_h100/trace32k/.
# A first run (8fd57aa, where the sum was always on) was cut off by the session's device budget
# before anything came back; the switch was added after it. Ran at 311212d on an H100 80GB HBM3
# (bench/results/lease25_h100/pack_density/: 48 GPU tests passed); the switch-off side of the A/B ran
# right after it as `SKIP_STOCK=1 MODE=A bash bench/gpu/trace32k_job.sh` (ANCHOR_KERNELS_PACK_COUNTS
# was unset, which meant off then; it means on now: pass ANCHOR_KERNELS_PACK_COUNTS=0 to repeat it).
# Usage on the GPU host: bash bench/gpu/pack_density_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results pack_density pack_density
echo "== $GPU_NAME"; date
gpu_suite 200
cd "$REPO" && ANCHOR_KERNELS_PACK_COUNTS=1 MODE=A bash bench/gpu/trace32k_job.sh
