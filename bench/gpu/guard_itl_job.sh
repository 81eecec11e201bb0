#!/usr/bin/env bash
# GPU job 27 (one H100, one call, about 6 min), both in-process (bench/serve_offline.py, no HTTP):
#   - Llama-3.1-8B architecture with random weights (bench/configs/llama-3.1-8b, --load-format
#     dummy, eager), TTFT at 32768 and 131000 tokens, stock FLASH_ATTN then anchor (defaults), at
#     the launcher's 65536-token chunks (issue 3: <= 1.05x; every earlier run of this check,
#     revalidate_job.sh K included, used 16384);
#   - SmolLM2 YaRN x4, decode time per step after a 16k prompt, one request, 1024 decode steps,
#     5 timed runs, stock then anchor (issue 3: ITL within 3%). Over HTTP the per-request ITL
#     medians of either server spread from 1.6 to 3.3 ms (lease22_h100/revalidate_S), which
#     hides a 3% difference; here each run averages 1024 steps of one engine, no API server.
# Usage on the GPU host: bash bench/gpu/guard_itl_job.sh   (results: $OUT/guard_itl.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results guard_itl guard_itl
echo "== $GPU_NAME"; date
for b in FLASH_ATTN anchor; do
  timeout 200 python3 "$REPO/bench/serve_offline.py" --model "$REPO/bench/configs/llama-3.1-8b" --dummy --eager \
    --backend $b --max-model-len 131072 --tasks ttft --ttft-lengths 32768 131000 --ttft-runs 5 \
    --out "$R/serve_llama8b_dummy_$b.json" > "$R/serve_llama8b_dummy_$b.log" 2>&1 || tail -20 "$R/serve_llama8b_dummy_$b.log"
  lap "llama dummy $b"
done
python3 "$REPO/bench/compare_serving.py" "$R/serve_llama8b_dummy_FLASH_ATTN.json" "$R/serve_llama8b_dummy_anchor.json" \
  --out "$R/summary_llama8b_dummy.json" && grep -A3 '"32768"\|"131000"' "$R/summary_llama8b_dummy.json"
for b in FLASH_ATTN anchor; do
  timeout 150 python3 "$REPO/bench/serve_offline.py" --backend $b --tasks itl --itl-runs 5 --itl-tokens 1024 \
    --out "$R/itl_smollm2_$b.json" > "$R/itl_smollm2_$b.log" 2>&1 || tail -20 "$R/itl_smollm2_$b.log"
  grep "^itl" "$R/itl_smollm2_$b.log"
  lap "itl $b"
done
python3 - "$R" <<'PY'
import json, sys
fa, an = (json.load(open(f"{sys.argv[1]}/itl_smollm2_{b}.json"))["itl_s"] for b in ("FLASH_ATTN", "anchor"))
print(f"decode step after 16k, median of {len(fa['all'])} runs x {fa['tokens']} steps: stock {fa['median']*1e3:.4f} ms, "
      f"anchor {an['median']*1e3:.4f} ms, ratio {an['median'] / fa['median']:.4f}; "
      f"spread stock {min(fa['all'])*1e3:.4f}-{max(fa['all'])*1e3:.4f}, anchor {min(an['all'])*1e3:.4f}-{max(an['all'])*1e3:.4f} ms")
PY
date
