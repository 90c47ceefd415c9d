"""The benchmark's arithmetic on synthetic observations: gate, cascade rules, hulls, AIQ."""

from __future__ import annotations

import numpy as np
import pytest

from bench.approaches import (
    CASCADE,
    ESCALATE,
    ROUTE,
    HybridKnobs,
    Observations,
    aiq,
    cascade_only,
    gate_actions,
    hybrid,
    oracle,
    single_tier,
    upper_hull,
)
from router.cascade import next_tier
from router.gate import Thresholds, decide
from router.tiers import TIERS


def _obs(n: int = 300, seed: int = 0, two_tier: bool = False) -> Observations:
    rng = np.random.default_rng(seed)
    correct = (rng.random((n, 3)) < [0.6, 0.75, 0.9]).astype(float)
    cost = np.tile([1.0, 2.0, 20.0], (n, 1))
    latency = np.tile([100.0, 200.0, 1000.0], (n, 1))
    scores = np.clip(correct * 0.6 + rng.random((n, 3)) * 0.4, 0, 1)  # informative scorer
    mapping = np.array([0, 2, 2]) if two_tier else np.arange(3)
    return Observations(ids=[str(i) for i in range(n)], categories=["a", "b"] * (n // 2),
                        probs=rng.dirichlet([1, 1, 1], n), overridden=rng.random(n) < 0.05,
                        overhead_ms=np.full(n, 5.0), correct=correct, cost=cost,
                        latency_ms=latency, scores=scores, tier_map=mapping)


def test_vectorised_gate_matches_the_router_gate() -> None:
    probs = np.random.default_rng(1).dirichlet([1, 1, 1], 1000)
    names = {ROUTE: "route", CASCADE: "cascade", ESCALATE: "escalate"}
    for e, t in ((0.4, 0.8), (0.0, 1.0), (0.6, 0.6)):
        action, predicted, target = gate_actions(probs, e, t)
        for row, a, p, g in zip(probs, action, predicted, target, strict=True):
            d = decide(dict(zip(TIERS, row.tolist(), strict=True)), Thresholds(e, t, "t"))
            assert (names[int(a)], TIERS[p], TIERS[g]) == (d.action, d.predicted_tier,
                                                           d.target_tier)


def test_cascade_rules() -> None:
    assert next_tier("simple", 1, 2) == "critical"  # the last allowed call goes to the frontier
    assert next_tier("simple", 1, 3) == "medium"
    assert next_tier("medium", 2, 3) == "critical"
    assert next_tier("simple", 2, 2) is None and next_tier("critical", 1, 3) is None


def test_cascade_calls_at_most_max_calls_and_pays_for_each() -> None:
    obs = _obs()
    never = cascade_only(obs, 0.0, max_calls=2, overrides=False)
    assert np.allclose(never.cost, 1.0) and not never.escalated.any()
    always = cascade_only(obs, 1.01, max_calls=2, overrides=False)
    assert np.allclose(always.cost, 21.0)  # simple, then straight to critical
    assert np.allclose(always.correct, obs.correct[:, 2]) and always.escalated.all()
    three = cascade_only(obs, 1.01, max_calls=3, overrides=False)
    assert np.allclose(three.cost, 23.0) and np.allclose(three.latency_ms, 1305.0)


def test_two_tier_workload_never_pays_a_medium_price() -> None:
    obs = _obs(two_tier=True)
    run = hybrid(obs, HybridKnobs(0.5, 0.9, 0.5, max_calls=3))
    assert set(np.unique(run.cost)) <= {1.0, 20.0, 21.0}
    assert np.array_equal(single_tier(obs, 1).cost, single_tier(obs, 2).cost)


def test_oracle_is_best_and_hybrid_between_its_endpoints() -> None:
    obs = _obs()
    best = oracle(obs)
    for run in (hybrid(obs, HybridKnobs(0.3, 0.8, 0.5)), single_tier(obs, 2),
                cascade_only(obs, 0.5)):
        assert best.correct.mean() >= run.correct.mean()
    assert best.cost.mean() <= single_tier(obs, 2).cost.mean()
    # everything escalated -> frontier-only (overrides off, trust 1: cumulative reaches only at
    # critical)
    everything = hybrid(obs, HybridKnobs(1.0, 1.0, 0.0, overrides=False))
    assert np.allclose(everything.correct, obs.correct[:, 2])


def test_hull_and_aiq() -> None:
    curve = upper_hull(np.array([2.0, 3.0, 5.0]), np.array([0.5, 0.9, 0.6]), (1.0, 0.5),
                       (10.0, 1.0))
    assert curve.cost.tolist() == [1.0, 3.0, 10.0]  # (2, .5) dominated, (5, .6) below the chord
    assert aiq(curve, 1.0, 10.0) == pytest.approx(
        ((0.5 + 0.9) / 2 * 2 + (0.9 + 1.0) / 2 * 7) / 9, abs=1e-3)
    flat = upper_hull(np.array([]), np.array([]), (1.0, 0.5), (2.0, 0.5))
    assert aiq(flat, 1.0, 2.0) == pytest.approx(0.5)
