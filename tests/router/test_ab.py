"""A/B assignment: stable, weighted, and applied by the request path with its operating point;
the shadow challenger deciding beside it at its own."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from router.ab import ABAssigner, bucket
from router.config import ABConfig, ABVariant, GateConfig, RouterConfig, parse_config
from router.errors import ConfigError
from router.gate import OperatingPoint
from router.policy import RouteRequest
from router.shadow import ShadowScorer
from router.telemetry import DecisionLog
from tests.conftest import SimulatorProcess
from tests.router.test_policy import (
    PRIMES,
    ScriptedClassifier,
    _informative_check,
    make_policy,
    model_point,
)

STRICT = GateConfig(price_weight=1000.0, escalate_threshold=0.99, trust_threshold=0.995)
# Every knob of the point, and none left to the defaults.
CHEAP = GateConfig(price_weight=1e5, escalate_threshold=0.2, trust_threshold=0.6,
                   score_threshold=0.7, escalation_weight=0.25)


def _ab(split_by: str = "request", weights: tuple[float, float] = (1.0, 1.0)) -> ABConfig:
    return ABConfig(enabled=True, split_by=split_by, salt="t", variants=[
        ABVariant(name="fitted", weight=weights[0]),
        ABVariant(name="strict", weight=weights[1], gate=STRICT)])


def test_assignment_is_stable_weighted_and_follows_the_split_key() -> None:
    assigner = ABAssigner(_ab(weights=(3.0, 1.0)))
    names = [assigner.assign("acme", f"req-{i}").name for i in range(4000)]
    assert names == [assigner.assign("acme", f"req-{i}").name for i in range(4000)]
    share = Counter(names)["fitted"] / len(names)
    assert 0.72 < share < 0.78  # 3:1 weights, 4,000 draws: sd 0.7 points
    by_tenant = ABAssigner(_ab(split_by="tenant"))
    for tenant in ("acme", "globex", "initech"):  # one arm per tenant, whatever the request
        assert len({by_tenant.assign(tenant, f"r{i}").name for i in range(50)}) == 1
    assert 0.0 <= bucket("salt", "key") < 1.0 and bucket("a", "k") != bucket("b", "k")
    assert ABAssigner(ABConfig()).assign("acme", "r") is None  # no test running


def test_a_variants_point_replaces_the_models_only_when_declared() -> None:
    serving = OperatingPoint(50.0, 0.8, 0.5, 0.6, "model:v1")
    fitted, strict = _ab().variants
    assert ABAssigner.point(fitted, serving) is serving
    # A declared gate replaces the whole point: what it leaves out are the config defaults
    # (score threshold 0.5), not the serving model's 0.6.
    assert ABAssigner.point(strict, serving) == OperatingPoint(1000.0, 0.995, 0.99, 0.5,
                                                               "ab:strict")
    cheap = ABAssigner.point(ABVariant(name="cheap", gate=CHEAP), serving)
    assert cheap == OperatingPoint(1e5, 0.6, 0.2, 0.7, "ab:cheap", 0.25)


def test_a_bad_ab_section_is_a_config_error(router_config: RouterConfig) -> None:
    base = router_config.model_dump(exclude_none=True)
    for ab, problem in [
        ({"enabled": True, "variants": [{"name": "only"}]}, "at least two variants"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "repeated"),
        ({"variants": [{"name": "a", "weight": 0}]}, "greater than 0"),
        ({"variants": [{"name": "a b"}]}, "pattern"),
        ({"variants": [{"name": "a", "gate": {"price_weight": -1}}]}, "greater than or equal"),
        ({"variants": [{"name": "a", "gate": {"escalate_threshold": 0.9}}]}, "must not exceed"),
        ({"variants": [{"name": "a", "gate": {"score_threshold": 1.5}}]}, "less than or equal"),
        ({"variants": [{"name": "a", "gate": {"cascade_threshold": 0.5}}]}, "unknown field"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            parse_config({**base, "ab": ab})
    parsed = parse_config({**base, "ab": {"enabled": True, "variants": [
        {"name": "a"}, {"name": "b", "gate": CHEAP.model_dump()}]}})
    assert parsed.ab.variants[1].gate == CHEAP


def test_each_decision_records_its_variant_and_the_point_it_used(
        simulator: SimulatorProcess, router_config: RouterConfig, tmp_path: Path) -> None:
    ab = ABConfig(enabled=True, split_by="request", salt="t", variants=[
        ABVariant(name="fitted"), ABVariant(name="strict", gate=STRICT),
        ABVariant(name="quality", gate=GateConfig(price_weight=0.0))])
    config = router_config.model_copy(update={"ab": ab, "cache": router_config.cache
                                              .model_copy(update={"enabled": False})})
    # Prices as in test_policy (PRIMES: simple 3.9e-5, medium 5.0e-5, critical 1.99e-3 USD).
    # fitted (the model's point, lambda 1000): 0.85-0.039 vs 0.05-0.050 vs 0.95-1.99 -> simple
    #   at 0.85 >= trust 0.8: routed to simple.
    # strict (lambda 1000, escalate 0.99): simple at 0.85 < 0.99 escalates; no tier above
    #   reaches trust 0.995 -> critical.
    # quality (lambda 0): the likeliest answer, critical at 0.95, routed.
    classifier = ScriptedClassifier({"simple": 0.85, "medium": 0.05, "critical": 0.95},
                                    model_point())
    expected = {"fitted": ("model:scripted-1", model_point().as_dict(), "route", "simple",
                           "simple"),
                "strict": ("ab:strict", {"price_weight": 1000.0, "trust": 0.995,
                                         "escalate": 0.99, "score_threshold": 0.5,
                                         "escalation_weight": 0.0},
                           "escalate", "simple", "critical"),
                "quality": ("ab:quality", {"price_weight": 0.0, "trust": 0.8, "escalate": 0.5,
                                           "score_threshold": 0.5, "escalation_weight": 0.0},
                            "route", "critical", "critical")}
    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        policy = make_policy(config, simulator, classifier, log)
        for i in range(24):  # fixed request ids: the assignment is a stable hash of them
            asyncio.run(policy.route(RouteRequest(
                messages=[{"role": "user", "content": f"Name {i} prime numbers."}],
                request_id=f"ab-{i}")))
        log.flush()
        rows = log.read()
    assert {row.variant for row in rows} == set(expected)
    assigner = ABAssigner(ab)
    for row in rows:
        assert row.variant == assigner.assign("default", row.request_id).name
        assert (row.threshold_source, row.thresholds, row.gate_action, row.predicted_tier,
                row.final_tier) == expected[row.variant]


def test_the_shadow_decides_at_its_own_point_and_the_live_prompt_length(
        router_config: RouterConfig) -> None:
    # The challenger's point: lambda 10, trust 0.8, escalate 0.3. Output tokens 64 per tier.
    challenger = ScriptedClassifier({"simple": 0.5, "medium": 0.5, "critical": 0.99},
                                    OperatingPoint(10.0, 0.8, 0.3, 0.5, "model:challenger-2"),
                                    version="challenger-2")
    shadow = ShadowScorer(challenger, router_config)
    assert shadow.point.source == "model:challenger-2" and shadow.version == "challenger-2"
    # 100 prompt tokens: simple 164 * 5.5e-7 -> 0.5 - 0.0009; medium 164 * 7e-7 -> 0.5 - 0.0011;
    # critical 100e-5 + 64 * 3e-5 = 2.92e-3 -> 0.99 - 0.029 = 0.961: critical, routed.
    short = shadow.score("user: q", 100, "simple", "simple", True)
    assert (short["predicted_tier"], short["gate_action"], short["target_tier"]) == (
        "critical", "route", "critical")
    assert (short["agrees"], short["same_prediction"], short["confidence"]) == (False, False,
                                                                                0.99)
    assert short["scores"] == {"simple": 0.5, "medium": 0.5, "critical": 0.99}
    # 10,000 prompt tokens: 0.5 - 0.055 = 0.445 vs 0.5 - 0.070 vs 0.99 - 1.019 -> simple at 0.5,
    # between escalate 0.3 and trust 0.8: a cascade from simple.
    long = shadow.score("user: q", 10_000, "simple", "simple", True)
    assert (long["predicted_tier"], long["gate_action"], long["target_tier"]) == (
        "simple", "cascade", "simple")
    assert long["agrees"] is True and long["same_prediction"] is True
    # A pinned or overridden request: the live target stands, the gate did not act.
    pinned = shadow.score("user: q", 100, "medium", None, False)
    assert (pinned["target_tier"], pinned["gate_action"], pinned["agrees"]) == (
        "medium", None, True)


def test_the_shadow_weighs_the_challengers_check_statistics_like_the_live_path(
        router_config: RouterConfig) -> None:
    # test_policy's case: lambda 100, these scores and check statistics cascade from simple
    # (0.923 > routing to medium 0.895); without the statistics medium is routed.
    scores = {"simple": 0.7, "medium": 0.9, "critical": 0.95}
    point = model_point(price_weight=100.0)
    checked = ShadowScorer(ScriptedClassifier(scores, point, check=_informative_check()),
                           router_config)
    found = checked.score("user: Name three prime numbers.", 7, "medium", "medium", True)
    assert (found["predicted_tier"], found["gate_action"], found["target_tier"]) == (
        "medium", "cascade", "simple")
    assert found["agrees"] is False and found["same_prediction"] is True
    plain = ShadowScorer(ScriptedClassifier(scores, point), router_config)
    found = plain.score("user: Name three prime numbers.", 7, "medium", "medium", True)
    assert (found["gate_action"], found["target_tier"], found["agrees"]) == (
        "route", "medium", True)


def test_the_shadow_scores_beside_the_live_path_and_is_logged(
        simulator: SimulatorProcess, router_config: RouterConfig, tmp_path: Path) -> None:
    config = router_config.model_copy(update={"cache": router_config.cache.model_copy(
        update={"enabled": False})})
    live = ScriptedClassifier({"simple": 0.9, "medium": 0.05, "critical": 0.05}, model_point())
    # At its own lambda 0 the challenger routes critical (0.9); at a lambda of 1000 it would
    # choose simple (0.05 - 0.039 > 0.9 - 1.99) and escalate.
    challenger = ScriptedClassifier({"simple": 0.05, "medium": 0.05, "critical": 0.9},
                                    OperatingPoint(0.0, 0.8, 0.5, 0.5, "model:challenger-2"),
                                    version="challenger-2")
    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        policy = make_policy(config, simulator, live, log)
        policy.shadow = ShadowScorer(challenger, config)
        result = asyncio.run(policy.route(RouteRequest(messages=PRIMES)))
        pinned = asyncio.run(policy.route(RouteRequest(
            model="medium", messages=[{"role": "user", "content": "Name two primes."}])))
        log.flush()
        rows = {row.request_id: row for row in log.read()}
    assert result.dispatch.tier == "simple"  # the challenger never acts
    shadow = rows[result.record.request_id].shadow
    assert shadow["model_version"] == "challenger-2"
    assert (shadow["predicted_tier"], shadow["gate_action"], shadow["target_tier"]) == (
        "critical", "route", "critical")
    assert shadow["agrees"] is False and shadow["same_prediction"] is False
    tokens = (result.dispatch.prompt_tokens, result.dispatch.completion_tokens)
    assert shadow["est_cost_usd"] == pytest.approx(config.list_price("critical", *tokens))
    assert shadow["live_est_cost_usd"] == pytest.approx(config.list_price("simple", *tokens))
    # A pinned request is not the classifier's call: the challenger could not have moved it.
    pinned_shadow = rows[pinned.record.request_id].shadow
    assert pinned_shadow["target_tier"] == "medium" and pinned_shadow["agrees"] is True
    assert pinned_shadow["gate_action"] is None


def test_a_failing_shadow_never_fails_the_request(
        simulator: SimulatorProcess, router_config: RouterConfig, tmp_path: Path) -> None:
    class Broken(ScriptedClassifier):
        def predict_full(self, texts):
            raise RuntimeError("challenger crashed")

    config = router_config.model_copy(update={"cache": router_config.cache.model_copy(
        update={"enabled": False})})
    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        policy = make_policy(config, simulator, ScriptedClassifier(
            {"simple": 0.9, "medium": 0.05, "critical": 0.05}), log)
        policy.shadow = ShadowScorer(Broken({"simple": 1.0, "medium": 0.0, "critical": 0.0},
                                            version="broken-3"), config)
        result = asyncio.run(policy.route(RouteRequest(messages=PRIMES)))
        log.flush()
        row = log.read()[0]
    assert result.record.status == "ok" and result.dispatch.tier == "simple"
    assert row.shadow == {"model_version": "broken-3",
                          "error": "RuntimeError: challenger crashed"}
