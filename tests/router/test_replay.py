"""`tier-router replay`: the acceptance scenarios, through the console script over HTTP."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest

from router.telemetry import DecisionLog
from tests.conftest import CONFIG_PATH, SimulatorProcess, tier_router_exe


def run_replay(tmp_path: Path, simulator: SimulatorProcess, classifier: str, limit: int,
               name: str) -> tuple[dict, list]:
    out = tmp_path / f"{name}.json"
    db = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    result = subprocess.run(
        [*tier_router_exe(), "replay", "--config", str(CONFIG_PATH), "--workload", "routerbench",
         "--limit", str(limit), "--out", str(out), "--simulator", simulator.root,
         "--classifier", classifier, "--decision-log", db],
        capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with DecisionLog(db) as log:
        rows = log.read()
    return json.loads(out.read_text()), rows


@pytest.fixture(scope="module")
def simple_a_down() -> SimulatorProcess:
    process = SimulatorProcess("--fail", "together/mistralai/mixtral-8x7b-chat=1.0")
    yield process
    process.stop()


def test_first_simple_provider_down(tmp_path: Path, simple_a_down: SimulatorProcess) -> None:
    report, rows = run_replay(tmp_path, simple_a_down, "fixed:simple", 200, "simple-a-down")
    assert report["requests"] == 200
    assert report["failures"] == 0
    assert len(rows) == 200
    assert {row.final_model for row in rows} == {"fireworks/mixtral-8x7b-chat"}
    same_tier = [row for row in rows
                 if any(f["kind"] == "deployment" for f in row.fallbacks)]
    assert same_tier, "the rows must show the same-tier fallback"
    for row in same_tier:
        assert row.deployments_tried[0] == "together/mixtral-8x7b-chat"
    assert report["fallbacks"]["deployment"] == len(same_tier)
    assert report["per_tier"]["simple"]["requests"] == 200
    # Quality from the simulator's evaluation lookup: Mixtral's recorded RouterBench accuracy.
    assert 0.6 < report["quality"] < 0.85
    assert report["escalation_rate"] == 0.0
    assert report["p50_ms"] <= report["p95_ms"]
    # fixed:simple: p 1 for simple and only simple allowed, so the rule chooses it at 1.0 and
    # routes; it stores no operating point, the config's defaults decide (and are recorded).
    config_point = {"price_weight": 50.0, "trust": 0.8, "escalate": 0.5,
                    "score_threshold": 0.5, "escalation_weight": 0.0}
    for row in rows:
        assert (row.predicted_tier, row.confidence, row.gate_action) == ("simple", 1.0, "route")
        assert (row.threshold_source, row.thresholds) == ("config", config_point)
        assert row.extra["allowed"] == ["simple"]
        prices = row.extra["expected_cost_usd"]
        # the same prompt and output tokens at each tier: GPT-4's prices are 18-55x Mixtral's
        assert 0 < prices["simple"] < prices["medium"] < prices["critical"]


def test_whole_simple_tier_down_and_frontier_down(tmp_path: Path,
                                                  simple_a_down: SimulatorProcess) -> None:
    plan = f"{simple_a_down.root}/sim/failures"
    httpx.put(plan, json={"specs": ["together/mistralai/mixtral-8x7b-chat=1.0",
                                    "fireworks/mistralai/mixtral-8x7b-chat=1.0"]}
              ).raise_for_status()
    report, rows = run_replay(tmp_path, simple_a_down, "fixed:simple", 40, "simple-down")
    assert (report["failures"], len(rows)) == (0, 40)
    assert Counter(row.final_tier for row in rows) == {"medium": 40}
    for row in rows:
        tier_fallbacks = [f for f in row.fallbacks if f["kind"] == "tier"]
        assert [(f["from"], f["to"]) for f in tier_fallbacks] == [("simple", "medium")]
        assert row.gate_action == "route"  # a fallback, not an escalation
    assert report["escalation_rate"] == 0.0

    httpx.put(plan, json={"specs": ["openai/gpt-4-1106-preview=1.0",
                                    "azure/gpt-4-1106-preview=1.0"]}).raise_for_status()
    try:
        report, rows = run_replay(tmp_path, simple_a_down, "fixed:critical", 20, "gpt4-down")
    finally:
        httpx.put(plan, json={"specs": ["together/mistralai/mixtral-8x7b-chat=1.0"]})
    assert (report["requests"], report["failures"], len(rows)) == (20, 20, 20)
    assert all(row.status == "error" and "no deployment could answer" in row.error
               for row in rows)
    assert report["quality"] == 0.0
