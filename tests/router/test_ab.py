"""A/B assignment: stable, weighted, and applied by the request path with its thresholds."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from router.ab import ABAssigner, bucket
from router.config import ABConfig, ABVariant, GateConfig, RouterConfig, parse_config
from router.errors import ConfigError
from router.gate import Thresholds
from router.policy import RouteRequest
from router.shadow import ShadowScorer
from router.telemetry import DecisionLog
from tests.conftest import SimulatorProcess
from tests.router.test_policy import ScriptedClassifier, make_policy

STRICT = GateConfig(escalate_threshold=0.99, trust_threshold=0.995)


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


def test_variant_thresholds_replace_the_model_ones_only_when_declared() -> None:
    serving = Thresholds(0.5, 0.8, "model:v1")
    fitted, strict = _ab().variants
    assert ABAssigner.thresholds(fitted, serving) is serving
    assert ABAssigner.thresholds(strict, serving) == Thresholds(0.99, 0.995, "ab:strict")


def test_a_bad_ab_section_is_a_config_error(router_config: RouterConfig) -> None:
    base = router_config.model_dump(exclude_none=True)
    for ab, problem in [
        ({"enabled": True, "variants": [{"name": "only"}]}, "at least two variants"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "repeated"),
        ({"variants": [{"name": "a", "weight": 0}]}, "greater than 0"),
        ({"variants": [{"name": "a b"}]}, "pattern"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            parse_config({**base, "ab": ab})


def test_each_decision_records_its_variant_and_the_thresholds_it_used(
        simulator: SimulatorProcess, router_config: RouterConfig, tmp_path: Path) -> None:
    config = router_config.model_copy(update={"ab": _ab(), "cache": router_config.cache
                                              .model_copy(update={"enabled": False})})
    # 0.9 confident in simple: the model's thresholds (0.5 / 0.8) route it, strict escalates.
    classifier = ScriptedClassifier({"simple": 0.9, "medium": 0.05, "critical": 0.05},
                                    thresholds={"escalate": 0.5, "trust": 0.8})
    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        policy = make_policy(config, simulator, classifier, log)
        for i in range(24):
            asyncio.run(policy.route(RouteRequest(
                messages=[{"role": "user", "content": f"Name {i} prime numbers."}])))
        log.flush()
        rows = log.read()
    assert {row.variant for row in rows} == {"fitted", "strict"}
    for row in rows:
        if row.variant == "strict":
            assert (row.threshold_source, row.gate_action) == ("ab:strict", "escalate")
            assert row.thresholds == {"escalate": 0.99, "trust": 0.995}
        else:
            assert (row.threshold_source, row.gate_action) == ("model:scripted-1", "route")


def test_the_shadow_scores_beside_the_live_path_and_is_logged(
        simulator: SimulatorProcess, router_config: RouterConfig, tmp_path: Path) -> None:
    config = router_config.model_copy(update={"cache": router_config.cache.model_copy(
        update={"enabled": False})})
    live = ScriptedClassifier({"simple": 0.9, "medium": 0.05, "critical": 0.05},
                              thresholds={"escalate": 0.5, "trust": 0.8})
    challenger = ScriptedClassifier({"simple": 0.05, "medium": 0.05, "critical": 0.9})
    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        policy = make_policy(config, simulator, live, log)
        policy.shadow = ShadowScorer(challenger, config)
        result = asyncio.run(policy.route(RouteRequest(
            messages=[{"role": "user", "content": "Name three prime numbers."}])))
        pinned = asyncio.run(policy.route(RouteRequest(
            model="medium", messages=[{"role": "user", "content": "Name two primes."}])))
        log.flush()
        rows = {row.request_id: row for row in log.read()}
    assert result.dispatch.tier == "simple"  # the challenger never acts
    shadow = rows[result.record.request_id].shadow
    assert shadow["predicted_tier"] == "critical" and shadow["target_tier"] == "critical"
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
        def predict(self, texts):
            raise RuntimeError("challenger crashed")

    config = router_config.model_copy(update={"cache": router_config.cache.model_copy(
        update={"enabled": False})})
    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        policy = make_policy(config, simulator, ScriptedClassifier(
            {"simple": 0.9, "medium": 0.05, "critical": 0.05}), log)
        policy.shadow = ShadowScorer(Broken({"simple": 1.0, "medium": 0.0, "critical": 0.0}),
                                     config)
        result = asyncio.run(policy.route(RouteRequest(
            messages=[{"role": "user", "content": "Name three prime numbers."}])))
        log.flush()
        row = log.read()[0]
    assert result.record.status == "ok"
    assert row.shadow == {"model_version": "scripted-1",
                          "error": "RuntimeError: challenger crashed"}
