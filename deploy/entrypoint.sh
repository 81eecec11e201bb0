#!/usr/bin/env bash
# Container entry point of the vllm-anchor image.
#
#   vllm-anchor-entrypoint [MODEL] [VLLM_SERVE_ARGS...]
#
# Runs `vllm serve MODEL --attention-backend anchor VLLM_SERVE_ARGS...`:
#   * MODEL is the first argument when it does not start with '-', otherwise $MODEL.
#   * --attention-backend is added (value $ATTENTION_BACKEND, default "anchor") only when the
#     arguments do not already carry one, so the same image can run stock FLASH_ATTN decoders.
#   * --tensor-parallel-size $TENSOR_PARALLEL_SIZE and --port $PORT are added when those variables
#     are set and the arguments do not already set them.
#   * When the backend is anchor, --max-num-batched-tokens $MAX_NUM_BATCHED_TOKENS (default 65536,
#     as `vllm-anchor serve`) is added unless the arguments set it: long prompts prefill in 64k-token
#     steps, since each engine step costs host time that the anchor path cannot hide
#     (bench/results/lease21_h100/chunk/).
# A first argument naming a program (vllm, ray, bash, sh, python, python3, or an absolute path)
# is executed as is, e.g. `docker run IMAGE bash`.
# Set ENTRYPOINT_DRY_RUN=1 to print the command instead of running it.
set -euo pipefail

if [[ $# -gt 0 ]]; then
    case "$1" in
        vllm | ray | bash | sh | python | python3 | /*) exec "$@" ;;
    esac
fi

model="${MODEL:-}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    model="$1"
    shift
fi
if [[ -z "$model" ]]; then
    echo "vllm-anchor: no model given; pass it as the first argument or set MODEL" >&2
    exit 2
fi

has_flag() {  # has_flag FLAG ARGS... -> 0 if FLAG or FLAG=... is among ARGS
    local flag="$1" arg
    shift
    for arg in "$@"; do
        [[ "$arg" == "$flag" || "$arg" == "$flag="* ]] && return 0
    done
    return 1
}

flag_value() {  # flag_value FLAG ARGS... -> the value of FLAG (FLAG VALUE or FLAG=VALUE), if any
    local flag="$1"
    shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
            "$flag") echo "${2:-}"; return 0 ;;
            "$flag="*) echo "${1#*=}"; return 0 ;;
        esac
        shift
    done
    return 1
}

cmd=(vllm serve "$model")
backend="$(flag_value --attention-backend "$@" || true)"
if [[ -z "$backend" ]]; then
    backend="${ATTENTION_BACKEND:-anchor}"
    cmd+=(--attention-backend "$backend")
fi
# CUSTOM is the enum name the plugin registers the backend under (the same server as anchor)
if [[ "${backend,,}" == anchor || "${backend,,}" == custom ]] && ! has_flag --max-num-batched-tokens "$@" \
        && ! has_flag --max_num_batched_tokens "$@"; then
    cmd+=(--max-num-batched-tokens "${MAX_NUM_BATCHED_TOKENS:-65536}")
fi
if [[ -n "${TENSOR_PARALLEL_SIZE:-}" ]] && ! has_flag --tensor-parallel-size "$@" \
        && ! has_flag -tp "$@"; then
    cmd+=(--tensor-parallel-size "$TENSOR_PARALLEL_SIZE")
fi
if [[ -n "${PORT:-}" ]] && ! has_flag --port "$@"; then
    cmd+=(--port "$PORT")
fi
cmd+=("$@")

if [[ "${ENTRYPOINT_DRY_RUN:-0}" == 1 ]]; then
    printf '%s\n' "${cmd[@]}"
    exit 0
fi
exec "${cmd[@]}"
