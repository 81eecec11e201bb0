#!/usr/bin/env bash
# GPU job (one H100, one call, about 7 min): the stripe scan's launch for head_dim 64 (SmolLM2),
# end to end. lease28_h100/scan_tune/ found 128-key blocks with one stage fastest at both shapes
# (Llama 128k: 3.86 vs 5.50 ms, now the head_dim-128 default); at SmolLM2's 32k shape it was
# 0.199 ms at 1024-token segments against the default's 0.274 (2048-token segments, 64-key blocks,
# 3 stages), a noisy 0.2 s per point. SmolLM2's scan grows with the square of the prompt, so the
# 128k target (TTFT <= 0.33x stock) is where it weighs most.
#   1. bench/kernels.py synthetic at the Llama shape, 131072 tokens, 10% strong columns: issue 2's
#      whole-path ratio with the new scan default;
#   2. bench/tune.py --kernels stripe at SmolLM2's shape (9/3 heads, d 64) at 131072 and 32768
#      tokens, 0.3 s per point: segment 1024/2048/4096 x key block 64/128 x stages 1/2/3, 4 warps;
#   3. the 131072 sweep's fastest launch served (ANCHOR_KERNELS_LAUNCH, kernels/launch_env.py) beside
#      the defaults and stock, YaRN x16, 131000-token prompts, 8 per pair, interleaved: tuned vs
#      defaults, then each against stock.
# Usage on the GPU host: bash bench/gpu/scan_served_job.sh   (results: $OUT/scan_served.tar.gz)
source bench/gpu/setup.sh
cd /tmp
job_results scan_served scan_served
echo "== $GPU_NAME"; date
timeout 150 python3 "$REPO/bench/kernels.py" synthetic --lengths 131072 --densities 0.10 \
  --out "$R/kernels_synthetic_128k.json" 2>&1 | tee "$R/kernels_synthetic_128k.log" | grep "^n=" | cut -c1-200
lap "kernels synthetic"
SWEEP=(--kernels stripe --heads 9 3 64 --rows 128 --segment-tokens 1024 2048 4096 --block-n 64 128
       --scan-warps 4 --scan-stages 1 2 3 --budget 0.3)
for n in 131072 32768; do
  timeout 150 python3 "$REPO/bench/tune.py" --tokens $n "${SWEEP[@]}" \
    --out $R/tune_scan_smollm2_$n.json > $R/tune_scan_smollm2_$n.log 2>&1
done
lap "sweeps"
ENVLAUNCH=$(python3 - $R/tune_scan_smollm2_131072.json $R/tune_scan_smollm2_32768.json <<'PY'
import json, sys
for i, path in enumerate(sys.argv[1:]):
    rows = sorted((r for r in json.load(open(path))["rows"] if r["kernel"] == "stripe" and "ms" in r), key=lambda r: r["ms"])
    default = [r for r in rows if (r["segment_tokens"], r["block_n"], r["num_stages"]) == (2048, 64, 3)]
    print(path.rsplit("/", 1)[-1], "default", default[0]["ms"] if default else None, "fastest", rows[:3], file=sys.stderr)
    if i == 0 and rows:
        b = rows[0]
        print(f"scan.BLOCK_N={b['block_n']} scan.num_warps={b['num_warps']} scan.num_stages={b['num_stages']} "
              f"scan.segment_tokens={b['segment_tokens']}")
PY
)
echo "fastest scan launch at SmolLM2's 131072 shape: ${ENVLAUNCH:-none}"
[ -n "$ENVLAUNCH" ] || exit 1
smollm2_common 128k
serve_anchor 8001 '{}'; P1=$!
serve_fa 8002; P2=$!
ANCHOR_KERNELS_LAUNCH="$ENVLAUNCH" serve_anchor 8003 '{}'; P3=$!
servers_up 360 8001:$P1 8002:$P2 8003:$P3
lap "servers up"
grep -h "kernels compiled" $R/server_8003.log | head -1 | sed 's/.*vllm-anchor/vllm-anchor/'
pair() {  # pair A B LABELS NAME: 131000-token prompts, A against B, interleaved
  timeout 150 vllm-anchor bench --base-url http://127.0.0.1:$1 --compare-url http://127.0.0.1:$2 \
    --labels $3 --tokenizer "$SMOLLM2" --input-lens 131000 --num-prompts 8 --num-warmups 1 --output-len 16 \
    --interleave --no-progress --seed $5 --result-dir $R --result-filename $4 > $R/$4.out 2>&1
  grep -v "^warning:" $R/$4.out | tail -3; grep "^warning:" $R/$4.out
}
pair 8003 8001 anchor_tuned,anchor_default ttft_128k_tuned_vs_default 11
pair 8003 8002 anchor_tuned,stock ttft_128k_tuned_vs_stock 12
pair 8001 8002 anchor_default,stock ttft_128k_default_vs_stock 13
lap "ttft"
anchor_metrics 8001 $R/metrics_8001.txt
anchor_metrics 8003 $R/metrics_8003.txt
stop_servers $P1 $P2 $P3
date
