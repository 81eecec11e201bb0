#!/usr/bin/env bash
# GPU job 29 (one H100, one call, about 5 min): does keying the density guard's verdict by context
# length (vllm_anchor.routing.context_bucket, half-octaves) speed up 128k prompts? Before it, one
# verdict per layer served every context: in lease21_h100/chunk/metrics_defaults_64k.txt, 13 layers
# whose mean measured density was 0.34-0.43 ran 14 of their 18 calls dense, so a verdict learned
# on one length decided the others. Three SmolLM2 YaRN x16 servers at once (6 GiB of KV cache
# each, 65536 batched tokens): stock FLASH_ATTN (8002), the defaults of this checkout (8011), and
# the defaults of the previous build, one guard verdict per layer (8021: the package from
# $OLD_SRC, a `git archive` of pyproject.toml README.md kernels vllm_anchor serving at 1053d2b,
# carried in .old/, installed into /tmp/pkg_old ahead of this checkout on that server's path).
# Each anchor server against stock, prompts sent in turn: 32K (6 prompts) then 131000 (8 prompts),
# the first of each length not counted; the workers' stats files (density sum, measured calls,
# fallbacks per layer) are copied after each length, so per-length densities can be told apart.
# MIX=1 instead sends both lengths in one bench run, 6 prompts each, as bench/gpu/chunk_job.sh did
# for the 0.630x of lease21_h100/chunk (the stats then cover both lengths together).
# Results: $OUT/guard_key.tar.gz ($OUT/guard_key_mix.tar.gz with MIX=1).
# Usage on the GPU host: [MIX=1] [OLD_SRC=.old/vllm_anchor_1053d2b.tar] bash bench/gpu/guard_key_job.sh
OLD_SRC=${OLD_SRC:-.old/vllm_anchor_1053d2b.tar}
source bench/gpu/setup.sh
OLD=""
if [ -f "$OLD_SRC" ]; then
  rm -rf /tmp/old_src /tmp/pkg_old && mkdir -p /tmp/old_src && tar -xf "$OLD_SRC" -C /tmp/old_src
  python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/pkg_old /tmp/old_src 2>&1 | grep -v -i warning
  OLD=/tmp/pkg_old
fi
cd /tmp
NAME=guard_key${MIX:+_mix}
job_results $NAME $NAME
echo "== $GPU_NAME"; date
smollm2_common 128k
COMMON=("${COMMON[@]/12G/6G}")
serve_fa 8002; P2=$!
serve_anchor 8011 '{}'; P11=$!
PORTS=("8011 keyed"); PIDS=("8011:$P11")
if [ -n "$OLD" ]; then
  SAVED=$PYTHONPATH; export PYTHONPATH=$OLD:$PYTHONPATH
  serve_anchor 8021 '{}'; P21=$!
  export PYTHONPATH=$SAVED
  PORTS+=("8021 unkeyed"); PIDS+=("8021:$P21")
fi
servers_up 300 8002:$P2 "${PIDS[@]}"
lap "servers up"
for port in 8011 ${P21:+8021}; do  # which guard each anchor server's package has
  PP=$PYTHONPATH; [ $port = 8021 ] && PP=$OLD:$PYTHONPATH
  PYTHONPATH=$PP python3 -c "import vllm_anchor.routing as r; print('port $port:', r.__file__, 'keyed guard' if hasattr(r, 'context_bucket') else 'one verdict per layer')"
done
for run in "${PORTS[@]}"; do
  set -- $run
  if [ -n "${MIX:-}" ]; then
    STOCK_PORT=8002 ttft_vs_stock 200 $1 $2 ttft_$2_mix_vs_stock --input-lens 32K,131000 --num-prompts 6
    lap "ttft $2 mixed lengths"
  else
    for len in 32K 131000; do
      n=$([ $len = 32K ] && echo 6 || echo 8)
      STOCK_PORT=8002 ttft_vs_stock 150 $1 $2 ttft_$2_${len}_vs_stock --input-lens $len --num-prompts $n
      sleep 2  # the workers flush their stats a second after the last update
      mkdir -p $R/stats_$2_$len && cp /tmp/stats-$1/worker-*.json $R/stats_$2_$len/ 2>/dev/null
      lap "ttft $2 $len"
    done
  fi
  anchor_metrics $1 $R/metrics_$2.txt
done
stop_servers $P2 $P11 ${P21:-}
[ -z "${MIX:-}" ] && python3 "$REPO/bench/guard_key_summary.py" "$R" | tee "$R/summary.txt" | cut -c1-250
date
