#!/usr/bin/env bash
# GPU job 27 (one H100; part G about 4 min, part I about 6 min), in-process
# (bench/serve_offline.py, no HTTP):
#   G: Llama-3.1-8B architecture with random weights (bench/configs/llama-3.1-8b, --load-format
#     dummy, eager), TTFT at 32768 and 131000 tokens, stock FLASH_ATTN then anchor (defaults), at
#     the launcher's 65536-token chunks (issue 3: <= 1.05x; every earlier run of this check,
#     revalidate_job.sh K included, used 16384);
#   I: SmolLM2 YaRN x4, decode time per step after a 16k prompt, one request, 1024 decode steps,
#     5 timed runs per process, four processes: stock, anchor, stock, anchor (issue 3: ITL
#     within 3%). Over HTTP the per-request ITL medians of either server spread from 1.6 to
#     3.3 ms (lease22_h100/revalidate_S), which hides a 3% difference; here each run averages
#     1024 steps of one engine, no API server, and alternating processes shows how much one
#     process start moves the result.
# Ran at d8b6724 on an H100 80GB HBM3 as one job (G, then I with one process per backend):
# G gave 0.999x / 0.999x (lease22_h100/guard_itl/); stock's 5 ITL runs spread 1.86-2.72 ms per
# step and the anchor process was stopped by the call's time limit before its runs.
# G ran again at 9c4a09c with the keyed guard: 0.999x / 1.000x (lease23_h100/guard_itl_G/).
# Part I has not run in this form; bench/gpu/itl_ab_job.sh (both engines in one process, runs
# alternating, an A/A control) replaced it for the ITL question (lease23_h100/itl_ab_*).
# Usage on the GPU host: bash bench/gpu/guard_itl_job.sh G|I   (results: $OUT/guard_itl_$1.tar.gz)
PART=$1
case "$PART" in G|I) ;; *) echo "usage: bash bench/gpu/guard_itl_job.sh G|I" >&2; exit 2 ;; esac
source bench/gpu/setup.sh
cd /tmp
job_results guard_itl_$PART guard_itl_$PART
echo "== $GPU_NAME, part $PART"; date
if [ "$PART" = G ]; then
  llama_dummy_guard 200
  date
  exit 0
fi
for i in 1 2; do
  for b in FLASH_ATTN anchor; do
    timeout 140 python3 "$REPO/bench/serve_offline.py" --backend $b --tasks itl --itl-runs 5 --itl-tokens 1024 \
      --out "$R/itl_smollm2_${b}_$i.json" > "$R/itl_smollm2_${b}_$i.log" 2>&1 || tail -20 "$R/itl_smollm2_${b}_$i.log"
    grep "^itl" "$R/itl_smollm2_${b}_$i.log"
    lap "itl $b $i"
  done
done
python3 - "$R" <<'PY'
import glob, json, statistics, sys
runs = {b: [x for f in sorted(glob.glob(f"{sys.argv[1]}/itl_smollm2_{b}_*.json")) for x in json.load(open(f))["itl_s"]["all"]]
        for b in ("FLASH_ATTN", "anchor")}
fa, an = (statistics.median(runs[b]) * 1e3 for b in ("FLASH_ATTN", "anchor"))
print(f"decode step after 16k, median of {len(runs['FLASH_ATTN'])} / {len(runs['anchor'])} runs x 1024 steps: "
      f"stock {fa:.4f} ms, anchor {an:.4f} ms, ratio {an / fa:.4f}; all runs (ms): "
      + "; ".join(f"{b} " + " ".join(f"{x * 1e3:.3f}" for x in v) for b, v in runs.items()))
PY
date
