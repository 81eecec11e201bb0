#!/usr/bin/env bash
# GPU job (one H100, one call, about 3 min): the jobs' servers with --enable-prompt-tokens-details
# (setup.sh's serve_anchor and serve_fa since 2559123) start, report cached prompt tokens, and
# `vllm-anchor bench` warns when a comparison's prompts were partly answered from a prefix cache.
# An anchor server (defaults) and stock, SmolLM2 YaRN x4; 3 prompts of 8000 tokens per run:
#   run A, --seed 0: both servers cold, no warning expected;
#   run B, --seed 0 again: both servers have seen these prompts, a warning per server expected;
#   run C, --seed 1: fresh prompts, no warning expected.
# Usage on the GPU host: bash bench/gpu/prefix_warning_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results prefix_warning prefix_warning
echo "== $GPU_NAME"; date
smollm2_common 32k
serve_anchor 8001 '{}'; PA=$!
serve_fa 8002; PF=$!
servers_up 300 8001:$PA 8002:$PF
lap "servers up"
for run in "A 0" "B 0" "C 1"; do
  set -- $run
  echo "-- run $1 (--seed $2)"
  timeout 60 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
    --labels anchor,stock --tokenizer "$SMOLLM2" --num-warmups 0 --output-len 4 --interleave --no-progress \
    --no-plot --input-lens 8000 --num-prompts 3 --seed $2 --result-dir $R --result-filename run_$1.json 2>&1 \
    | grep -E "^ *8000|^warning" || echo "(no table row or warning)"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: v['results'][0]['cached_prompt_tokens'] for k, v in d['runs'].items()})" $R/run_$1.json
done
lap "runs"
stop_servers $PA $PF
date
