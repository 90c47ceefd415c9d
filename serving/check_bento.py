"""``python -m serving.check_bento [BENTO_TAG]``: serve a built Bento in front of the provider
simulator on 127.0.0.1 and check it answers ``/healthz`` and one chat completion through the
official ``openai`` client (``make bento`` runs this after ``bentoml build``). Exit 0 = both."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)
KEY = "sk-bento-check"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 180,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if log is not None and "Application startup failed" in log.read_text(errors="replace"):
            raise RuntimeError(f"{what}: the service failed to start")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not up within {timeout_s:.0f} s")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bento", nargs="?", default="tier-router:latest")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    sim_port, port = _port(), _port()
    scratch = Path(tempfile.mkdtemp(prefix="bento-check-"))
    env = {**os.environ, "ROUTER_DEMO_KEY": KEY,
           "ROUTER_PROVIDER_BASE": f"http://127.0.0.1:{sim_port}",
           "ROUTER_DECISION_LOG_URL": f"sqlite:///{scratch / 'decisions.sqlite'}",
           "ROUTER_CACHE_DIR": str(scratch / "cache")}
    sim = subprocess.Popen([str(bin_dir / "tier-router"), "simulate", "--config",
                            "configs/router.yaml", "--port", str(sim_port), "--latency-scale",
                            "0"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    log = (scratch / "bento.log").open("w")
    bento = subprocess.Popen([str(bin_dir / "bentoml"), "serve", args.bento, "--host",
                              "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                             stderr=subprocess.STDOUT, cwd=scratch)
    try:
        _wait(f"http://127.0.0.1:{sim_port}/healthz", sim, "simulator")
        for probe in ("healthz", "readyz"):
            _wait(f"http://127.0.0.1:{port}/{probe}", bento, f"bentoml serve {args.bento}",
                  log=scratch / "bento.log")
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "How do I reset my PIN?"}])
        routed = answer.model_extra["router"]
        logger.info("bento %s: /healthz 200; chat completion from %s (tier %s, classifier %s)",
                    args.bento, routed["final_model"], routed["final_tier"],
                    routed["threshold_source"])
    except Exception as exc:
        logger.error("bento check failed: %s\n%s", exc,
                     (scratch / "bento.log").read_text(errors="replace")[-3000:])
        sys.exit(1)
    finally:
        for proc in (bento, sim):
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
