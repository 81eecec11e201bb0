#!/usr/bin/env bash
# GPU job 11 (one H100, about 8 min): the GPU test suite with the current defaults, then the
# kernel benchmarks with the current defaults (B) and with single launch options overridden
# (A, e.g. the previous default), alternating A, B, A, B (the second pair at 128k only) so drift of the card shows.
#   AB_LAUNCH="anchor.RESCALE_TAU=8 sparse.RESCALE_TAU=8" bash bench/gpu/ab_launch_job.sh
# (bench/results/ab_lazy_rescale_h100/ ran when RESCALE_TAU 8 was the default, with A = tau 0.)
# Results: $OUT/ab_launch_job.tar.gz (abres/: gpu_tests.log, synthetic_{A,B}{1,2}.{json,log},
# smollm2_{A,B}.json).
source bench/gpu/setup.sh
cd /tmp
job_results abres ab_launch_job
AB_LAUNCH=${AB_LAUNCH:-"anchor.RESCALE_TAU=8 sparse.RESCALE_TAU=8"}
echo "== $GPU_NAME"; date; echo "A = --launch $AB_LAUNCH; B = defaults"
T=$SECONDS
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" 2>&1 | tee "$R/gpu_tests.log" | tail -3
echo "gpu tests: $((SECONDS - T)) s"; T=$SECONDS
for run in A1 B1 A2 B2; do
  launch=(); [ "${run:0:1}" = A ] && launch=(--launch $AB_LAUNCH)
  lengths="32768 131072"; [ "${run:1}" = 2 ] && lengths=131072
  timeout 150 python3 "$REPO/bench/kernels.py" synthetic --lengths $lengths --densities 0.10 "${launch[@]}" \
    --out "$R/synthetic_$run.json" 2>&1 | tee "$R/synthetic_$run.log" | grep "theta= 12.0 share=True"
  echo "synthetic $run: $((SECONDS - T)) s"; T=$SECONDS
done
for run in A B; do
  launch=(); [ "$run" = A ] && launch=(--launch $AB_LAUNCH)
  timeout 120 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --lengths 32768 --thetas 8 10 12 \
    --steps "${launch[@]}" --out "$R/smollm2_$run.json" 2>&1 | grep -v "Loading weights" | tail -2
  python3 - "$R/smollm2_$run.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"theta {s['theta']:>4}: x{s['speedup_all_layers']:.2f} recall {s['recall_mean']:.3f} fa3 {s['fa3_ms_all_layers']:.1f} "
          f"anchor {s['anchor_ms_all_layers']:.1f} ms (steps {s['anchor_step_ms']:.1f} / {s['stripe_step_ms']:.1f} / {s['sparse_step_ms']:.1f})")
PY
  echo "smollm2 $run: $((SECONDS - T)) s"; T=$SECONDS
done
date
