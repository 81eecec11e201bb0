#!/usr/bin/env bash
# GPU job 26 (one H100, one call, about 2 min): does a server start and serve with the launcher's
# new defaults (65536 batched tokens) and the anchor workspace held through vLLM's memory profile
# (bddcad6)? One SmolLM2 YaRN x16 server, KV cache sized by vLLM's own profiling (no
# --kv-cache-memory-bytes, so the profiling forward runs), one 32K and one 131000-token prompt.
# Prints the backend's reservation line and vLLM's KV cache size. Results: $OUT/smoke.tar.gz
# Tried once at 129879d on an H100 80GB HBM3 (after the install): the session's device budget ran
# out 160 s into the call and nothing came back, so it has no result yet; start-up of one server
# took 60-120 s in the jobs before it.
# Usage on the GPU host: bash bench/gpu/smoke_job.sh
source bench/gpu/setup.sh
cd /tmp
job_results smoke smoke
echo "== $GPU_NAME"; date
COMMON=(--hf-overrides "$YARN16" --max-model-len 131072 --served-model-name smollm2 --gpu-memory-utilization 0.5)
serve_anchor 8001 '{}'; P1=$!
servers_up 240 8001:$P1
lap "server up"
grep -h "memory profile holds\|KV cache\|max_num_batched_tokens\|vllm-anchor" $R/server_8001.log | grep -v "exec:" | cut -c1-260
timeout 90 vllm-anchor bench --base-url http://127.0.0.1:8001 --tokenizer "$SMOLLM2" --input-lens 32K,131000 \
  --num-prompts 2 --num-warmups 1 --output-len 16 --no-progress --result-dir $R --result-filename smoke 2>&1 | tail -4
lap "bench"
anchor_metrics 8001 $R/metrics.txt
stop_servers $P1
date
