#!/usr/bin/env bash
# GPU job 2 (one H100, about 9 min): `vllm-anchor serve $SMOLLM2` (YaRN x16, 128k) and stock
# `vllm serve --attention-backend FLASH_ATTN` side by side on one GPU (each with a fixed 12 GiB KV
# cache, so neither profiles memory while the other starts), then over HTTP:
#   the load test A/B at 8K/32K/128K, the anchor server's /metrics, bad-input checks (HTTP 400s
#   and the tools' own errors), and the anchor server's kernel warm-up lines.
source bench/gpu/setup.sh
cd /tmp
echo "== $GPU_NAME"; date
COMMON=(--hf-overrides "$YARN16" --max-model-len 131072 --kv-cache-memory-bytes 12G --served-model-name smollm2)
export VLLM_ANCHOR_STATS_DIR=/tmp/anchor-stats
vllm-anchor serve "$SMOLLM2" --port 8001 "${COMMON[@]}" > /tmp/server_anchor.log 2>&1 &
PA=$!
python3 -m vllm.entrypoints.cli.main serve "$SMOLLM2" --port 8002 --attention-backend FLASH_ATTN \
  --enable-chunked-prefill --max-num-batched-tokens 16384 "${COMMON[@]}" > /tmp/server_fa.log 2>&1 &
PF=$!
wait_healthy 8001 $PA 360 && wait_healthy 8002 $PF 120 || { tail -50 /tmp/server_anchor.log /tmp/server_fa.log; cp /tmp/server_*.log "$OUT/"; stop_servers $PA $PF; exit 1; }
T=$SECONDS
timeout 300 vllm-anchor bench --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor,stock --tokenizer "$SMOLLM2" --input-lens 8K,32K,131000 --num-prompts 6 --num-warmups 1 \
  --output-len 16 --no-progress --result-dir "$OUT" --result-filename loadtest_ab_smollm2_128k 2>&1 | tail -40
echo "load test: $((SECONDS - T)) s"
curl -s http://127.0.0.1:8001/metrics | grep -E "^vllm_anchor|^# (HELP|TYPE) vllm_anchor" > /tmp/metrics_anchor.txt
echo "anchor /metrics lines: $(wc -l < /tmp/metrics_anchor.txt)"; grep -v "^#" /tmp/metrics_anchor.txt | head -8
timeout 120 python3 "$REPO/bench/http_checks.py" --base-url http://127.0.0.1:8001 --tokenizer "$SMOLLM2" \
  --out /tmp/http_checks.json 2>&1 | tail -30
grep -iE "anchor|warm" /tmp/server_anchor.log | grep -v "^\s*$" | head -30
stop_servers $PA $PF
python3 - "$OUT/serve_ab_smollm2_128k_extras.json" <<'PY'
import json, sys
out = {"metrics_anchor": open("/tmp/metrics_anchor.txt").read(),
       "http_checks": json.load(open("/tmp/http_checks.json")) if __import__("os").path.exists("/tmp/http_checks.json") else None}
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
cp /tmp/server_anchor.log "$OUT/server_anchor_128k.log"; cp /tmp/server_fa.log "$OUT/server_fa_128k.log"
ls "$OUT"; date
