"""Operating the service: a shadow challenger and a threshold A/B split driven through the real
service (`bentoml serve`), checked in the decision log and by `tier-router ab|shadow report`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from router.config import GateConfig
from router.telemetry import DecisionLog, DecisionRecord
from tests.conftest import CONFIG_PATH, ServiceProcess, SimulatorProcess, tier_router_exe
from tests.serving.test_service import (  # noqa: F401  (registry is a fixture)
    KEY_A,
    MODEL,
    POINT,
    Registry,
    _ask,
    _post,
    _start,
    registry,
)

REQUESTS = 40


@pytest.fixture(scope="module")
def operated(registry: Registry,  # noqa: F811
             simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    """The service with an A/B split per request (the model's operating point vs a point that
    escalates everything) and the registry's challenger (v2: all critical) in shadow mode."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=registry.tracking_uri).set_registered_model_alias(
        MODEL, "challenger", "2")
    config = yaml.safe_load(CONFIG_PATH.read_text())
    config["ab"] = {"enabled": True, "split_by": "request", "salt": "test", "variants": [
        {"name": "fitted"},
        {"name": "escalate-all", "gate": {"escalate_threshold": 1.0, "trust_threshold": 1.0}}]}
    path = registry.root / "ab-router.yaml"
    path.write_text(yaml.safe_dump(config))
    process = _start(registry, simulator, "operated", ROUTER_CONFIG=str(path),
                     ROUTER_SHADOW_CLASSIFIER=f"models:/{MODEL}@challenger")
    process.config_path = path  # type: ignore[attr-defined]
    yield process
    process.stop()


def _rows(service: ServiceProcess, ids: list[str]) -> dict[str, DecisionRecord]:
    with DecisionLog(service.decisions_url) as log:  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = {r.request_id: r for r in log.read()}
            if set(ids) <= set(rows):
                return rows
            time.sleep(0.2)
    raise AssertionError(f"{len(set(ids) - set(rows))} decisions never reached the log")


def _cli(*args: str) -> dict:
    done = subprocess.run([*tier_router_exe(), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_shadow_and_ab_split_are_recorded_and_reported(operated: ServiceProcess) -> None:
    ids = [_post(operated, KEY_A, _ask(f"Operate me, request {i}")).headers[
        "x-router-request-id"] for i in range(REQUESTS)]
    rows = _rows(operated, ids)
    mine = [rows[i] for i in ids]
    arms = {row.variant for row in mine}
    assert arms == {"fitted", "escalate-all"}
    for row in mine:
        # v1 is ~sure only simple's answer is acceptable: the model's point routes it there;
        # the escalate-all arm (confidence never reaches 1) sends it up, to critical since no
        # tier's P reaches trust 1; the challenger (v2) would always have gone critical.
        if row.variant == "fitted":
            assert (row.threshold_source, row.gate_action, row.final_tier) == (
                "model:tiny-1", "route", "simple")
            assert row.thresholds == POINT
        else:
            assert (row.threshold_source, row.gate_action) == ("ab:escalate-all", "escalate")
            assert (row.predicted_tier, row.final_tier) == ("simple", "critical")
            # a variant's gate is a whole operating point: what it leaves out is the config
            # class's default, not the model's fitted value
            assert {k: row.thresholds[k] for k in ("trust", "escalate")} == {
                "trust": 1.0, "escalate": 1.0}
            assert row.thresholds["price_weight"] == GateConfig().price_weight
            assert GateConfig().price_weight != POINT["price_weight"]
        prices = row.extra["expected_cost_usd"]  # what the rule weighed, for ab replay
        assert prices["critical"] > prices["medium"] > 0 and prices["critical"] > prices["simple"]
        shadow = row.shadow
        assert shadow["model_version"] == "tiny-2" and shadow["target_tier"] == "critical"
        assert shadow["agrees"] is (row.variant == "escalate-all")
        assert shadow["est_cost_usd"] > 0 and shadow["live_est_cost_usd"] > 0

    db = operated.decisions_url  # type: ignore[attr-defined]
    config = str(operated.config_path)  # type: ignore[attr-defined]
    small = _cli("ab", "report", "--config", config, "--db", db)
    assert small["verdict"].startswith("not enough data")
    assert sum(v["requests"] for v in small["variants"].values()) >= REQUESTS
    judged = _cli("ab", "report", "--config", config, "--db", db, "--min-requests", "10",
                  "--bootstrap", "500")
    assert judged["control"] == "fitted"
    assert judged["verdict"].startswith("fitted is better than escalate-all on "
                                        "cost_per_task_usd, escalation_rate")
    assert "quality: not enough data" in judged["verdict"]  # nobody rated an answer
    # Offline: the same logged traffic decided again under each arm (the control arm takes the
    # champion's fitted operating point, hence --model).
    replayed = _cli("ab", "replay", "--config", config, "--db", db, "--model",
                    f"models:/{MODEL}@champion", "--tracking-uri",
                    operated.tracking_uri)["variants"]  # type: ignore[attr-defined]
    assert replayed["fitted"]["gate_escalation_rate"] == 0.0
    assert replayed["escalate-all"]["gate_escalation_rate"] == 1.0
    assert (replayed["escalate-all"]["est_cost_per_task_usd"]
            > replayed["fitted"]["est_cost_per_task_usd"])
    shadow = _cli("shadow", "report", "--config", config, "--db", db)["all"]
    escalate_share = sum(r.variant == "escalate-all" for r in mine) / len(mine)
    assert shadow["agreement"] == pytest.approx(escalate_share, abs=0.1)
    assert shadow["est_cost_per_task_usd"]["ratio"] > 1  # the challenger would cost more
    metrics = httpx.get(f"{operated.root}/metrics").text
    assert "tier_router_window_escalation_rate" in metrics
    assert "tier_router_window_confidence_psi" in metrics
    assert 'tier_router_shadow_total{agrees="false"}' in metrics
    assert 'tier_router_shadow_est_cost_usd_total{which="would_be"}' in metrics
    # The same figures from the log, judged by the alert rules; the escalate-all arm pushes
    # the escalation rate far above DESIGN's 5% (the tiny models carry no drift reference).
    watched = _cli("monitor", "--config", config, "--db", db, "--window", "1000",
                   "--model", f"models:/{MODEL}@champion", "--tracking-uri",
                   operated.tracking_uri)  # type: ignore[attr-defined]
    assert watched["figures"]["escalation_rate"] == pytest.approx(escalate_share, abs=0.1)
    assert "TierRouterEscalationAboveTarget" in watched["firing"]
    assert watched["figures"]["tier_psi"] is None  # NaN is written as null


def test_the_shadow_follows_the_challenger_alias(operated: ServiceProcess,
                                                 registry: Registry) -> None:  # noqa: F811
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.tracking_uri)
    client.set_registered_model_alias(MODEL, "challenger", "1")
    try:
        deadline = time.monotonic() + 60
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1  # a new question each time: a cache hit runs no classifier
            request_id = _post(operated, KEY_A, _ask(f"Who shadows me now? ({attempt})")).headers[
                "x-router-request-id"]
            shadow = _rows(operated, [request_id])[request_id].shadow
            if shadow["model_version"] == "tiny-1":
                break
            time.sleep(0.3)
        assert shadow["model_version"] == "tiny-1"
    finally:
        client.set_registered_model_alias(MODEL, "challenger", "2")
