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
from router.gate import Thresholds, decide
from router.monitor import (
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


def test_a_malformed_reference_is_refused_with_a_reason(tmp_path: Path,
                                                        tiny_bert_dir: Path) -> None:
    good = reference_distribution(np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]),
                                  np.ones(2), np.array([False, True]), np.array([False, False]),
                                  source="test")
    assert check_reference(good) is good and good["gate_escalation_rate"] == 0.5
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


@pytest.fixture(scope="module")
def support_model(tmp_path_factory: pytest.TempPathFactory):
    """A MiniLM tier classifier for a support deployment, trained here with the product's
    trainer (3 epochs of 360 rows, ~20 s): Banking77 queries are simple (the intent rule), GSM8K
    word problems critical.
    Returns (bundle dir, steady texts, shifted texts); none of them were trained on."""
    from training.params import TrainParams
    from training.train import resolve_base_model, train_classifier

    rng = random.Random(7)
    banking = [_text(r) for r in load_workload("banking77").records]
    math_rows = [_text(r) for r in load_workload("gsm8k").records]
    rng.shuffle(banking)
    rng.shuffle(math_rows)
    train = pd.DataFrame({"text": banking[:240] + math_rows[:120],
                          "label": ["simple"] * 240 + ["critical"] * 120})
    root = tmp_path_factory.mktemp("support-model")
    params = TrainParams(max_length=32, epochs=3, batch_size=16, max_train_rows=360,
                         max_eval_rows=60, eval_steps=1000, seed=7)
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
    classifier = load_classifier(str(bundle))
    probs = np.array([[p[t] for t in TIERS] for p in classifier.predict(reference_texts)])
    # The gate's escalate threshold fitted like an operator would: 10% of reference traffic
    # escalates (trust 0.99 keeps everything below it cascading or escalating).
    escalate = float(np.quantile(probs.max(axis=1), 0.10))
    thresholds = Thresholds(escalate, max(escalate, 0.99), "test")
    escalated = np.array([decide(dict(zip(TIERS, p, strict=True)), thresholds).action
                          == "escalate" for p in probs])
    reference = reference_distribution(probs, np.ones(len(probs)), escalated,
                                       np.zeros(len(probs), bool), "support reference")
    (bundle / "router_model.json").write_text(json.dumps({
        "version": "support-1", "max_length": 32, "reference": reference,
        "thresholds": {"escalate": thresholds.escalate, "trust": thresholds.trust}}))
    return bundle, steady[:WINDOW], shifted


def test_a_traffic_shift_raises_drift_and_the_escalation_alert_steady_traffic_does_not(
        support_model, simulator: SimulatorProcess, router_config: RouterConfig,
        tmp_path: Path) -> None:
    bundle, steady, shifted = support_model
    config = router_config.model_copy(update={
        "cache": router_config.cache.model_copy(update={"enabled": False}),
        "cascade": router_config.cascade.model_copy(update={"enabled": False})})
    classifier = load_classifier(str(bundle))
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
