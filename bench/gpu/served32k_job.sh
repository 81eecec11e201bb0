#!/usr/bin/env bash
# GPU job (one H100, one call, about 7 min): the issue-3 32k set-up served over HTTP with the
# current code, and direct Triton launches (kernels.launch, ANCHOR_KERNELS_FAST_LAUNCH=1) checked
# end to end before they could become the default.
#   1. bench/host_overhead.py: host us per anchored layer call, the variants now in alternating
#      rounds (one variant after another gave Triton's path 418 us in lease25 and 564 us in lease26);
#   2. the whole GPU suite with ANCHOR_KERNELS_FAST_LAUNCH=1 (only its two bit-exactness tests
#      have run with direct launches so far);
#   3. four SmolLM2 servers at once, YaRN x4 (--max-model-len 32768, the 32k model; the
#      128k job's 32K prompts run the YaRN x16 model, whose attention at 32k is denser):
#      anchor defaults (8001), anchor defaults with direct launches (8003), the floor
#      ({"theta": -1000, "density_guard": 1.0}: no stripes, 8004), stock FLASH_ATTN (8002);
#      32000-token prompts (32K plus 16 output tokens would not fit 32768), each anchor server
#      against stock, prompts sent in turn, 8 per server.
#      Each comparison sends its own prompts (--seed 1, 2, 3): stock sees every comparison's
#      prompts, and with one seed for all (as first run, lease26_h100/served32k_seed0/) its prefix
#      cache served 37-49% of the second and third comparisons' prompt tokens.
# Usage on the GPU host: [SERVED_ONLY=1] bash bench/gpu/served32k_job.sh   (about 7 min, or 3 with
# SERVED_ONLY=1, which leaves out steps 1 and 2: give it 600 s)
source bench/gpu/setup.sh
cd /tmp
job_results served32k served32k
echo "== $GPU_NAME"; date
if [ "${SERVED_ONLY:-0}" != 1 ]; then
  timeout 150 python3 "$REPO/bench/host_overhead.py" --out "$R/host_overhead.json" 2>&1 | grep -v -i warn
  lap "host overhead"
  ANCHOR_KERNELS_FAST_LAUNCH=1 gpu_suite 230
fi
smollm2_common 32k
serve_anchor 8001 '{}'; PA=$!
export ANCHOR_KERNELS_FAST_LAUNCH=1; serve_anchor 8003 '{}'; PD=$!; unset ANCHOR_KERNELS_FAST_LAUNCH
serve_anchor 8004 '{"theta": -1000, "density_guard": 1.0}'; PL=$!
serve_fa 8002; PF=$!
servers_up 360 8001:$PA 8003:$PD 8004:$PL 8002:$PF
lap "servers up"
ttft_vs_stock 120 8001 defaults ttft_32k_defaults_vs_stock --input-lens 32000 --num-prompts 8 --seed 1
anchor_metrics 8001 $R/metrics_defaults.txt
ttft_vs_stock 120 8003 direct_launch ttft_32k_direct_launch_vs_stock --input-lens 32000 --num-prompts 8 --seed 2
anchor_metrics 8003 $R/metrics_direct_launch.txt
ttft_vs_stock 120 8004 floor ttft_32k_floor_vs_stock --input-lens 32000 --num-prompts 8 --seed 3
curl -s http://127.0.0.1:8002/metrics | grep -E "^vllm:prefix_cache_(queries|hits)_total" > $R/stock_prefix_cache.txt
cat $R/stock_prefix_cache.txt
lap "ttft"
stop_servers $PA $PD $PL $PF
date
