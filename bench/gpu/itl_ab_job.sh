#!/usr/bin/env bash
# GPU job 28 (one H100): decode ITL, stock against anchor, with both engines alive in one process
# and the timed runs alternating between them (bench/itl_ab.py), so a drift of the machine lands
# on both; plus the theta = inf error per output row at 128k.
#   S (about 3 min): SmolLM2 YaRN x4, 30000-token prompts (anchored prefill), 512 decode steps
#      per run, 8 pairs. Over HTTP the ratio moved 0.96-1.11 between runs (lease22_h100/revalidate_S)
#      and one engine's own step 1.86-2.72 ms between runs (lease22_h100/guard_itl).
#   L (about 5 min): the same on Llama-3.1-8B's architecture with random weights
#      (bench/configs/llama-3.1-8b, --load-format dummy): a decode step that the GPU's weight reads
#      set (~16 GB per step), not the host, as for the models users serve.
#   C (about 5 min): the control of S: three SmolLM2 engines, FLASH_ATTN, anchor, FLASH_ATTN
#      (an A/A pair: does the engine built later run slower?), each round at 30000 tokens
#      (anchored prefill) and at 1000 (no engine runs anchor: is the prefill what costs decode?),
#      6 rounds, the engine that goes first rotating.
#   E (about 1 min): bench/kernels.py synthetic, Llama shape at 131072 tokens, 10% strong
#      columns, theta 12 and inf: the whole-tensor and per-row relative error against FA3 and the
#      speed-up (issue 2).
# S and L sample the GPU's SM clock and power every 0.5 s (nvidia-smi) beside the runs.
# Usage on the GPU host: bash bench/gpu/itl_ab_job.sh S|L|C|E   (results: $OUT/itl_ab_$1.tar.gz)
PART=$1
case "$PART" in S|L|C|E) ;; *) echo "usage: bash bench/gpu/itl_ab_job.sh S|L|C|E" >&2; exit 2 ;; esac
source bench/gpu/setup.sh
cd /tmp
job_results itl_ab_$PART itl_ab_$PART
echo "== $GPU_NAME, part $PART"; date

if [ "$PART" = E ]; then
  timeout 150 python3 "$REPO/bench/kernels.py" synthetic --lengths 131072 --densities 0.10 \
    --out "$R/kernels_synthetic_128k.json" 2>&1 | tee "$R/kernels_synthetic_128k.log" | grep "^n=" | cut -c1-330
  lap "synthetic 128k"
  exit 0
fi

nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,utilization.gpu,power.draw,temperature.gpu \
  --format=csv -lms 500 > "$R/nvidia_smi.csv" 2>&1 &
SMI=$!
if [ "$PART" = S ]; then
  ARGS=(--model "$SMOLLM2" --pairs 8 --out "$R/itl_ab_smollm2.json")
  LIMIT=330
elif [ "$PART" = C ]; then
  ARGS=(--model "$SMOLLM2" --backends FLASH_ATTN anchor FLASH_ATTN --prompt-lens 30000 1000 --pairs 6
        --out "$R/itl_ab_smollm2_control.json")
  LIMIT=450
else
  ARGS=(--model "$REPO/bench/configs/llama-3.1-8b" --dummy --pairs 8 --out "$R/itl_ab_llama8b_dummy.json")
  LIMIT=480
fi
timeout $LIMIT python3 "$REPO/bench/itl_ab.py" --max-model-len 32768 --tokens 512 "${ARGS[@]}" > "$R/itl_ab.log" 2>&1 || { echo "itl_ab failed:"; grep -v "^(EngineCore" "$R/itl_ab.log" | tail -25; }
grep "engine up\|^round\|^itl_ab" "$R/itl_ab.log" | cut -c1-300
kill $SMI 2>/dev/null
python3 - "$R/nvidia_smi.csv" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0][:2].isdigit()]
sm = [float(r[1].split()[0]) for r in rows if r[1].strip().split()[0].replace('.', '').isdigit()]
if sm:
    print(f"SM clock over {len(sm)} samples: min {min(sm):.0f}, median {statistics.median(sm):.0f}, max {max(sm):.0f} MHz")
PY
lap "itl ab $PART"
date
