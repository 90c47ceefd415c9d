"""``python -m serving.check_bento [BENTO_TAG]``: serve a built Bento in front of the provider
simulator on 127.0.0.1 and check it answers ``/healthz`` and one chat completion through the
official ``openai`` client (``make bento`` runs this after ``bentoml build``). Exit 0 = both."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

from serving.processes import ServerProcess, free_port

logger = logging.getLogger(__name__)
KEY = "sk-bento-check"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bento", nargs="?", default="tier-router:latest")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    sim_port, port = free_port(), free_port()
    scratch = Path(tempfile.mkdtemp(prefix="bento-check-"))
    env = {"ROUTER_DEMO_KEY": KEY,
           "ROUTER_PROVIDER_BASE": f"http://127.0.0.1:{sim_port}",
           "ROUTER_DECISION_LOG_URL": f"sqlite:///{scratch / 'decisions.sqlite'}",
           "ROUTER_CACHE_DIR": str(scratch / "cache")}
    processes: list[ServerProcess] = []
    try:
        processes.append(ServerProcess(
            "simulator", [str(bin_dir / "tier-router"), "simulate", "--config",
                          "configs/router.yaml", "--port", str(sim_port), "--latency-scale", "0"],
            f"http://127.0.0.1:{sim_port}/healthz", scratch / "simulator.log"))
        processes.append(ServerProcess(
            f"bentoml serve {args.bento}", [str(bin_dir / "bentoml"), "serve", args.bento,
                                            "--host", "127.0.0.1", "--port", str(port)],
            f"http://127.0.0.1:{port}/readyz", scratch / "bento.log", env=env, cwd=scratch,
            timeout_s=180, fail_marker="Application startup failed"))
        if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code != 200:
            raise RuntimeError("/healthz did not answer 200")
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "How do I reset my PIN?"}])
        routed = answer.model_extra["router"]
        logger.info("bento %s: /healthz 200; chat completion from %s (tier %s, classifier %s)",
                    args.bento, routed["final_model"], routed["final_tier"],
                    routed["threshold_source"])
    except Exception as exc:  # any failure of the check is reported with the log's tail
        logger.error("bento check failed: %s", exc)
        sys.exit(1)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
