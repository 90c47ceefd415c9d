"""The whole request path: overrides -> classifier -> gate -> LiteLLM dispatch -> decision log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from router.classifier import ClassifierMeta, FixedTierClassifier, TierScores, load_classifier
from router.config import RouterConfig
from router.dispatch import Dispatcher, DispatchError
from router.errors import RequestFormatError
from router.policy import RouteRequest, RouterPolicy
from router.telemetry import DecisionLog
from tests.conftest import SimulatorProcess
from workloads import Workload


class ScriptedClassifier:
    """Returns the scores it is given: a real TierClassifier for gate paths a random tiny model
    would hit only by chance."""

    def __init__(self, scores: TierScores, thresholds: dict | None = None) -> None:
        self.scores = scores
        self.meta = ClassifierMeta(version="scripted-1", thresholds=thresholds)

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        return [dict(self.scores) for _ in texts]


@pytest.fixture
def decision_log(tmp_path: Path) -> Iterator[DecisionLog]:
    with DecisionLog(f"sqlite:///{tmp_path / 'decisions.sqlite'}",
                     spill_path=tmp_path / "spill.jsonl") as log:
        yield log


def make_policy(config: RouterConfig, simulator: SimulatorProcess, classifier,
                log: DecisionLog) -> RouterPolicy:
    return RouterPolicy(config, classifier, Dispatcher(config, api_base_override=simulator.root),
                        log)


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
        assert row.predicted_tier == "simple"
        assert (row.target_tier, row.final_tier) == ("critical", "critical")
        assert row.status == "ok"


def test_gate_actions_are_logged_with_their_threshold_source(
        simulator: SimulatorProcess, router_config: RouterConfig,
        decision_log: DecisionLog) -> None:
    messages = [{"role": "user", "content": "Name three prime numbers."}]
    cases = [
        (ScriptedClassifier({"simple": 0.9, "medium": 0.05, "critical": 0.05}), "route",
         "simple", "config"),
        (ScriptedClassifier({"simple": 0.75, "medium": 0.2, "critical": 0.05}), "cascade",
         "simple", "config"),
        (ScriptedClassifier({"simple": 0.6, "medium": 0.3, "critical": 0.1}), "escalate",
         "medium", "config"),
        # Thresholds stored with the model win over the config's: 0.6 is now trusted.
        (ScriptedClassifier({"simple": 0.6, "medium": 0.3, "critical": 0.1},
                            {"escalate": 0.4, "trust": 0.55}), "route", "simple",
         "model:scripted-1"),
    ]
    for classifier, action, tier, source in cases:
        policy = make_policy(router_config, simulator, classifier, decision_log)
        result = asyncio.run(policy.route(RouteRequest(messages=messages)))
        record = result.record
        assert (record.gate_action, record.final_tier, record.threshold_source) == (
            action, tier, source)
    decision_log.flush()
    rows = decision_log.read()
    assert [r.gate_action for r in rows] == ["route", "cascade", "escalate", "route"]
    assert rows[3].thresholds == {"escalate": 0.4, "trust": 0.55}
    assert all(set(r.latency_ms) >= {"normalise", "override", "classify", "gate", "dispatch",
                                     "total"} for r in rows)
    assert all(r.cost_usd and r.cost_usd > 0 and r.prompt_tokens for r in rows)


def test_pins_and_unknown_models(simulator: SimulatorProcess, router_config: RouterConfig,
                                 decision_log: DecisionLog, tiny_bert_dir: Path) -> None:
    policy = make_policy(router_config, simulator, load_classifier(str(tiny_bert_dir)),
                         decision_log)
    legal = [{"role": "user", "content": "Can I sue my landlord over a tort?"}]
    pinned = asyncio.run(policy.route(RouteRequest(messages=legal, model="simple")))
    assert (pinned.record.pinned, pinned.record.final_tier) == (True, "simple")
    assert pinned.record.override_rule is None  # an explicit pin is honoured
    assert set(pinned.record.scores) == {"simple", "medium", "critical"}  # still scored
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


def test_cascade_scores_escalates_and_sums_the_calls(
        simulator: SimulatorProcess, router_config: RouterConfig,
        decision_log: DecisionLog) -> None:
    from router.scorer import FixedScorer

    messages = [{"role": "user", "content": "Name three prime numbers."}]
    unsure = ScriptedClassifier({"simple": 0.75, "medium": 0.2, "critical": 0.05})  # cascade
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)
    low = RouterPolicy(router_config, unsure, dispatcher, decision_log, scorer=FixedScorer(0.1))
    high = RouterPolicy(router_config, unsure, dispatcher, decision_log, scorer=FixedScorer(0.9))
    escalated = asyncio.run(low.route(RouteRequest(messages=messages)))
    kept = asyncio.run(high.route(RouteRequest(messages=messages)))
    # A low score climbs; with max_calls 2 the second (last) call goes to the frontier.
    assert router_config.cascade.max_calls == 2
    steps = escalated.record.extra["cascade"]
    assert [s["tier"] for s in steps] == ["simple", "critical"]
    assert escalated.record.final_tier == "critical"
    assert escalated.record.extra["escalation_reason"] == "cascade"
    assert escalated.record.cost_usd == pytest.approx(sum(s["cost_usd"] for s in steps))
    assert [s["tier"] for s in kept.record.extra["cascade"]] == ["simple"]
    assert kept.record.final_tier == "simple" and "escalation_reason" not in kept.record.extra
    # A budget the cascade would overrun (tiers' latencies are known now) skips it.
    skipped = asyncio.run(low.route(RouteRequest(messages=messages, latency_budget_ms=0.001)))
    assert "cascade" not in skipped.record.extra
    assert skipped.record.final_tier == "simple"
    assert skipped.record.extra["cascade_skipped_budget_ms"] == 0.001


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
    again = ask("Name three prime numbers.")
    assert again.record.cache_status == "exact" and again.record.cost_usd == 0.0
    assert again.record.final_model == "cache" and again.record.scores == {}
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

