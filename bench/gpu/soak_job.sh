#!/usr/bin/env bash
# GPU job 3 (one H100, about 8 min): 16 concurrent clients mixing 128k prompts and short ones
# for 5 minutes against `vllm-anchor serve $SMOLLM2` (YaRN x16, 128k, default settings), while
# sampling the server's resident memory (whole process tree) and GPU memory.
source bench/gpu/setup.sh
cd /tmp
echo "== $GPU_NAME"; date
export VLLM_ANCHOR_STATS_DIR=/tmp/anchor-stats
vllm-anchor serve "$SMOLLM2" --port 8001 --hf-overrides "$YARN16" --max-model-len 131072 \
  --gpu-memory-utilization 0.85 --served-model-name smollm2 > /tmp/server_soak.log 2>&1 &
PA=$!
wait_healthy 8001 $PA 360 || { tail -50 /tmp/server_soak.log; cp /tmp/server_soak.log "$OUT/"; stop_servers $PA; exit 1; }
T=$SECONDS
timeout 420 vllm-anchor bench --base-url http://127.0.0.1:8001 --tokenizer "$SMOLLM2" \
  --mix 131000:1,512:7 --concurrency 16 --duration ${SOAK_S:-300} --num-prompts 0 --num-warmups 2 \
  --output-len 32 --watch-pid $PA --watch-interval 5 --no-progress \
  --result-dir "$OUT" --result-filename soak_smollm2_128k_16clients 2>&1 | tail -45
echo "soak: $((SECONDS - T)) s"
curl -s http://127.0.0.1:8001/metrics | grep -E "^vllm_anchor_(prefill|density)" | head -12
grep -ciE "error|traceback" /tmp/server_soak.log
stop_servers $PA
cp /tmp/server_soak.log "$OUT/server_soak.log"; ls "$OUT"; date
