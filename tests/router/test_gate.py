"""The decision rule and the gate (router/gate.py), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from router.config import GateConfig
from router.gate import (
    CASCADE,
    ESCALATE,
    ROUTE,
    GateError,
    OperatingPoint,
    decide,
    decide_many,
    escalation_after_failure,
    replay,
    resolve_point,
)

# Prices in USD: simple 0.1 m$, medium 0.2 m$, critical 4 m$ (a GPT-4-like 40x).
PRICES = {"simple": 1e-4, "medium": 2e-4, "critical": 4e-3}
POINT = OperatingPoint(price_weight=50.0, trust=0.8, escalate=0.5, score_threshold=0.6)


@pytest.mark.parametrize(("scores", "action", "chosen", "target"), [
    # utilities at lambda 50: 0.90-0.005, 0.90-0.01, 0.95-0.2 -> simple, trusted: route.
    ({"simple": 0.90, "medium": 0.90, "critical": 0.95}, "route", "simple", "simple"),
    # 0.70-0.005 = 0.695 vs 0.72-0.01 = 0.71 vs 0.92-0.2 = 0.72 -> critical: always routed.
    ({"simple": 0.70, "medium": 0.72, "critical": 0.92}, "route", "critical", "critical"),
    # 0.70 vs 0.70-0.01 vs 0.80-0.2: simple at 0.70, in the cascade band [0.5, 0.8).
    ({"simple": 0.705, "medium": 0.70, "critical": 0.80}, "cascade", "simple", "simple"),
    # 0.395 vs 0.84 vs 0.45: the rule itself picks medium (not an escalation), trusted.
    ({"simple": 0.40, "medium": 0.85, "critical": 0.65}, "route", "medium", "medium"),
    # 0.395 vs 0.29 vs 0.39: simple at 0.40 < escalate, no tier above reaches trust: critical.
    ({"simple": 0.40, "medium": 0.30, "critical": 0.59}, "escalate", "simple", "critical"),
])
def test_rule_and_gate(scores: dict, action: str, chosen: str, target: str) -> None:
    decision = decide(scores, PRICES, POINT)
    assert (decision.action, decision.chosen_tier, decision.target_tier) == (action, chosen,
                                                                              target)
    assert decision.confidence == scores[chosen]


def test_escalation_goes_to_the_cheapest_trusted_tier_above() -> None:
    # lambda large: simple chosen at 0.45 (< escalate 0.5); medium 0.82 >= trust 0.8.
    point = OperatingPoint(1e6, 0.8, 0.5, 0.6)
    found = decide({"simple": 0.45, "medium": 0.82, "critical": 0.99}, PRICES, point)
    assert (found.action, found.chosen_tier, found.target_tier) == ("escalate", "simple",
                                                                    "medium")
    # medium disallowed: critical instead (no allowed tier above reaches trust).
    found = decide({"simple": 0.45, "medium": 0.82, "critical": 0.99}, PRICES, point,
                   {"simple": True, "medium": False, "critical": True})
    assert found.target_tier == "critical"


def test_price_weight_zero_buys_the_likeliest_answer_and_ties_go_up() -> None:
    point = OperatingPoint(0.0, 0.0, 0.0, 0.5)
    assert decide({"simple": 0.8, "medium": 0.8, "critical": 0.7}, PRICES,
                  point).chosen_tier == "medium"


def test_a_disallowed_tier_is_never_chosen_but_critical_always_is_a_candidate() -> None:
    scores = {"simple": 0.6, "medium": 0.99, "critical": 0.7}
    allowed = {"simple": True, "medium": False, "critical": False}
    found = decide(scores, PRICES, OperatingPoint(1.0, 0.5, 0.0, 0.5), allowed)
    assert found.chosen_tier == "critical"  # 0.7 - 0.004 > 0.6 - 0.0001; medium excluded


def test_vectorised_and_scalar_agree() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, (500, 3))
    price = np.column_stack([rng.uniform(1e-5, 1e-3, 500), rng.uniform(1e-5, 1e-3, 500),
                             rng.uniform(1e-3, 1e-2, 500)])
    allowed = rng.uniform(0, 1, (500, 3)) > 0.2
    out = decide_many(p, price, POINT, allowed)
    names = ("simple", "medium", "critical")
    for i in range(500):
        one = decide(dict(zip(names, p[i], strict=True)), dict(zip(names, price[i], strict=True)),
                     POINT, dict(zip(names, allowed[i], strict=True)))
        assert (one.chosen_tier, one.target_tier) == (names[out.chosen[i]], names[out.target[i]])
        assert ("route", "cascade", "escalate").index(one.action) == out.action[i]


def test_after_a_failed_check_the_rule_chooses_among_the_tiers_above() -> None:
    scores = {"simple": 0.6, "medium": 0.9, "critical": 0.95}
    # at lambda 50: medium 0.9 - 0.01 beats critical 0.95 - 0.2
    assert escalation_after_failure(scores, PRICES, POINT, "simple") == "medium"
    assert escalation_after_failure(scores, PRICES, POINT, "medium") == "critical"
    assert escalation_after_failure(scores, PRICES, POINT, "critical") is None


def test_replay_charges_every_call_and_maps_aliased_tiers() -> None:
    # Row 0: cascade at simple, its answer scores 0.2 < 0.6: escalates; the rule picks medium,
    #        which this two-tier row answers with critical (executes[0, 1] = 2).
    # Row 1: cascade at simple, answer scores 0.9: kept.
    # Row 2: overridden to critical.
    # Row 3: simple chosen at 0.3 < escalate: gate escalation to critical (medium 0.7 < trust).
    p = np.array([[0.7, 0.9, 0.95], [0.7, 0.9, 0.95], [0.9, 0.9, 0.9], [0.3, 0.7, 0.75]])
    price = np.tile([1e-4, 2e-4, 4e-3], (4, 1))
    scores = np.array([[0.2, np.nan, 0.9], [0.9, 0.5, 0.9], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]])
    executes = np.array([[0, 2, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
    point = OperatingPoint(1e4, 0.8, 0.5, 0.6)
    run = replay(p, price, point, scores, executes, max_calls=2,
                 forced=np.array([-1, -1, 2, -1]))
    assert run.decisions.action.tolist() == [CASCADE, CASCADE, ROUTE, ESCALATE]
    assert run.final.tolist() == [2, 0, 2, 2]
    assert run.called.tolist() == [[True, False, True], [True, False, False],
                                   [False, False, True], [False, False, True]]
    assert run.escalated.tolist() == [True, False, False, True]
    assert run.calls.tolist() == [2, 1, 1, 1]
    routed = replay(p, price, point, scores, executes, max_calls=2, cascade=False)
    assert routed.final.tolist() == [0, 0, 0, 2]  # no checks: row 0 keeps its simple answer


def test_point_precedence_and_validation() -> None:
    config = GateConfig(price_weight=10.0, escalate_threshold=0.4, trust_threshold=0.9,
                        score_threshold=0.3)
    assert resolve_point(config).as_dict() == {"price_weight": 10.0, "trust": 0.9,
                                                "escalate": 0.4, "score_threshold": 0.3,
                                                "escalation_weight": 0.0}
    fitted = OperatingPoint(100.0, 0.7, 0.2, 0.5, "model:v3")
    assert resolve_point(config, fitted) is fitted
    variant = resolve_point(config, fitted, variant=("b", GateConfig(price_weight=5.0)))
    assert (variant.price_weight, variant.source) == (5.0, "ab:b")
    with pytest.raises(GateError, match="escalate <= trust"):
        OperatingPoint(1.0, 0.8, 0.9, 0.5, "model:x")
    with pytest.raises(GateError, match="price_weight"):
        OperatingPoint(-1.0, 0.8, 0.5, 0.5)
    with pytest.raises(GateError, match="lacks"):
        OperatingPoint.from_dict({"trust": 0.8}, "model:x")
    with pytest.raises(GateError, match="lacks tier"):
        decide({"simple": 1.0}, PRICES, POINT)
