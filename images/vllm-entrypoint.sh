#!/usr/bin/env bash
# Start step of the serving image: pull the model (and a LoRA adapter) from the store, then exec vLLM's
# OpenAI server, which replaces this shell and so receives the container's stop signal directly.
#
#   MODEL_URI      merged model or base model: a store folder (s3://…, file://…, /path) is pulled first;
#                  anything else (a Hub id) goes to vLLM as it is                               (required)
#   ADAPTER_URI    a PEFT adapter folder in the store → --enable-lora --lora-modules NAME=DIR  (optional)
#   ADAPTER_NAME   the model name clients ask for to get the adapter (default: adapter)
#   SERVED_MODEL_NAME  the base/merged model's name in the API (default: the MODEL_URI's last part)
#   MAX_MODEL_LEN, DTYPE, PORT (8000), MODELS_DIR (/models), VLLM_EXTRA_ARGS (split on spaces)
# Arguments given to the container are passed on to `vllm serve`.
# `vllm-entrypoint.sh health` is the image's HEALTHCHECK: GET /health on the local server.
set -euo pipefail

PORT="${PORT:-8000}"
MODELS_DIR="${MODELS_DIR:-/models}"
# Our start step's libraries live apart from vLLM's (see Dockerfile.vllm); only this step sees them.
FT_LIB="${FT_LIB:-/opt/ft/lib}"
pull() { PYTHONPATH="$FT_LIB" python3 -m trainer.serve_pull "$@"; }

if [ "${1:-}" = "health" ]; then
    exec python3 -c 'import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=4)
except Exception as e:
    sys.exit(f"unhealthy: {e}")' "$PORT"
fi

is_store_uri() {
    case "$1" in s3://* | file://* | /*) return 0 ;; *) return 1 ;; esac
}

: "${MODEL_URI:?set MODEL_URI to the merged model or the base model (store folder or Hub id)}"
model="$MODEL_URI"
if is_store_uri "$MODEL_URI"; then
    pull "$MODEL_URI" "$MODELS_DIR/model" >&2
    model="$MODELS_DIR/model"
fi

args=(serve "$model" --host 0.0.0.0 --port "$PORT"
      --served-model-name "${SERVED_MODEL_NAME:-$(basename "${MODEL_URI%/}")}")
if [ -n "${MAX_MODEL_LEN:-}" ]; then args+=(--max-model-len "$MAX_MODEL_LEN"); fi
if [ -n "${DTYPE:-}" ]; then args+=(--dtype "$DTYPE"); fi

if [ -n "${ADAPTER_URI:-}" ]; then
    adapter="$ADAPTER_URI"
    if is_store_uri "$ADAPTER_URI"; then
        pull "$ADAPTER_URI" "$MODELS_DIR/adapter" >&2
        adapter="$MODELS_DIR/adapter"
    fi
    # vLLM refuses adapters above --max-lora-rank (default 16); ours are often r=64.
    args+=(--enable-lora --lora-modules "${ADAPTER_NAME:-adapter}=$adapter"
           --max-lora-rank "$(pull --lora-rank "$adapter")")
fi

# shellcheck disable=SC2206  # VLLM_EXTRA_ARGS is a space-separated list of flags by design
extra=(${VLLM_EXTRA_ARGS:-})
echo "vllm ${args[*]} ${extra[*]} $*" >&2
exec vllm "${args[@]}" "${extra[@]}" "$@"
