"""The operators' reports on decision records: A/B comparison and replay, shadow, monitor."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ops.ab import compare, replay
from ops.monitor import evaluate, load_rules, report
from ops.shadow import report as shadow_report
from router.config import ABVariant, GateConfig, RouterConfig
from router.gate import Thresholds
from router.telemetry import DecisionRecord

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts" / "tier-router.rules.yml"


def _record(i: int, variant: str | None, cost: float, escalate: bool,
            rating: str | None = None) -> DecisionRecord:
    return DecisionRecord(
        request_id=f"r{i}", tenant="t", text_hash="h", requested_model="auto",
        variant=variant, cost_usd=cost, status="ok", predicted_tier="simple",
        confidence=0.6 if escalate else 0.95, final_tier="critical" if escalate else "simple",
        gate_action="escalate" if escalate else "route",
        feedback=json.dumps({"rating": rating, "comment": None}) if rating else None,
        scores={"simple": 0.6 if escalate else 0.95, "medium": 0.3 if escalate else 0.03,
                "critical": 0.1 if escalate else 0.02},
        prompt_tokens=100, completion_tokens=50)


def _arm(name: str, n: int, escalation: float, positive: float, seed: int,
         start: int = 0) -> list[DecisionRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        escalate = rng.random() < escalation
        out.append(_record(start + i, name, 5e-3 if escalate else 5e-4, escalate,
                           "positive" if rng.random() < positive else "negative"))
    return out


def test_a_tiny_sample_gets_not_enough_data() -> None:
    records = _arm("a", 30, 0.2, 0.9, 1) + _arm("b", 30, 0.05, 0.9, 2, start=100)
    result = compare(records, order=["a", "b"])
    assert result["verdict"].startswith("not enough data")
    assert "a has 30 requests" in result["verdict"] and result["comparisons"] == {}
    assert result["variants"]["a"]["requests"] == 30
    assert compare(_arm("a", 500, 0.1, 0.9, 1))["verdict"].startswith("not enough data")


def test_a_clearly_better_arm_wins_and_equal_arms_do_not() -> None:
    records = _arm("a", 600, 0.25, 0.9, 1) + _arm("b", 600, 0.05, 0.9, 2, start=1000)
    result = compare(records, order=["a", "b"])
    row = result["comparisons"]["b"]
    assert row["escalation_rate"]["better"] == "b" and row["cost_per_task_usd"]["better"] == "b"
    low, high = row["escalation_rate"]["ci95"]
    assert low < row["escalation_rate"]["difference"] < high < 0
    assert row["quality"]["better"] is None  # same positive share: no detectable difference
    assert result["verdict"].startswith("b is better than a on cost_per_task_usd, "
                                        "escalation_rate")
    same = compare(_arm("a", 600, 0.1, 0.9, 1) + _arm("b", 600, 0.1, 0.9, 2, start=1000),
                   order=["a", "b"])
    assert same["verdict"] == "no detectable difference between b and a"
    # cheaper but clearly worse answers: a trade-off, said as one
    worse = compare(_arm("a", 600, 0.25, 0.95, 1) + _arm("b", 600, 0.05, 0.6, 2, start=1000),
                    order=["a", "b"])
    assert worse["verdict"].startswith("trade-off: b is better on cost_per_task_usd")
    assert "worse on quality" in worse["verdict"]


def test_replay_gates_logged_scores_under_each_variant(router_config: RouterConfig) -> None:
    records = [_record(i, None, 1e-3, i % 4 == 0) for i in range(40)]
    variants = [ABVariant(name="model"),
                ABVariant(name="lenient", gate=GateConfig(escalate_threshold=0.1,
                                                          trust_threshold=0.5))]
    result = replay(records, variants, router_config, Thresholds(0.7, 0.9, "model:v"))
    assert result["requests"] == 40 and "not replayable" in result["quality"]
    assert result["variants"]["model"]["gate_escalation_rate"] == 0.25
    assert result["variants"]["lenient"]["gate_escalation_rate"] == 0.0
    simple = router_config.list_price("simple", 100, 50)
    assert result["variants"]["lenient"]["est_cost_per_task_usd"] == pytest.approx(simple)
    with pytest.raises(ValueError, match="--model"):
        replay(records, variants, router_config, None)


def test_shadow_report_counts_agreement_and_would_be_cost() -> None:
    records = []
    for i in range(10):
        record = _record(i, None, 1e-3, False)
        record.target_tier = "simple"
        would = "critical" if i < 4 else "simple"
        record.shadow = {"model_version": "v2", "target_tier": would,
                         "agrees": would == "simple", "same_prediction": would == "simple",
                         "gate_action": "route", "est_cost_usd": 4.0 if i < 4 else 1.0,
                         "live_est_cost_usd": 1.0}
        records.append(record)
    records[-1].shadow = {"model_version": "v2", "error": "RuntimeError: boom"}
    figures = shadow_report(records)["by_version"]["v2"]
    assert figures["errors"] == 1 and figures["agreement"] == pytest.approx(5 / 9)
    assert figures["est_cost_per_task_usd"]["ratio"] == pytest.approx((4 * 4 + 5) / 9)
    assert figures["target_tiers"] == {"simple": {"critical": 4, "simple": 5}}


def test_the_rules_file_is_evaluated_on_window_figures() -> None:
    rules = load_rules(RULES)
    by_name = {rule["alert"]: rule for rule in rules}
    stats = {"escalation_rate": 0.08, "gate_escalation_rate": 0.30,
             "reference_gate_escalation_rate": 0.22, "confidence_psi": 0.1, "tier_psi": 0.4}
    results = {r["alert"]: r for r in (evaluate(rule, stats) for rule in rules)}
    assert results["TierRouterEscalationAboveTarget"]["firing"] is True
    assert results["TierRouterEscalationCreep"]["firing"] is True
    assert results["TierRouterEscalationCreep"]["bound"] == pytest.approx(0.27)
    assert results["TierRouterConfidenceDrift"]["firing"] is False
    assert results["TierRouterTierMixDrift"]["firing"] is True
    assert results["TierRouterDecisionLogSpilling"]["evaluated"] is False
    # NaN (an empty window) never fires
    assert evaluate(by_name["TierRouterTierMixDrift"], {"tier_psi": float("nan")})[
        "firing"] is False
    empty = report([], None, rules, 100)
    assert empty["firing"] == [] and empty["window"]["requests"] == 0
