"""Drift monitoring: PSI and window figures, and the acceptance replay -- a real MiniLM classifier
trained here (the product's LoRA trainer, a few steps), steady traffic through the real request
path raises nothing, a shift in traffic raises the drift gauges and the escalation alert."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ops.monitor import evaluate, load_rules
from router.classifier import ClassifierError, load_classifier
from router.config import MonitorConfig, RouterConfig
from router.dispatch import Dispatcher
from router.gate import OperatingPoint
from router.monitor import (
    CONFIDENCE_EDGES,
    DriftMonitor,
    DriftReferenceError,
    check_reference,
    confidence_shares,
    psi,
    reference_distribution,
)
from router.normalise import normalise, request_messages
from router.policy import RouteRequest, RouterPolicy
from router.telemetry import DecisionLog, DecisionRecord
from router.tiers import TIERS
from tests.conftest import SimulatorProcess
from workloads import load_workload

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts" / "tier-router.rules.yml"
WINDOW = 120  # decisions per phase: the whole window is replaced by each phase


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    assert math.isfinite(psi([1.0, 0.0], [0.0, 1.0]))  # empty bins are floored, not infinite
    shares = confidence_shares([0.34, 0.5, 0.99, 1.0])
    assert len(shares) == 10 and sum(shares) == pytest.approx(1.0)
    # The chosen tier's P(acceptable) can be anywhere in [0, 1] (a price weight picks a cheap,
    # unlikely tier): low confidences keep their own bins, 0.1 wide from 0.
    assert CONFIDENCE_EDGES[0] == 0.0 and CONFIDENCE_EDGES[-1] == 1.0
    assert confidence_shares([0.05, 0.15, 0.25, 0.95]) == pytest.approx(
        [0.25, 0.25, 0.25, 0, 0, 0, 0, 0, 0, 0.25])


def test_the_reference_is_the_chosen_tiers_confidence_and_mix() -> None:
    # Two rows: simple chosen at 0.8 (routed), critical chosen at 0.2 (the gate escalated it).
    good = reference_distribution(np.array([0.8, 0.2]), np.array([0, 2]), np.ones(2),
                                  np.array([False, True]), np.array([False, False]),
                                  source="test")
    assert check_reference(good) is good and good["gate_escalation_rate"] == 0.5
    assert good["tiers"] == {"simple": 0.5, "medium": 0.0, "critical": 0.5}
    assert good["confidence"] == pytest.approx([0, 0, 0.5, 0, 0, 0, 0, 0, 0.5, 0])
    assert (good["rows"], good["source"], good["override_rate"]) == (2, "test", 0.0)
    # Weights count; an overridden row never reached the gate: escalations over the others,
    # (1 * 1 + 2 * 0) / 3, and overrides 1 of 4 weighted rows.
    weighted = reference_distribution(np.array([0.3, 0.3, 0.9]), np.array([1, 1, 0]),
                                      np.array([1.0, 1.0, 2.0]), np.array([True, True, False]),
                                      np.array([True, False, False]), source="w")
    assert weighted["gate_escalation_rate"] == pytest.approx(1 / 3)
    assert weighted["override_rate"] == pytest.approx(0.25)
    assert weighted["tiers"] == {"simple": 0.5, "medium": 0.5, "critical": 0.0}


def test_a_malformed_reference_is_refused_with_a_reason(tmp_path: Path,
                                                        tiny_bert_dir: Path) -> None:
    good = reference_distribution(np.array([0.8, 0.2]), np.array([0, 2]), np.ones(2),
                                  np.array([False, True]), np.array([False, False]),
                                  source="test")
    with pytest.raises(DriftReferenceError, match="tiers"):
        check_reference({**good, "tiers": {"simple": 1.0}})
    with pytest.raises(DriftReferenceError, match="one share per bin"):
        check_reference({**good, "confidence": [1.0]})
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in tiny_bert_dir.iterdir():
        (bundle / item.name).symlink_to(item)
    (bundle / "router_model.json").write_text(json.dumps(
        {"version": "v", "reference": {**good, "confidence": "x"}}))
    with pytest.raises(ClassifierError, match="malformed reference"):
        load_classifier(str(bundle))


def test_gauges_read_nan_until_the_window_has_enough_and_then_the_figures() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(MonitorConfig(window=20, min_requests=10), registry=registry)
    for i in range(9):
        monitor.observe(DecisionRecord(request_id=f"r{i}", tenant="t", text_hash="h",
                                       requested_model="auto", gate_action="escalate",
                                       predicted_tier="simple", confidence=0.5, cost_usd=1.0))
    assert math.isnan(monitor.value("escalation_rate")) and monitor.value("requests") == 9
    monitor.observe(DecisionRecord(request_id="r9", tenant="t", text_hash="h",
                                   requested_model="auto", cache_status="exact", cost_usd=0.0))
    assert monitor.value("escalation_rate") == pytest.approx(0.9)
    assert monitor.value("cache_hit_rate") == pytest.approx(0.1)
    assert monitor.value("cost_per_task_usd") == pytest.approx(0.9)
    assert math.isnan(monitor.value("tier_psi"))  # no reference: no PSI
    exposition = generate_latest(registry).decode()
    assert "tier_router_window_escalation_rate 0.9" in exposition


# -- the acceptance replay ----------------------------------------------------------------------


def _text(record) -> str:
    return normalise(request_messages(record.messages()))


# The support deployment's price weight: at 100, GPT-4 (~2e-3 USD for a short question, i.e.
# 0.2 of success probability) must be much likelier than Mixtral to be chosen -- word problems
# go to critical, account questions stay on simple.
SUPPORT_PRICE_WEIGHT = 100.0


def _decisions(policy: RouterPolicy, texts: list[str]) -> list:
    return [policy.decide(RouteRequest(messages=[{"role": "user", "content": t}]))
            for t in texts]


@pytest.fixture(scope="module")
def support_model(tmp_path_factory: pytest.TempPathFactory, router_config: RouterConfig):
    """A MiniLM tier classifier for a support deployment, trained here with the product's
    trainer (per-tier heads, 3 epochs of 360 rows, ~30 s): any tier answers a Banking77 query
    (the intent rule), only critical a GSM8K word problem.
    Returns (bundle dir, steady texts, shifted texts); none of them were trained on."""
    from training.params import TrainParams
    from training.train import resolve_base_model, train_classifier

    rng = random.Random(7)
    banking = [_text(r) for r in load_workload("banking77").records]
    math_rows = [_text(r) for r in load_workload("gsm8k").records]
    rng.shuffle(banking)
    rng.shuffle(math_rows)
    every = json.dumps(dict.fromkeys(TIERS, 1))
    only_critical = json.dumps({"simple": 0, "medium": 0, "critical": 1})
    train = pd.DataFrame({"text": banking[:240] + math_rows[:120],
                          "targets": [every] * 240 + [only_critical] * 120,
                          "label": ["simple"] * 240 + ["critical"] * 120})
    root = tmp_path_factory.mktemp("support-model")
    params = TrainParams(max_length=32, epochs=3, batch_size=16, max_train_rows=360,
                         max_eval_rows=60, eval_steps=1000, seed=7, head="per_tier")
    train_classifier(train, train.sample(60, random_state=7), params, root,
                     resolve_base_model("minilm"))
    # Steady support traffic: 85% account questions, 15% homework. The shift: high-stakes
    # questions (MMLU professional law, medicine, accounting), which it was never shown.
    steady = banking[300:300 + 3 * 170] + math_rows[200:200 + 3 * 30]
    rng.shuffle(steady)
    reference_texts, steady = steady[:300], steady[300:]
    high_stakes = [_text(r) for r in load_workload("mmlu").records if r.category in
                   ("professional_law", "professional_medicine", "professional_accounting")]
    shifted = rng.sample(high_stakes, WINDOW)
    bundle = root / "merged"
    config = router_config.model_copy(update={"cache": router_config.cache.model_copy(
        update={"enabled": False})})
    policy = RouterPolicy(config, load_classifier(str(bundle)), Dispatcher(config))
    # The escalate threshold fitted like an operator would: 10% of reference traffic escalates
    # (the chosen tier's P below it; choosing critical never escalates). The thresholds do not
    # move the rule's choice, only the price weight does.
    policy.point = OperatingPoint(SUPPORT_PRICE_WEIGHT, 1.0, 0.0, 0.5, "fitting")
    first = _decisions(policy, reference_texts)
    below_top = np.array([d.confidence for d in first if d.predicted_tier != TIERS[-1]])
    escalate = float(np.quantile(below_top, min(1.0, 0.10 * len(first) / len(below_top))))
    # trust 0.99 keeps everything below it cascading (cascades are off in the replay) or
    # escalating
    point = OperatingPoint(SUPPORT_PRICE_WEIGHT, max(escalate, 0.99), escalate, 0.5, "fitting")
    policy.point = point
    decided = _decisions(policy, reference_texts)
    reference = reference_distribution(
        np.array([d.confidence for d in decided]),
        np.array([TIERS.index(d.predicted_tier) for d in decided]), np.ones(len(decided)),
        np.array([d.gate is not None and d.gate.action == "escalate" for d in decided]),
        np.array([d.override is not None for d in decided]), "support reference")
    assert 0.05 <= reference["gate_escalation_rate"] <= 0.15  # the fit did what it says
    meta = json.loads((bundle / "router_model.json").read_text())
    (bundle / "router_model.json").write_text(json.dumps({
        **meta, "version": "support-1", "reference": reference,
        "operating_point": point.as_dict()}))
    return bundle, steady[:WINDOW], shifted


def test_a_traffic_shift_raises_drift_and_the_escalation_alert_steady_traffic_does_not(
        support_model, simulator: SimulatorProcess, router_config: RouterConfig,
        tmp_path: Path) -> None:
    bundle, steady, shifted = support_model
    config = router_config.model_copy(update={
        "cache": router_config.cache.model_copy(update={"enabled": False}),
        "cascade": router_config.cascade.model_copy(update={"enabled": False})})
    classifier = load_classifier(str(bundle))
    assert classifier.meta.operating_point.source == "model:support-1"
    assert classifier.meta.operating_point.price_weight == SUPPORT_PRICE_WEIGHT
    registry = CollectorRegistry()
    monitor = DriftMonitor(MonitorConfig(window=WINDOW, min_requests=WINDOW),
                           classifier.meta.reference, registry=registry)
    rules = load_rules(RULES)

    def replay(texts: list[str]) -> dict[str, bool]:
        async def run() -> None:
            for start in range(0, len(texts), 16):  # 16 requests in flight at a time
                await asyncio.gather(*(policy.route(RouteRequest(
                    messages=[{"role": "user", "content": t}]))
                    for t in texts[start:start + 16]))

        asyncio.run(run())
        stats = monitor.stats()
        return {r["alert"]: r["firing"] for r in (evaluate(rule, stats) for rule in rules)
                if r["evaluated"]}

    with DecisionLog(f"sqlite:///{tmp_path / 'd.sqlite'}", spill_path=tmp_path / "s.jsonl",
                     observers=[monitor.observe]) as log:
        policy = RouterPolicy(config, classifier,
                              Dispatcher(config, api_base_override=simulator.root), log)
        calm = replay(steady)
        calm_stats = monitor.stats()
        alarmed = replay(shifted)
        shifted_stats = monitor.stats()
        log.flush()
        assert log.count() == 2 * WINDOW
    reference = classifier.meta.reference
    assert calm_stats["requests"] == shifted_stats["requests"] == WINDOW
    assert calm_stats["confidence_psi"] < 0.25 and calm_stats["tier_psi"] < 0.25
    assert not calm["TierRouterConfidenceDrift"] and not calm["TierRouterTierMixDrift"]
    assert not calm["TierRouterEscalationCreep"], (calm_stats, reference)
    assert shifted_stats["confidence_psi"] > 0.25 and shifted_stats["tier_psi"] > 0.25
    assert alarmed["TierRouterConfidenceDrift"] and alarmed["TierRouterTierMixDrift"]
    assert alarmed["TierRouterEscalationCreep"], (shifted_stats, reference)
    assert shifted_stats["gate_escalation_rate"] > reference["gate_escalation_rate"] + 0.05
    exposition = generate_latest(registry).decode()
    assert f"tier_router_window_tier_psi {shifted_stats['tier_psi']}" in exposition
