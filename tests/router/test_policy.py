"""The whole request path: overrides -> classifier -> gate -> LiteLLM dispatch -> decision log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.classifier import (
    ClassifierMeta,
    FixedTierClassifier,
    Predictions,
    TierScores,
    _Scoring,
    load_classifier,
)
from router.config import RouterConfig
from router.dispatch import Dispatcher, DispatchError
from router.errors import RequestFormatError
from router.gate import CheckStats, OperatingPoint
from router.normalise import normalise
from router.policy import RouteRequest, RouterPolicy
from router.telemetry import DecisionLog
from router.tiers import TIERS
from tests.conftest import SimulatorProcess
from workloads import Workload

# "Name three prime numbers." is 25 characters: ceil(25 / 4) = 7 estimated prompt tokens. With
# the scripted classifier's 64 output tokens per tier and the shipped config's mean prices per
# token (simple 5.5e-7 in and out, medium 7e-7 in and out, critical 1e-5 in / 3e-5 out):
PRIMES = [{"role": "user", "content": "Name three prime numbers."}]
PRIMES_PRICES = {"simple": 71 * 5.5e-7,  # 3.905e-5 USD
                 "medium": 71 * 7e-7,  # 4.97e-5
                 "critical": 7 * 1e-5 + 64 * 3e-5}  # 1.99e-3
CONFIG_POINT = {"price_weight": 50.0, "trust": 0.8, "escalate": 0.5, "score_threshold": 0.5,
                "escalation_weight": 0.0}


def model_point(price_weight: float = 1000.0, trust: float = 0.8, escalate: float = 0.5,
                score_threshold: float = 0.5) -> OperatingPoint:
    """A point as stored with the scripted model (read_meta names it ``model:<version>``)."""
    return OperatingPoint(price_weight, trust, escalate, score_threshold, "model:scripted-1")


class ScriptedClassifier(_Scoring):
    """Returns the predictions it is given: a real TierClassifier for gate paths a random tiny
    model would hit only by chance. ``scores``: tier -> P(acceptable); ``point``: the operating
    point stored with it (None: the config's); ``allowed``: tiers the rule may choose (default
    all); ``check``: one request's check statistics (None: the confidence band decides)."""

    def __init__(self, scores: TierScores, point: OperatingPoint | None = None, *,
                 allowed: Mapping[str, bool] | None = None,
                 output_tokens: Sequence[float] = (64.0, 64.0, 64.0),
                 neighbourhood: dict[str, Any] | None = None,
                 check: CheckStats | None = None, version: str = "scripted-1") -> None:
        self.scores = np.array([scores[t] for t in TIERS], dtype=float)
        self.allowed = np.array([True if allowed is None else allowed[t] for t in TIERS])
        self.output_tokens = np.array(output_tokens, dtype=float)
        self.neighbourhood = neighbourhood
        self.check = check
        self.meta = ClassifierMeta(version=version, operating_point=point)

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        n = len(texts)
        check = None if self.check is None else self.check.take(np.zeros(n, dtype=int))
        return Predictions(np.tile(self.scores, (n, 1)), np.tile(self.allowed, (n, 1)),
                           np.tile(self.output_tokens, (n, 1)), None,
                           None if self.neighbourhood is None else [self.neighbourhood] * n,
                           check)


class TierScorer:
    """A response scorer giving each tier's answers a fixed score; keeps every call's args."""

    def __init__(self, by_tier: Mapping[str, float]) -> None:
        from router.scorer import ScorerMeta

        self.by_tier = dict(by_tier)
        self.meta = ScorerMeta(version="by-tier", encoder_kind="none")
        self.calls: list[tuple[list, list, list, list]] = []

    def score(self, prompts, responses, tiers=None, finish_reasons=None) -> list[float]:
        self.calls.append((list(prompts), list(responses), list(tiers), list(finish_reasons)))
        return [self.by_tier[t] for t in tiers]


@pytest.fixture
def decision_log(tmp_path: Path) -> Iterator[DecisionLog]:
    with DecisionLog(f"sqlite:///{tmp_path / 'decisions.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        yield log


def make_policy(config: RouterConfig, simulator: SimulatorProcess, classifier,
                log: DecisionLog, **kwargs: Any) -> RouterPolicy:
    return RouterPolicy(config, classifier, Dispatcher(config, api_base_override=simulator.root),
                        log, **kwargs)


def test_override_fires_on_seed_prompts_and_is_logged_as_override(
        simulator: SimulatorProcess, router_config: RouterConfig, mmlu: Workload,
        decision_log: DecisionLog) -> None:
    policy = make_policy(router_config, simulator, FixedTierClassifier("simple"), decision_log)
    prompts = {}
    for domain, subject in [("legal", "professional_law"), ("medical", "professional_medicine"),
                            ("finance", "professional_accounting")]:
        prompts[domain] = next(r for r in mmlu.records if r.category == subject
                               and policy.overrides.match(r.turns[-1]) is not None
                               and policy.overrides.match(r.turns[-1]).domain == domain)
    for domain, record in prompts.items():
        result = asyncio.run(policy.route(RouteRequest(messages=record.messages())))
        assert result.dispatch.tier == "critical"
        assert result.record.override_domain == domain
    decision_log.flush()
    rows = decision_log.read()
    assert len(rows) == 3
    for row in rows:
        assert row.override_rule is not None
        assert row.gate_action is None  # an override is not an escalation
        assert row.predicted_tier == "simple"  # the rule's choice is still recorded
        assert (row.target_tier, row.final_tier) == ("critical", "critical")
        assert row.status == "ok"


# (scores, stored point, allowed, action, chosen, target); prices PRIMES_PRICES, utilities
# p - lambda * price worked out by hand per case.
GATE_CASES = [
    # config point (lambda 1000): 0.9-0.039, 0.05-0.050, 0.05-1.99 -> simple at 0.9 >= trust 0.8
    ({"simple": 0.9, "medium": 0.05, "critical": 0.05}, None, None, "route", "simple",
     "simple"),
    # 0.7-0.039 = 0.661 wins; 0.7 in [escalate 0.5, trust 0.8): cascade (no scorer: simple)
    ({"simple": 0.7, "medium": 0.2, "critical": 0.05}, None, None, "cascade", "simple",
     "simple"),
    # 0.361 vs 0.250 vs -1.09: simple at 0.4 < 0.5 escalates; medium 0.3 < trust, critical 0.9
    ({"simple": 0.4, "medium": 0.3, "critical": 0.9}, None, None, "escalate", "simple",
     "critical"),
    # 0.561 vs 0.850 vs -1.04: the rule itself picks medium (not an escalation), trusted
    ({"simple": 0.6, "medium": 0.9, "critical": 0.95}, None, None, "route", "medium", "medium"),
    # the same scores with medium unseen near this request: simple at 0.6, in the band
    ({"simple": 0.6, "medium": 0.9, "critical": 0.95}, None,
     {"simple": True, "medium": False, "critical": True}, "cascade", "simple", "simple"),
    # the model's point wins over the config's: trust 0.55 now trusts simple at 0.6
    ({"simple": 0.6, "medium": 0.3, "critical": 0.1}, model_point(trust=0.55, escalate=0.4),
     None, "route", "simple", "simple"),
    # the model's price weight 0: the likeliest answer whatever it costs -> critical at 0.95
    ({"simple": 0.6, "medium": 0.9, "critical": 0.95}, model_point(price_weight=0.0), None,
     "route", "critical", "critical"),
    # lambda 1e5: 0.4-3.9 vs 0.85-4.97 vs 0.9-199 -> simple at 0.4 < 0.5 escalates to the
    # cheapest trusted tier above: medium (0.85 >= 0.8)
    ({"simple": 0.4, "medium": 0.85, "critical": 0.9}, model_point(price_weight=1e5), None,
     "escalate", "simple", "medium"),
]


def test_gate_actions_are_logged_with_their_operating_point(
        simulator: SimulatorProcess, router_config: RouterConfig,
        decision_log: DecisionLog) -> None:
    # The config's point at lambda 1000, stated here (the shipped default is 50) so the hand
    # computations of GATE_CASES hold whatever the shipped default becomes.
    router_config = router_config.model_copy(update={"gate": router_config.gate.model_copy(
        update={"price_weight": 1000.0})})
    hood = {"cluster": 3, "rows": 120, "checkable": False,
            "tiers": {"simple": {"recorded": 120, "right": 0.91},
                      "medium": {"recorded": 0, "right": None},
                      "critical": {"recorded": 120, "right": 0.97}}}
    for i, (scores, point, allowed, action, chosen, target) in enumerate(GATE_CASES):
        classifier = ScriptedClassifier(scores, point, allowed=allowed,
                                        neighbourhood=hood if i == 0 else None)
        policy = make_policy(router_config, simulator, classifier, decision_log)
        result = asyncio.run(policy.route(RouteRequest(messages=PRIMES)))
        record = result.record
        assert (record.gate_action, record.predicted_tier, record.target_tier,
                record.final_tier) == (action, chosen, target, target), i
        assert record.confidence == scores[chosen]
        assert record.threshold_source == ("config" if point is None else "model:scripted-1")
        assert result.decision.point == (policy.point if point is None else point)
    decision_log.flush()
    rows = decision_log.read()
    assert [r.gate_action for r in rows] == [case[3] for case in GATE_CASES]
    assert rows[0].thresholds == {**CONFIG_POINT, "price_weight": 1000.0}
    assert rows[5].thresholds == {**CONFIG_POINT, "price_weight": 1000.0, "trust": 0.55,
                                  "escalate": 0.4}
    assert rows[7].thresholds["price_weight"] == 1e5
    for row in rows:
        assert row.extra["expected_cost_usd"] == pytest.approx(PRIMES_PRICES, rel=1e-9)
        assert row.extra["prompt_tokens_estimate"] == 7
    assert rows[4].extra["allowed"] == ["simple", "critical"]
    assert rows[0].extra["allowed"] == ["simple", "medium", "critical"]
    assert rows[0].extra["neighbourhood"] == hood
    assert all("neighbourhood" not in r.extra for r in rows[1:])
    assert all(set(r.latency_ms) >= {"normalise", "override", "classify", "gate", "dispatch",
                                     "total"} for r in rows)
    assert all(r.cost_usd and r.cost_usd > 0 and r.prompt_tokens for r in rows)


def test_expected_prices_follow_the_prompt_length_and_the_tiers_output_tokens(
        router_config: RouterConfig) -> None:
    # 401 characters over two turns -> ceil(401 / 4) = 101 prompt tokens; output tokens per
    # tier 10 / 20 / 300: simple 111 * 5.5e-7, medium 121 * 7e-7, critical 101e-5 + 300 * 3e-5.
    classifier = ScriptedClassifier({"simple": 0.9, "medium": 0.9, "critical": 0.9},
                                    output_tokens=(10.0, 20.0, 300.0))
    policy = RouterPolicy(router_config, classifier, Dispatcher(router_config))
    messages = [{"role": "system", "content": "s" * 101}, {"role": "user", "content": "u" * 300}]
    decision = policy.decide(RouteRequest(messages=messages))
    assert decision.prompt_tokens == 101
    assert decision.prices == pytest.approx({"simple": 111 * 5.5e-7, "medium": 121 * 7e-7,
                                             "critical": 101e-5 + 300 * 3e-5}, rel=1e-9)
    assert decision.allowed == dict.fromkeys(TIERS, True)
    assert decision.check is None and decision.neighbourhood is None


def test_pins_and_unknown_models(simulator: SimulatorProcess, router_config: RouterConfig,
                                 decision_log: DecisionLog, tiny_bert_dir: Path) -> None:
    policy = make_policy(router_config, simulator, load_classifier(str(tiny_bert_dir)),
                         decision_log)
    legal = [{"role": "user", "content": "Can I sue my landlord over a tort?"}]
    pinned = asyncio.run(policy.route(RouteRequest(messages=legal, model="simple")))
    assert (pinned.record.pinned, pinned.record.final_tier) == (True, "simple")
    assert pinned.record.override_rule is None  # an explicit pin is honoured
    assert pinned.record.gate_action is None  # a pin is not the gate's call
    assert set(pinned.record.scores) == {"simple", "medium", "critical"}  # still scored
    assert set(pinned.record.extra["expected_cost_usd"]) == set(TIERS)  # and priced
    # An untrained bundle stores no operating point: the config's defaults decide.
    assert (pinned.record.threshold_source, pinned.record.thresholds) == ("config",
                                                                          CONFIG_POINT)
    by_id = asyncio.run(policy.route(RouteRequest(messages=legal,
                                                  model="deepinfra/yi-34b-chat")))
    assert by_id.record.final_tier == "medium"
    assert "auto" in policy.model_names() and "gpt-4-1106-preview" in policy.model_names()
    with pytest.raises(RequestFormatError, match="unknown model 'gpt-5'"):
        asyncio.run(policy.route(RouteRequest(messages=legal, model="gpt-5")))
    with pytest.raises(RequestFormatError):
        asyncio.run(policy.route(RouteRequest(messages=[])))
    decision_log.flush()
    rows = decision_log.read()
    assert [r.status for r in rows] == ["ok", "ok", "error", "error"]
    assert "unknown model" in rows[2].error
    assert rows[0].model_version == tiny_bert_dir.name


def test_a_static_bundle_decides_with_its_stored_point_and_neighbourhood(
        router_config: RouterConfig, tiny_static_dir: Path) -> None:
    from router.gate import decide

    classifier = load_classifier(str(tiny_static_dir))
    policy = RouterPolicy(router_config, classifier, Dispatcher(router_config))
    decision = policy.decide(RouteRequest(messages=PRIMES))
    # conftest's OPERATING_POINT, named after the bundle's version
    assert decision.point == OperatingPoint(1000.0, 0.8, 0.3, 0.5, "model:tiny-static")
    found = classifier.predict_full([normalise(PRIMES)])
    cluster = decision.neighbourhood["cluster"]
    assert decision.neighbourhood == found.explanation(0)
    # the table's per-cluster output tokens price the request (conftest's table)
    tokens = [[30, 30, 40], [5, 5, 5], [200, 220, 300], [64, 64, 64]][cluster]
    assert decision.prices == pytest.approx({
        "simple": (7 + tokens[0]) * 5.5e-7, "medium": (7 + tokens[1]) * 7e-7,
        "critical": 7e-5 + tokens[2] * 3e-5}, rel=1e-9)
    # allowed: tiers recorded at least min_recorded (10) times in the cluster
    recorded = [[100, 100, 100], [50, 0, 50], [20, 20, 20], [5, 5, 5]][cluster]
    assert decision.allowed == {t: n >= 10 for t, n in zip(TIERS, recorded, strict=True)}
    again = decide(decision.scores, decision.prices, decision.point, decision.allowed)
    assert decision.gate == again and decision.target_tier == again.target_tier


def test_failed_requests_are_logged(simulator: SimulatorProcess, router_config: RouterConfig,
                                    decision_log: DecisionLog) -> None:
    import httpx

    httpx.put(f"{simulator.root}/sim/failures", json={"specs": [
        "openai/gpt-4-1106-preview=1.0", "azure/gpt-4-1106-preview=1.0"]}).raise_for_status()
    try:
        policy = make_policy(router_config, simulator, FixedTierClassifier("critical"),
                             decision_log)
        with pytest.raises(DispatchError):
            asyncio.run(policy.route(RouteRequest(messages=[{"role": "user", "content": "x"}],
                                                  request_id="doomed-1")))
    finally:
        httpx.put(f"{simulator.root}/sim/failures", json={"specs": []}).raise_for_status()
    decision_log.flush()
    (row,) = decision_log.read()
    assert (row.request_id, row.status, row.final_tier) == ("doomed-1", "error", None)
    assert row.deployments_tried and "no deployment could answer" in row.error
    assert row.extra["http_status"] == 503


def test_cascade_scores_escalates_by_the_rule_and_sums_the_calls(
        simulator: SimulatorProcess, router_config: RouterConfig,
        decision_log: DecisionLog) -> None:
    from router.scorer import FixedScorer

    # Config point: simple at 0.661 is chosen, 0.7 is in the band -> cascade from simple.
    # After a failed check the rule chooses among the tiers above simple: medium 0.2-0.050 =
    # 0.150 beats critical 0.05-1.99, so the second call goes to medium.
    unsure = ScriptedClassifier({"simple": 0.7, "medium": 0.2, "critical": 0.05})
    assert router_config.cascade.max_calls == 2
    low = make_policy(router_config, simulator, unsure, decision_log, scorer=FixedScorer(0.1))
    high = make_policy(router_config, simulator, unsure, decision_log, scorer=FixedScorer(0.9))
    escalated = asyncio.run(low.route(RouteRequest(messages=PRIMES)))
    kept = asyncio.run(high.route(RouteRequest(messages=PRIMES)))
    steps = escalated.record.extra["cascade"]
    # 0.1 < score_threshold 0.5 fails both checks; max_calls 2 keeps the second answer
    assert [(s["tier"], s["failed"]) for s in steps] == [("simple", True), ("medium", True)]
    assert [s["score"] for s in steps] == [0.1, 0.1]
    assert escalated.record.final_tier == "medium"
    assert escalated.record.extra["escalation_reason"] == "cascade"
    assert escalated.record.cost_usd == pytest.approx(sum(s["cost_usd"] for s in steps))
    assert [(s["tier"], s["failed"]) for s in kept.record.extra["cascade"]] == [
        ("simple", False)]
    assert kept.record.final_tier == "simple" and "escalation_reason" not in kept.record.extra
    # A budget the cascade would overrun (tiers' latencies are known now) skips it.
    skipped = asyncio.run(low.route(RouteRequest(messages=PRIMES, latency_budget_ms=0.001)))
    assert "cascade" not in skipped.record.extra
    assert skipped.record.final_tier == "simple"
    assert skipped.record.extra["cascade_skipped_budget_ms"] == 0.001


def test_the_cascade_scores_each_answer_with_its_prompt_tier_and_finish_reason(
        simulator: SimulatorProcess, router_config: RouterConfig,
        decision_log: DecisionLog) -> None:
    # The same cascade from simple; simple's answers score 0.3 (fail), medium's 0.8 (pass).
    scorer = TierScorer({"simple": 0.3, "medium": 0.8, "critical": 0.9})
    policy = make_policy(router_config, simulator,
                         ScriptedClassifier({"simple": 0.7, "medium": 0.2, "critical": 0.05}),
                         decision_log, scorer=scorer)
    result = asyncio.run(policy.route(RouteRequest(messages=PRIMES)))
    steps = result.record.extra["cascade"]
    # no check statistics: every check is at the point's score threshold (config: 0.5)
    assert [(s["tier"], s["score"], s["threshold"], s["failed"]) for s in steps] == [
        ("simple", 0.3, 0.5, True), ("medium", 0.8, 0.5, False)]
    assert result.record.final_tier == "medium"
    text = normalise(PRIMES)
    assert [(c[0], c[2]) for c in scorer.calls] == [([text], ["simple"]), ([text], ["medium"])]
    final = result.response.choices[0]
    assert scorer.calls[1][1] == [final.message.content]
    assert scorer.calls[1][3] == [final.finish_reason]


def _informative_check() -> CheckStats:
    """Check statistics at score thresholds 0.5 and 0.8. At 0.5 simple's check is informative
    (99% of its right answers pass, 5% of its wrong ones), at 0.8 less so (90% and 30%);
    medium's tells nothing at either (tpr = fpr). Critical is right whatever simple was,
    medium rarely right when simple was."""
    right_when_right = np.zeros((1, 3, 3))
    right_when_wrong = np.zeros((1, 3, 3))
    right_when_right[0, 0] = [0.0, 0.1, 1.0]
    right_when_wrong[0, 0] = [0.0, 0.0, 1.0]
    right_when_right[0, 1, 2] = right_when_wrong[0, 1, 2] = 1.0
    return CheckStats(np.array([0.5, 0.8]),
                      np.array([[[0.99, 0.5, 0.0], [0.9, 0.5, 0.0]]]),
                      np.array([[[0.05, 0.5, 0.0], [0.3, 0.5, 0.0]]]),
                      right_when_right, right_when_wrong, np.array([True]))


def test_with_check_statistics_the_cascade_is_chosen_by_expected_utility(
        simulator: SimulatorProcess, router_config: RouterConfig,
        decision_log: DecisionLog) -> None:
    from router.scorer import FixedScorer

    scores = {"simple": 0.7, "medium": 0.9, "critical": 0.95}
    point = model_point(price_weight=100.0, score_threshold=0.7)
    # lambda 100, prices x 100: simple 0.0039, medium 0.0050, critical 0.199.
    # Routing: 0.696 vs 0.895 vs 0.751 -> medium, worth 0.895 (trusted at 0.9).
    # Call simple and check it at 0.5: P(fail) = 0.7 * 0.01 + 0.3 * 0.95 = 0.292;
    #   failing to critical: 0.693 + 0.007 * 1 + 0.285 * 1 - (0.0039 + 0.292 * 0.199) = 0.923
    #   failing to medium:   0.693 + 0.007 * 0.1 + 0 - (0.0039 + 0.292 * 0.0050) = 0.688
    # ...at 0.8: P(fail) = 0.07 + 0.21 = 0.28; to critical 0.91 - (0.0039 + 0.28 * 0.199) = 0.850
    # Call medium and check it (uninformative): 0.95 - (0.0050 + 0.5 * 0.199) = 0.846.
    # 0.923 > 0.895: cascade from simple checked at 0.5, a failed check going to critical --
    # where the rule among the tiers above simple would pick medium (0.895 > 0.751).
    checked = ScriptedClassifier(scores, point, check=_informative_check())
    policy = make_policy(router_config, simulator, checked, decision_log,
                         scorer=FixedScorer(0.1))
    decision = policy.decide(RouteRequest(messages=PRIMES))
    assert (decision.gate.action, decision.gate.chosen_tier, decision.target_tier,
            decision.gate.fail_tier, decision.gate.check_threshold) == (
        "cascade", "medium", "simple", "critical", 0.5)
    assert decision.confidence == 0.9
    result = asyncio.run(policy.route(RouteRequest(messages=PRIMES)))
    assert [(s["tier"], s["failed"]) for s in result.record.extra["cascade"]] == [
        ("simple", True), ("critical", True)]
    assert result.record.final_tier == "critical"
    # The first check is the one the decision valued: 0.6 passes at its 0.5, although it is
    # below the point's own score threshold (0.7).
    scorer = TierScorer({"simple": 0.6, "medium": 0.6, "critical": 0.6})
    passing = make_policy(router_config, simulator, checked, decision_log, scorer=scorer)
    kept = asyncio.run(passing.route(RouteRequest(messages=PRIMES)))
    assert [(s["tier"], s["threshold"], s["failed"]) for s in kept.record.extra["cascade"]] == [
        ("simple", 0.5, False)]
    assert kept.record.final_tier == "simple"
    # Without check statistics the same scores are trusted at medium: routed, no check.
    unchecked = make_policy(router_config, simulator, ScriptedClassifier(scores, point),
                            decision_log, scorer=FixedScorer(0.1))
    routed = asyncio.run(unchecked.route(RouteRequest(messages=PRIMES)))
    assert (routed.record.gate_action, routed.record.final_tier) == ("route", "medium")
    assert "cascade" not in routed.record.extra


def test_cache_in_the_request_path(simulator: SimulatorProcess, router_config: RouterConfig,
                                   tiny_bert_dir: Path, decision_log: DecisionLog) -> None:
    from router.cache import SharedPassEncoder, create_cache

    classifier = load_classifier(str(tiny_bert_dir))  # yields embeddings: one shared pass
    # Plain cosine at 0.5 (a tiny random model's space); the agreement knobs are the cache's own
    # tests' business.
    plain = router_config.cache.model_copy(update={"min_support": 1, "min_margin": 0.0})
    cache = create_cache(plain, SharedPassEncoder(classifier), threshold=0.5, path=None)
    policy = RouterPolicy(router_config, classifier,
                          Dispatcher(router_config, api_base_override=simulator.root),
                          decision_log, cache=cache)

    def ask(text: str, model: str = "simple", tenant: str = "t1"):
        return asyncio.run(policy.route(RouteRequest(
            messages=[{"role": "user", "content": text}], model=model, tenant=tenant)))

    first = ask("Name three prime numbers.")
    assert first.record.cache_status == "miss" and first.record.cost_usd > 0
    # The stored vector is the classifier's own embedding of the request text.
    expected = classifier.predict_full([normalise(PRIMES)]).embeddings[0]
    assert np.allclose(first.decision.embedding, expected, atol=1e-5)
    again = ask("Name three prime numbers.")
    assert again.record.cache_status == "exact" and again.record.cost_usd == 0.0
    assert again.record.final_model == "cache" and again.record.scores == {}
    assert "expected_cost_usd" not in again.record.extra  # no classifier ran, nothing priced
    assert again.response.choices[0].message.content == first.response.choices[0].message.content
    near = ask("Name three prime numbers!")
    assert near.record.cache_status == "semantic" and 0.5 <= near.record.cache_similarity < 1
    # The paraphrase is stored as an alias of the served answer: its repeat hits exactly.
    assert near.record.extra["cache_stored_entry"] != near.record.extra["cache_entry"]
    # ...and the written row names it too (feedback evicts through the log).
    decision_log.flush()
    assert decision_log.get(near.record.request_id).extra["cache_stored_entry"] == \
        near.record.extra["cache_stored_entry"]
    repeat = ask("Name three prime numbers!")
    assert repeat.record.cache_status == "exact"
    assert repeat.response.choices[0].message.content == first.response.choices[0].message.content
    assert ask("Name three prime numbers.", tenant="t2").record.cache_status == "miss"
    # The critical tier's answers are never stored; overridden requests never look up.
    ask("What is the capital of Peru?", model="critical")
    assert ask("What is the capital of Peru?", model="critical").record.cache_status == "miss"
    legal = "Under the statute of frauds, is an oral contract for land enforceable?"
    overridden = ask(legal, model="auto")
    assert overridden.record.override_rule is not None
    assert overridden.record.cache_status is None
