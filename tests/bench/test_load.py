"""The load command's parts on a tiny scale: the closed loop against the real simulator, and the
LiteLLM proxy config it writes (the full run is `tier-router load`, see docs/reliability.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from bench.load import Target, proxy_config, run_load
from tests.conftest import CONFIG_PATH, SimulatorProcess


def test_closed_loop_counts_every_request(simulator: SimulatorProcess) -> None:
    target = Target("direct", simulator.url("together"), "mistralai/mixtral-8x7b-chat")
    run = asyncio.run(run_load(target, ["What is 2+2?", "Name a colour."], clients=3,
                               duration_s=1.0))
    summary = run.summary()
    assert summary["requests"] > 3 and summary["errors"] == 0
    assert summary["statuses"] == {"200": summary["requests"]}
    assert summary["throughput_rps"] == len(run.latencies_ms) / 1.0
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    wrong = Target("direct", simulator.url("together"), "no-such-model")
    failed = asyncio.run(run_load(wrong, ["hi"], clients=1, duration_s=0.3)).summary()
    assert failed["errors"] == failed["requests"] > 0


def test_proxy_config_is_the_routers_model_list_on_the_simulator(tmp_path: Path) -> None:
    written = yaml.safe_load(proxy_config(CONFIG_PATH, "http://127.0.0.1:9999",
                                          tmp_path / "proxy.yaml").read_text())
    groups = {entry["model_name"] for entry in written["model_list"]}
    assert groups == {"simple", "medium", "critical"}
    assert all(entry["litellm_params"]["api_base"].startswith("http://127.0.0.1:9999/p/")
               for entry in written["model_list"])
    assert written["general_settings"]["master_key"]
