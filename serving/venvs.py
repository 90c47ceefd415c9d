"""Separate virtual environments for servers whose pins clash with the router's own (the Chroma
server; vLLM), cached outside the clone and keyed by a hash of their requirements file, so a
second run (or a second clone) reuses them and a changed pin builds a fresh one.

``python -m serving.venvs serving/chroma/requirements.txt`` builds (or finds) one and prints its
folder. Location: ``$TIER_ROUTER_ENVS`` or ``~/.cache/tier-router/envs``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

logger = logging.getLogger(__name__)

READY = ".ready"  # written last: a half-built environment is never reused


class VenvError(RuntimeError):
    """An environment could not be built (no registry, a pin that does not resolve...)."""


def envs_root() -> Path:
    return Path(os.environ.get("TIER_ROUTER_ENVS")
                or Path.home() / ".cache" / "tier-router" / "envs")


def ensure_venv(requirements: Path, *, root: Path | None = None,
                timeout_s: float = 900.0) -> Path:
    """The environment for ``requirements`` (built on first use); returns its folder."""
    text = requirements.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = (root or envs_root()) / f"{requirements.parent.name}-{digest}"
    if (folder / READY).exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building %s from %s (first use; cached afterwards)", folder, requirements)
    venv.EnvBuilder(with_pip=True).create(folder)
    command = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
               str(requirements)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise VenvError(f"installing {requirements} took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise VenvError(f"pip install -r {requirements} failed:\n{done.stderr[-2000:]}")
    (folder / READY).write_text(text)
    return folder


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", type=Path)
    args = parser.parse_args()
    try:
        folder = ensure_venv(args.requirements)
    except VenvError as exc:
        logger.error("%s", exc)
        sys.exit(1)
    sys.stdout.write(f"{folder}\n")


if __name__ == "__main__":
    main()
