"""Load: the router service under concurrent clients, beside LiteLLM's own proxy and the provider
simulator called directly, all on 127.0.0.1 (``tier-router load``).

Every target gets the same closed loop: ``clients`` concurrent clients, each sending its next
request as soon as the last one answered, for ``duration_s``. Prompts are distinct (real
workload questions, numbered), so the router's cache does not answer them. Reported per run:
requests, errors (non-200 or no answer), throughput, end-to-end p50/p99 and, for the router,
its own overhead (``x-router-overhead-ms``: everything but the provider call) and the decision
rows written. Added latency = a target's p50 minus the simulator's own p50 at the same load.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from serving.processes import ServerProcess, free_port

if TYPE_CHECKING:
    from router.config import RouterConfig

logger = logging.getLogger(__name__)

LOAD_KEY = "sk-load-test"


@dataclass
class Target:
    name: str
    url: str  # .../v1
    model: str
    key: str = LOAD_KEY


@dataclass
class LoadRun:
    target: str
    clients: int
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    request_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        out: dict[str, Any] = {
            "requests": len(self.latencies_ms) + self.errors, "errors": self.errors,
            "statuses": self.statuses, "throughput_rps": len(self.latencies_ms) / self.duration_s,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
        if self.overhead_ms:
            overhead = np.array(self.overhead_ms)
            out.update(overhead_p50_ms=float(np.percentile(overhead, 50)),
                       overhead_p99_ms=float(np.percentile(overhead, 99)))
        return out


async def run_load(target: Target, prompts: Sequence[str], *, clients: int,
                   duration_s: float, max_tokens: int = 64) -> LoadRun:
    """The closed loop against one target; never raises for a failed request (it counts)."""
    run = LoadRun(target.name, clients, duration_s)
    counter = iter(range(10**9))
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers={
            "Authorization": f"Bearer {target.key}"}) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                i = next(counter)
                body = {"model": target.model, "max_tokens": max_tokens, "messages": [
                    {"role": "user", "content": f"({i}) {prompts[i % len(prompts)]}"}]}
                started = time.perf_counter()
                try:
                    response = await client.post(f"{target.url}/chat/completions", json=body)
                except httpx.HTTPError:
                    run.errors += 1
                    run.statuses["no_answer"] = run.statuses.get("no_answer", 0) + 1
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                code = str(response.status_code)
                run.statuses[code] = run.statuses.get(code, 0) + 1
                if response.status_code != 200:
                    run.errors += 1
                    continue
                run.latencies_ms.append(elapsed)
                if "x-router-overhead-ms" in response.headers:
                    run.overhead_ms.append(float(response.headers["x-router-overhead-ms"]))
                    run.request_ids.append(response.headers["x-router-request-id"])

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return run


def proxy_settings(config: RouterConfig, *, api_root: str | None = None,
                   master_key: str = LOAD_KEY) -> dict[str, Any]:
    """LiteLLM proxy config (a dict for its YAML): the router config's own ``model_list``
    (LiteLLM's format) and ``router_settings``, so the proxy retries and cools down like the
    router. ``api_root``: every ``api_base`` rebased onto it (the simulator's root); None keeps
    them. ``master_key``: a key, or LiteLLM's ``os.environ/NAME`` to read one at start."""
    from router.dispatch import rebase_api_base

    model_list = config.litellm_model_list()
    for entry in model_list:
        params = entry["litellm_params"]
        if api_root and params.get("api_base"):
            params["api_base"] = rebase_api_base(params["api_base"], api_root)
    return {"model_list": model_list,
            "router_settings": config.router_settings.model_dump(),
            "general_settings": {"master_key": master_key}}


def proxy_config(router_config: Path, simulator_root: str, out: Path) -> Path:
    """Write :func:`proxy_settings` for ``router_config`` pointed at the simulator to ``out``."""
    import yaml

    from router.config import load_config

    out.write_text(yaml.safe_dump(proxy_settings(load_config(router_config),
                                                 api_root=simulator_root)))
    return out


def measure(*, router_config: Path, clients: int, duration_s: float, prompts: Sequence[str],
            failing: str, with_proxy: bool = True) -> dict[str, Any]:
    """Start the simulator, the router service and (optionally) LiteLLM's proxy; run each target
    healthy and with ``failing`` (a deployment key) down; return the report."""
    from serving.venvs import litellm_proxy_env

    bin_dir = Path(sys.executable).parent
    scratch = Path(tempfile.mkdtemp(prefix="tier-router-load-"))
    sim_port, router_port, proxy_port = free_port(), free_port(), free_port()
    sim_root = f"http://127.0.0.1:{sim_port}"
    decisions = f"sqlite:///{scratch / 'decisions.sqlite'}"
    processes: list[ServerProcess] = []
    report: dict[str, Any] = {"clients": clients, "duration_s": duration_s,
                              "failing_deployment": failing, "runs": {}}
    try:
        processes.append(ServerProcess("simulator", [
            str(bin_dir / "tier-router"), "simulate", "--config", str(router_config), "--port",
            str(sim_port), "--latency-scale", "0"], f"{sim_root}/healthz",
            scratch / "simulator.log"))
        processes.append(ServerProcess("router", [
            str(bin_dir / "bentoml"), "serve", "serving.service:TierRouter", "--host",
            "127.0.0.1", "--port", str(router_port)], f"http://127.0.0.1:{router_port}/readyz",
            scratch / "router.log", fail_marker="Application startup failed", env={
                "ROUTER_DEMO_KEY": LOAD_KEY, "ROUTER_PROVIDER_BASE": sim_root,
                "ROUTER_DECISION_LOG_URL": decisions, "ROUTER_CACHE_DIR": str(scratch / "cache"),
                "ROUTER_CONFIG": str(router_config)}))
        targets = [Target("direct", f"{sim_root}/p/together/v1",
                          "mistralai/mixtral-8x7b-chat"),
                   Target("router", f"http://127.0.0.1:{router_port}/v1", "auto")]
        if with_proxy:
            env = litellm_proxy_env()
            processes.append(ServerProcess("litellm-proxy", [
                str(env / "bin" / "litellm"), "--config",
                str(proxy_config(router_config, sim_root, scratch / "proxy.yaml")), "--host",
                "127.0.0.1", "--port", str(proxy_port)],
                f"http://127.0.0.1:{proxy_port}/health/liveliness", scratch / "proxy.log",
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"}))
            targets.append(Target("litellm_proxy", f"http://127.0.0.1:{proxy_port}/v1",
                                  "simple"))
        for failing_now in (None, failing):
            httpx.put(f"{sim_root}/sim/failures",
                      json={"specs": [f"{failing_now}=1.0"] if failing_now else []}
                      ).raise_for_status()
            for target in targets:
                if failing_now and target.name == "direct":
                    continue  # the direct client has no fallback: nothing to compare
                name = target.name + ("_one_provider_down" if failing_now else "")
                logger.info("load: %s, %d clients, %.0f s", name, clients, duration_s)
                run = asyncio.run(run_load(target, prompts, clients=clients,
                                           duration_s=duration_s))
                summary = run.summary()
                if run.request_ids:
                    summary["decision_rows"] = _rows_for(decisions, run.request_ids)
                report["runs"][name] = summary
                logger.info("load: %s -> %s", name, summary)
        runs = report["runs"]
        if "litellm_proxy" in runs:
            base = runs["direct"]["p50_ms"]
            added_router = runs["router"]["p50_ms"] - base
            added_proxy = runs["litellm_proxy"]["p50_ms"] - base
            report["comparison"] = {
                "router_added_p50_ms": added_router, "proxy_added_p50_ms": added_proxy,
                "added_p50_ratio": added_router / added_proxy if added_proxy > 0 else None,
                "throughput_ratio": (runs["router"]["throughput_rps"]
                                     / runs["litellm_proxy"]["throughput_rps"])}
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _rows_for(url: str, request_ids: list[str]) -> int:
    """Decision rows written for these requests (waits for the service's writer to catch up)."""
    from sqlalchemy import create_engine, select

    from router.telemetry import decisions

    engine = create_engine(url)
    wanted = set(request_ids)
    found = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            found = len(wanted & {row[0] for row in conn.execute(
                select(decisions.c.request_id))})
        if found == len(wanted):
            break
        time.sleep(0.5)
    engine.dispose()
    return found
