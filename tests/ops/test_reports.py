"""The operators' reports on decision records: A/B comparison and replay, shadow, monitor."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from ops.ab import compare, replay
from ops.monitor import evaluate, load_rules, report
from ops.shadow import report as shadow_report
from router.config import ABVariant, GateConfig, RouterConfig
from router.gate import OperatingPoint
from router.telemetry import DecisionRecord

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts" / "tier-router.rules.yml"


# The expected USD the request path weighed for every record below (a long request: critical
# at 4 cents).
PRICES = {"simple": 1e-4, "medium": 2e-4, "critical": 4e-2}


def _record(i: int, variant: str | None, cost: float, escalate: bool,
            rating: str | None = None) -> DecisionRecord:
    """A decided request as the request path logs it: per-tier P(acceptable), the expected
    price per tier and the allowed tiers under ``extra``. ``escalate``: an unsure one (simple
    0.6, critical 0.97) the gate escalated, else a confident simple one."""
    return DecisionRecord(
        request_id=f"r{i}", tenant="t", text_hash="h", requested_model="auto",
        variant=variant, cost_usd=cost, status="ok", predicted_tier="simple",
        confidence=0.6 if escalate else 0.95, final_tier="critical" if escalate else "simple",
        gate_action="escalate" if escalate else "route",
        feedback=json.dumps({"rating": rating, "comment": None}) if rating else None,
        scores={"simple": 0.6 if escalate else 0.95, "medium": 0.3 if escalate else 0.03,
                "critical": 0.97 if escalate else 0.02},
        extra={"expected_cost_usd": dict(PRICES), "prompt_tokens_estimate": 100.0,
               "allowed": ["simple", "medium", "critical"]},
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


def test_replay_decides_logged_scores_again_under_each_variant(
        router_config: RouterConfig) -> None:
    records = [_record(i, None, 1e-3, i % 4 == 0) for i in range(40)]
    # logged before the request path recorded prices: not replayable, counted
    old = [dataclasses.replace(_record(100 + i, None, 1e-3, False), extra={}) for i in range(3)]
    overridden = dataclasses.replace(_record(200, None, 1e-3, False), gate_action=None)
    variants = [ABVariant(name="model"),
                ABVariant(name="lenient", gate=GateConfig(price_weight=1000.0,
                                                          escalate_threshold=0.1,
                                                          trust_threshold=0.5)),
                ABVariant(name="quality", gate=GateConfig(price_weight=0.0))]
    model = OperatingPoint(50.0, 0.9, 0.7, 0.5, "model:v")
    result = replay(records + old + [overridden], variants, router_config, model)
    assert (result["requests"], result["skipped_without_prices"]) == (40, 3)
    assert "not replayable" in result["quality"]
    by_name = result["variants"]
    # model, lambda 50 (x PRICES: simple 0.005, medium 0.01, critical 2.0):
    #   unsure rows: 0.595 vs 0.29 vs -1.03 -> simple at 0.6 < escalate 0.7 -> escalated to
    #   critical (0.97 >= trust 0.9); confident rows: simple at 0.95 >= 0.9, routed.
    assert by_name["model"]["thresholds"] == model.as_dict()
    assert by_name["model"]["gate_escalation_rate"] == 0.25
    assert by_name["model"]["tier_share"] == {"simple": 0.75, "medium": 0.0, "critical": 0.25}
    # lenient, lambda 1000 (its own): unsure rows 0.6 - 0.1 = 0.5 beats medium's
    #   0.3 - 0.2 and critical's 0.97 - 40 -> simple at 0.6 >= trust 0.5, routed: all simple.
    assert by_name["lenient"]["thresholds"] == {"price_weight": 1000.0, "trust": 0.5,
                                                "escalate": 0.1, "score_threshold": 0.5,
                                                "escalation_weight": 0.0}
    assert by_name["lenient"]["gate_escalation_rate"] == 0.0
    assert by_name["lenient"]["tier_share"] == {"simple": 1.0, "medium": 0.0, "critical": 0.0}
    simple = router_config.list_price("simple", 100, 50)
    critical = router_config.list_price("critical", 100, 50)
    assert by_name["lenient"]["est_cost_per_task_usd"] == pytest.approx(simple)
    # quality, lambda 0: the likeliest answer -- critical (0.97) on the unsure rows, routed
    assert by_name["quality"]["gate_escalation_rate"] == 0.0
    assert by_name["quality"]["tier_share"]["critical"] == 0.25
    assert by_name["quality"]["est_cost_per_task_usd"] == pytest.approx(
        0.75 * simple + 0.25 * critical)
    assert by_name["quality"]["priced_requests"] == 40
    with pytest.raises(ValueError, match="--model"):
        replay(records, variants, router_config, None)


def test_replay_never_chooses_a_tier_the_request_had_no_evidence_for(
        router_config: RouterConfig) -> None:
    # lenient (lambda 1000): 0.2 - 0.1 = 0.1 vs medium 0.9 - 0.2 = 0.7 vs critical 0.3 - 40:
    # medium where it is allowed; where medium was unseen, simple at 0.2 (in [0.1, 0.5):
    # a cascade from simple).
    lenient = ABVariant(name="lenient", gate=GateConfig(price_weight=1000.0,
                                                        escalate_threshold=0.1,
                                                        trust_threshold=0.5))
    seen = dataclasses.replace(_record(0, None, 1e-3, False),
                               scores={"simple": 0.2, "medium": 0.9, "critical": 0.3})
    unseen = dataclasses.replace(seen, request_id="r1", extra={
        **seen.extra, "allowed": ["simple", "critical"]})
    shares = [replay([r], [lenient], router_config, None)["variants"]["lenient"]["tier_share"]
              for r in (seen, unseen)]
    assert shares == [{"simple": 0.0, "medium": 1.0, "critical": 0.0},
                      {"simple": 1.0, "medium": 0.0, "critical": 0.0}]


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
