#!/usr/bin/env bash
# GPU job 30 (one H100, one call, about 7 min): the long-context suite at 131000 tokens, the
# defaults (with the guard keyed by context since ee3a7d2, which runs most of SmolLM2's layers
# sparse at 128k where the previous guard ran them dense) against stock FLASH_ATTN, both SmolLM2
# YaRN x16 at 131072 tokens, 12 GiB of KV cache each, 65536 batched tokens. Every earlier suite
# run stopped at 32000 tokens. SAMPLES per task x length (x depth), default 6: a sanity check of
# the answers at 128k, not a fine comparison (at 32000, 15 per cell gave intervals of about +-2 points).
# Results: $OUT/suite128k.tar.gz.
# Usage on the GPU host: [SAMPLES=6] bash bench/gpu/suite128k_job.sh
SAMPLES=${SAMPLES:-6}
source bench/gpu/setup.sh
cd /tmp
job_results suite128k suite128k
echo "== $GPU_NAME, $SAMPLES samples per cell"; date
smollm2_common 128k
serve_fa 8002; P2=$!
serve_anchor 8001 '{}'; P1=$!
servers_up 300 8002:$P2 8001:$P1
lap "servers up"
timeout 420 python3 "$REPO/bench/longctx_eval.py" --base-url http://127.0.0.1:8001 --compare-url http://127.0.0.1:8002 \
  --labels anchor_default,stock --tokenizer "$SMOLLM2" --lengths 131000 --samples "$SAMPLES" --concurrency 8 \
  --out $R/longctx_smollm2_default_131000_vs_stock.json 2>&1 | grep -v "^\[longctx\] [0-9]*/" | head -14
lap "suite"
anchor_metrics 8001 $R/metrics_8001.txt
stop_servers $P1 $P2
date
