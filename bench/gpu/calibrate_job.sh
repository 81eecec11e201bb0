#!/usr/bin/env bash
# GPU job 7 (one H100, a few minutes): `vllm-anchor calibrate` on SmolLM2 at 8k/16k/32k (YaRN x4),
# shared (default) and per-query-head stripe lists, per-layer and per-head tables + heat maps.
source bench/gpu/setup.sh
cd /tmp
R=/tmp/rescal; mkdir -p $R
echo "== $GPU_NAME"; date
for v in "shared:" "per_head:--no-share-gqa"; do
  name=${v%%:*}; flag=${v#*:}
  T=$SECONDS
  timeout 270 vllm-anchor calibrate --model "$SMOLLM2" --device cuda --lengths 8192 16384 32768 \
    --thetas 8 10 12 14 16 $flag --out $R/calibrate_smollm2_${name}_h100.json 2>&1 | grep -v "Loading weights" | tail -12
  echo "calibrate $name: $((SECONDS - T)) s"
done
tar czf "$OUT/calibrate_job.tar.gz" -C /tmp rescal; date
