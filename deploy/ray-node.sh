#!/usr/bin/env bash
# Start one node of a Ray cluster for multi-node `vllm serve --distributed-executor-backend ray`.
#
#   vllm-anchor-ray-node head NUM_NODES [TIMEOUT_S]   # start the head, wait until NUM_NODES are up
#   vllm-anchor-ray-node worker HEAD_ADDRESS          # wait for the head, join it, block
#
# Every node must run the vllm-anchor image (or have vllm-anchor pip-installed): vLLM loads
# general plugins in every worker process, and the anchor backend is resolved there.
# RAY_PORT (default 6379) is the head's GCS port. On LeaderWorkerSet, the leader runs
# `head "$LWS_GROUP_SIZE"` and workers run `worker "$LWS_LEADER_ADDRESS"`.
set -euo pipefail

port="${RAY_PORT:-6379}"
role="${1:-}"

usage() {
    echo "usage: $0 head NUM_NODES [TIMEOUT_S] | $0 worker HEAD_ADDRESS" >&2
    exit 2
}

alive_nodes() {
    python3 - <<'EOF'
import ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n.get("Alive")))
ray.shutdown()
EOF
}

case "$role" in
    head)
        want="${2:-}"
        timeout_s="${3:-1800}"
        [[ "$want" =~ ^[1-9][0-9]*$ ]] || usage
        ray start --head --port="$port" --disable-usage-stats
        deadline=$((SECONDS + timeout_s))
        while true; do
            have="$(alive_nodes 2>/dev/null | tail -n 1 || true)"
            echo "ray: ${have:-0}/${want} nodes alive"
            [[ "$have" =~ ^[0-9]+$ ]] && ((have >= want)) && break
            if ((SECONDS >= deadline)); then
                echo "ray: only ${have:-0}/${want} nodes joined within ${timeout_s}s" >&2
                exit 1
            fi
            sleep 5
        done
        ;;
    worker)
        head="${2:-}"
        [[ -n "$head" ]] || usage
        until timeout 2 bash -c "exec 3<>/dev/tcp/${head}/${port}" 2>/dev/null; do
            echo "ray: waiting for head ${head}:${port}"
            sleep 5
        done
        exec ray start --address="${head}:${port}" --block --disable-usage-stats
        ;;
    *)
        usage
        ;;
esac
