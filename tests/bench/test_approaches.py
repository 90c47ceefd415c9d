"""The benchmark's arithmetic on small hand-built observations: every expected cost and quality
here is worked out by hand from the rows, not from the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.approaches import (
    Observations,
    ObservationsError,
    Sweep,
    aiq,
    cascade_only,
    endpoints,
    envelope_settings,
    hybrid,
    interpolated,
    oracle,
    share_curve,
    single_tier,
    upper_hull,
    val_fixed_curve,
    without_medium,
    x_at,
)
from bench.report import REPORT_FORMAT as RENDERED_FORMAT
from bench.report import render
from bench.run import REPORT_FORMAT, BenchSettings, CategoryRules, evaluate, price_weight_grid
from router.gate import OperatingPoint, replay

NAN = float("nan")
POINT = OperatingPoint(price_weight=10.0, trust=0.9, escalate=0.5, score_threshold=0.5,
                       source="model:test")


def _obs(p, prices, scores, correct, cost, latency, *, tier_map=None, forced=None,
         allowed=None, scorer_ms: float = 0.0, categories=None) -> Observations:
    n = len(p)
    return Observations(
        ids=[f"r{i}" for i in range(n)], categories=categories or ["a"] * n,
        p=np.array(p, float), prices=np.array(prices, float),
        allowed=np.ones((n, 3), bool) if allowed is None else np.array(allowed, bool),
        forced=np.full(n, -1) if forced is None else np.array(forced),
        overhead_ms=np.full(n, 5.0), correct=np.array(correct, float),
        cost=np.array(cost, float), latency_ms=np.array(latency, float),
        scores=np.array(scores, float), tier_map=tier_map, scorer_ms=scorer_ms)


def _two_tier() -> Observations:
    """RouteLLM-like rows: medium is answered by critical (tier_map [0, 2, 2]). The medium
    column holds *decoys* -- a cheap cost (2), the opposite of critical's outcome, latency 7 --
    that no replay may ever read: asking medium must be charged critical's 20 and outcome.

    Expected prices make medium look cheap (0.002), as the config's Yi-34B price would. With
    lambda 10: rows 0-1 choose medium at p 0.95 >= trust 0.9 (route -> critical answers);
    row 2 chooses medium at 0.85 (cascade band -> critical answers, nothing above it to try);
    row 3 chooses simple at 0.8 (cascade), simple's answer scores 0.1 < 0.5 and fails, the rule
    among tiers above picks medium (0.3 - 0.02 > 0.4 - 0.2) -> critical answers."""
    p = [[0.2, 0.95, 0.96], [0.2, 0.95, 0.96], [0.8, 0.85, 0.9], [0.8, 0.3, 0.4]]
    prices = [[0.001, 0.002, 0.02]] * 4
    scores = [[0.9, 0.99, 0.9], [0.1, 0.99, 0.9], [0.9, 0.99, 0.9], [0.1, 0.99, 0.9]]
    critical = [1.0, 0.0, 1.0, 1.0]
    simple = [0.0, 1.0, 1.0, 0.0]
    correct = [[s, 1 - c, c] for s, c in zip(simple, critical, strict=True)]
    return _obs(p, prices, scores, correct, [[1.0, 2.0, 20.0]] * 4,
                [[100.0, 7.0, 1000.0]] * 4, tier_map=np.array([0, 2, 2]), scorer_ms=3.0)


def test_two_tier_asking_medium_is_charged_criticals_cost_and_outcome() -> None:
    obs = _two_tier()
    run = hybrid(obs, POINT, max_calls=2)
    # by hand: 20, 20, 20 (one call to critical each), 1 + 20 (simple, failed check, critical)
    assert run.cost.tolist() == [20.0, 20.0, 20.0, 21.0]
    assert run.correct.tolist() == [1.0, 0.0, 1.0, 1.0]  # critical's outcomes, never medium's
    # latency: calls in sequence + overhead 5 + 3 ms per check on the cascaded rows (2 and 3)
    assert run.latency_ms.tolist() == [1005.0, 1005.0, 1008.0, 1111.0]
    assert run.escalated.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert run.frontier.tolist() == [1.0, 1.0, 1.0, 1.0]
    routing = hybrid(obs, POINT, max_calls=2, cascade=False)
    assert routing.cost.tolist() == [20.0, 20.0, 20.0, 1.0]  # row 3 stays on simple, unchecked
    assert routing.correct.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert routing.latency_ms.tolist() == [1005.0, 1005.0, 1005.0, 105.0]
    medium = single_tier(obs, 1)
    assert medium.cost.tolist() == [20.0] * 4 and medium.correct.tolist() == [1.0, 0.0, 1.0, 1.0]
    # cascade-only: simple first; rows 1 and 3 fail their check and go up (medium = critical)
    pure = cascade_only(obs, 0.5, max_calls=2, overrides=False)
    assert pure.cost.tolist() == [1.0, 21.0, 1.0, 21.0]
    assert pure.correct.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert pure.latency_ms.tolist() == [108.0, 1111.0, 108.0, 1111.0]
    assert oracle(obs).cost.tolist() == [20.0, 1.0, 1.0, 20.0]


def test_hybrid_is_router_gate_replay_with_overrides_forced() -> None:
    """Three tiers; row 2 is overridden to critical (no check, not an escalation)."""
    p = [[0.95, 0.5, 0.6], [0.7, 0.2, 0.3], [0.95, 0.5, 0.6]]
    prices = [[0.001, 0.003, 0.02]] * 3
    scores = [[0.9, 0.9, 0.9], [0.2, 0.9, 0.9], [0.9, 0.9, 0.9]]
    correct = [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    cost = [[1.0, 3.0, 20.0]] * 3
    latency = [[100.0, 300.0, 1000.0]] * 3
    obs = _obs(p, prices, scores, correct, cost, latency, forced=[-1, -1, 2])
    run = hybrid(obs, POINT, max_calls=3)
    # row 0 routes simple (0.95 >= 0.9); row 1 cascades on simple (0.7), fails (0.2 < 0.5), the
    # rule among medium/critical picks medium (0.2 - 0.03 > 0.3 - 0.2), medium passes (0.9);
    # row 2 is forced to critical
    assert run.cost.tolist() == [1.0, 4.0, 20.0]
    assert run.correct.tolist() == [1.0, 1.0, 1.0]
    assert run.escalated.tolist() == [0.0, 1.0, 0.0]
    assert run.calls.tolist() == [1.0, 2.0, 1.0]
    expected = replay(obs.p, obs.prices, POINT, obs.scores, obs.tier_map, max_calls=3,
                      allowed=obs.allowed, forced=obs.forced)
    assert run.correct.tolist() == obs.correct[np.arange(3), expected.final].tolist()
    free = hybrid(obs, POINT, max_calls=3, overrides=False)
    assert free.cost[2] == 1.0 and free.correct[2] == 0.0  # without the override: simple
    # medium disallowed: row 1's failed check can only go to critical
    no_medium = hybrid(obs, POINT, max_calls=3, allowed=without_medium(obs))
    assert no_medium.cost.tolist() == [1.0, 21.0, 20.0]


def test_cascade_only_climbs_the_ladder_and_pays_for_each_call() -> None:
    n = 4
    obs = _obs([[0.3, 0.3, 0.3]] * n, [[0.001, 0.003, 0.02]] * n, [[0.1, 0.1, 0.1]] * n,
               [[0, 0, 1]] * n, [[1.0, 2.0, 20.0]] * n, [[100.0, 200.0, 1000.0]] * n)
    never = cascade_only(obs, 0.0, max_calls=2)
    assert never.cost.tolist() == [1.0] * n and not never.escalated.any()
    # max_calls 2 on three tiers: simple, then straight to critical (the last call lands there)
    two = cascade_only(obs, 0.5, max_calls=2)
    assert two.cost.tolist() == [21.0] * n and two.correct.tolist() == [1.0] * n
    assert two.escalated.all() and two.latency_ms.tolist() == [1105.0] * n
    three = cascade_only(obs, 0.5, max_calls=3)
    assert three.cost.tolist() == [23.0] * n and three.latency_ms.tolist() == [1305.0] * n
    assert three.calls.tolist() == [3.0] * n


def test_val_fixed_curve_keeps_only_validation_envelope_settings() -> None:
    """Validation points A (2, .6), B (5, .65), C (8, .9) with endpoints (1, .5), (10, .92): B
    lies below the chord A-C (.75 at cost 5), so only A and C are kept -- even though B would
    be the best point on test. The test curve joins A's and C's *test* points (no envelope)."""
    def sweep(costs, qualities) -> Sweep:
        cost = np.array([[c, c] for c in costs])
        correct = np.array([[q, q] for q in qualities])
        return Sweep("x", [{"price_weight": w} for w in (100.0, 10.0, 1.0)], cost, correct,
                     np.zeros_like(cost))

    val = sweep([2.0, 5.0, 8.0], [0.6, 0.65, 0.9])
    keep = envelope_settings(val, (1.0, 0.5), (10.0, 0.92))
    assert keep == [0, 2]
    test = sweep([2.0, 3.0, 7.0], [0.55, 0.95, 0.8])
    curve = val_fixed_curve(test, keep, (1.0, 0.5), (10.0, 0.92))
    assert curve.cost.tolist() == [1.0, 2.0, 7.0, 10.0]
    assert curve.quality.tolist() == [0.5, 0.55, 0.8, 0.92]
    # by hand: (0.525 * 1 + 0.675 * 5 + 0.86 * 3) / 9
    assert aiq(curve, 1.0, 10.0) == pytest.approx(6.48 / 9)
    assert x_at(curve, 0.7) == pytest.approx(2.0 + (0.7 - 0.55) / 0.25 * 5)


def test_settings_with_the_same_validation_point_are_one_choice() -> None:
    cost = np.array([[1.0], [3.0], [3.0], [3.0], [9.0]])
    correct = np.array([[0.5], [0.8], [0.8], [0.8], [0.9]])
    val = Sweep("x", [{"k": k} for k in range(5)], cost, correct, np.zeros_like(cost))
    assert envelope_settings(val, (1.0, 0.5), (9.0, 0.9)) == [0, 2, 4]


def test_hull_interpolation_aiq_and_crossings() -> None:
    curve = upper_hull(np.array([2.0, 3.0, 5.0]), np.array([0.5, 0.9, 0.6]), (1.0, 0.5),
                       (10.0, 1.0))
    assert curve.cost.tolist() == [1.0, 3.0, 10.0]  # (2, .5) dominated, (5, .6) below the chord
    assert aiq(curve, 1.0, 10.0) == pytest.approx(((0.5 + 0.9) / 2 * 2 + (0.9 + 1.0) / 2 * 7) / 9)
    line = interpolated(np.array([5.0]), np.array([0.4]), (1.0, 0.5), (10.0, 1.0))
    assert line.quality.tolist() == [0.5, 0.4, 1.0]  # no envelope: the dip stays
    assert aiq(line, 1.0, 10.0) == pytest.approx((0.45 * 4 + 0.7 * 5) / 9)
    assert x_at(line, 0.45) == 1.0 and x_at(line, 1.01) is None
    assert x_at(line, 0.7) == pytest.approx(5.0 + 0.3 / 0.6 * 5)  # first crossing after the dip
    flat = interpolated(np.array([]), np.array([]), (1.0, 0.5), (2.0, 0.5))
    assert aiq(flat, 1.0, 2.0) == pytest.approx(0.5)
    shares = Sweep("x", [{"k": 0}], np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]]),
                   np.array([[1.0, 0.0]]))
    # share 0.5 at quality 0.5; the cheapest tier 0.2 at share 0, frontier 0.8 at share 1
    share = share_curve(shares, [0], 0.2, 0.8)
    assert share.cost.tolist() == [0.0, 0.5, 1.0]
    assert x_at(share, 0.65) == pytest.approx(0.5 + 0.15 / 0.3 * 0.5)


def test_observations_round_trip_and_old_format_is_refused(tmp_path: Path) -> None:
    obs = _two_tier()
    obs.models = "classifier c | scorer s"
    obs.save(tmp_path / "obs.npz")
    again = Observations.load(tmp_path / "obs.npz")
    assert again.ids == obs.ids and again.models == obs.models
    for name in Observations.ARRAYS:
        assert np.array_equal(getattr(again, name), getattr(obs, name), equal_nan=True), name
    assert again.scorer_ms == 3.0 and again.allowed.dtype == bool
    np.savez_compressed(tmp_path / "old.npz", ids=np.array(obs.ids), probs=obs.p)
    with pytest.raises(ObservationsError, match=r"format 1;.*reads format 3"):
        Observations.load(tmp_path / "old.npz")


def _synthetic(n: int, seed: int) -> Observations:
    """Random three-tier rows with an informative classifier and scorer (for invariants)."""
    rng = np.random.default_rng(seed)
    correct = (rng.random((n, 3)) < [0.6, 0.75, 0.9]).astype(float)
    p = np.clip(0.3 * correct + rng.random((n, 3)) * 0.7, 0, 1)
    scores = np.clip(correct * 0.6 + rng.random((n, 3)) * 0.4, 0, 1)
    return _obs(p, np.tile([0.0003, 0.0004, 0.005], (n, 1)), scores, correct,
                np.tile([0.0003, 0.0004, 0.005], (n, 1)), np.tile([100.0, 200.0, 1000.0], (n, 1)),
                forced=np.where(rng.random(n) < 0.05, 2, -1),
                categories=["a", "b", "c"] * (n // 3) + ["a"] * (n % 3))


def test_evaluate_reports_the_stored_point_and_val_fixed_curves() -> None:
    test, validation = _synthetic(300, 0), _synthetic(300, 1)
    point = OperatingPoint(200.0, 0.7, 0.4, 0.5, "model:v1")
    settings = BenchSettings(point=point, max_calls=2, bootstrap=40, seed=0)
    rules = CategoryRules([{"a": 0, "b": 1, "c": 2}, {"a": 0, "b": 0, "c": 0}],
                          {"a": 0, "b": 1, "c": 2}, 0.0)
    report = evaluate(test, settings, category_rules=rules, validation=validation,
                      medium_ablation=True)
    assert report["report_format"] == REPORT_FORMAT == RENDERED_FORMAT
    # the hybrid row is router.gate.replay at the stored point, charged per recorded call
    run = replay(test.p, test.prices, point, test.scores, test.tier_map, max_calls=2,
                 allowed=test.allowed, forced=test.forced)
    cost = np.where(run.called, test.cost, 0.0).sum(axis=1).mean()
    row = report["approaches"]["hybrid"]
    assert row["cost_per_task"] == pytest.approx(cost)
    assert row["quality"] == pytest.approx(test.correct[np.arange(300), run.final].mean())
    assert row["escalation_rate"] == pytest.approx(run.escalated.mean())
    assert report["point"]["source"] == "model:v1" and report["point"]["price_weight"] == 200.0
    assert {"hybrid_no_medium", "simple_only", "medium_only"} <= set(report["approaches"])
    assert "hybrid_minus_hybrid_no_medium" in report["aiq"]["differences"]
    # the curves keep exactly the settings on the validation envelope, lambda alone varied
    grid = price_weight_grid(point)
    assert 200.0 in grid and len(grid) == 62
    kept = report["curves"]["hybrid"]["kept"]
    val = report["sweeps"]["hybrid"]["validation"]
    low, high = endpoints(single_tier(validation, 0), single_tier(validation, 2))
    hull = upper_hull(np.array(val["cost"]), np.array(val["quality"]), low, high)
    on_hull = set(zip(hull.cost.tolist(), hull.quality.tolist(), strict=True))
    assert kept and len(kept) < len(grid)
    for knobs in kept:
        k = grid.index(knobs["price_weight"])
        assert (val["cost"][k], val["quality"][k]) in on_hull
    lo, hi = report["aiq"]["cost_range"]
    curve = report["curves"]["hybrid"]
    assert curve["cost"] == sorted(curve["cost"]) and lo in curve["cost"] and hi in curve["cost"]
    for name, d in report["aiq"]["differences"].items():
        assert d["ci95"][0] <= d["ci95"][1], name
    assert report["validation_rows"] == 300 and report["curve_protocol"].startswith("val-fixed")
    for name in ("random_mix", "best_fixed_mix"):  # priced at the hybrid's cost
        assert report["approaches"][name]["cost_per_task"] == pytest.approx(cost)
    head = report["headline"]["stored_point"]
    assert head["cost_ratio"] == pytest.approx(cost / test.cost[:, 2].mean())


def test_without_validation_every_grid_point_is_kept_and_two_tier_shares_reported() -> None:
    test = _synthetic(120, 2)
    test.tier_map = np.tile([0, 2, 2], (120, 1))
    settings = BenchSettings(point=POINT, max_calls=2, bootstrap=20)
    rules = CategoryRules([{"a": 0, "b": 2, "c": 2}], {"a": 0, "b": 2, "c": 2}, 0.0)
    report = evaluate(test, settings, category_rules=rules, two_tier=True)
    assert report["curve_protocol"].startswith("no validation rows")
    assert len(report["curves"]["hybrid"]["kept"]) == len(price_weight_grid(POINT))
    assert "medium_only" not in report["approaches"]
    assert "hybrid_no_overrides" in report["approaches"]
    shares = report["frontier_share_for_95pct_quality"]
    assert set(shares) == {"with_overrides", "without_overrides", "per_category_mix",
                           "random_mix"}
    # random: the straight line from the cheapest tier (share 0) to frontier-only (share 1)
    qc, qf = np.nanmean(test.correct[:, 0]), np.nanmean(test.correct[:, 2])
    assert shares["random_mix"] == pytest.approx((0.95 * qf - qc) / (qf - qc), abs=1e-9)
    # bench-docs judges the two-tier targets on these figures
    text = render({"mmlu": report, "gsm8k": report})
    share = shares["without_overrides"]
    mark = "n/a" if share is None else "yes" if share <= 0.56 else "**no**"
    assert (f"| mmlu | GPT-4 call share at 95% of GPT-4 accuracy <= 56% (no overrides, "
            f"val-fixed curve) | {mark} | ") in text
    d = report["aiq"]["differences"]["hybrid_minus_cascade_only"]
    assert (f"| gsm8k | hybrid AIQ above cascade_only (val-fixed, point estimate) | "
            f"{'yes' if d['aiq'] > 0 else '**no**'} | {d['aiq']:+.4f} (95% CI") in text
    assert "| gsm8k | GPT-4 call share at 95% of GPT-4 accuracy <= 55%" in text
    assert "GPT-4 (frontier) call share needed for 95% of frontier quality" in text
