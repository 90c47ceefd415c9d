"""The classifier circuit breaker: a real vLLM backend pointed at dead or wrong servers, a real
in-process classifier as the primary that answers again."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.breaker import CircuitBreakerClassifier
from router.classifier import FixedTierClassifier, InProcessClassifier
from router.config import RouterConfig
from router.vllm_classifier import VLLMClassifier, VLLMError
from tests.conftest import SimulatorProcess, free_port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_dead_or_wrong_servers_are_clear_errors(tiny_qwen_dir: Path,
                                                simulator: SimulatorProcess) -> None:
    dead = VLLMClassifier(f"http://127.0.0.1:{free_port()}", tiny_qwen_dir, timeout_s=0.5)
    with pytest.raises(VLLMError, match="ConnectError"):
        dead.predict(["user: hi"])
    not_vllm = VLLMClassifier(simulator.root, tiny_qwen_dir)  # answers, but no /classify
    with pytest.raises(VLLMError, match="HTTP 404"):
        not_vllm.predict(["user: hi"])


def test_breaker_falls_back_opens_tries_again_and_closes(tiny_qwen_dir: Path,
                                                         tiny_bert_dir: Path) -> None:
    clock = Clock()
    dead = VLLMClassifier(f"http://127.0.0.1:{free_port()}", tiny_qwen_dir, timeout_s=0.5)
    breaker = CircuitBreakerClassifier(dead, FixedTierClassifier("critical"),
                                       failures_to_open=2, reset_after_s=10, clock=clock)
    assert breaker.meta is dead.meta  # the operating point stays the model's
    for _ in range(2):
        found, source = breaker.predict_full_with_source(["user: hi"])
        # fixed:critical: p 1 for critical, 0 elsewhere, and only critical allowed
        assert source == "fallback"
        assert found.tier_scores(0) == {"simple": 0.0, "medium": 0.0, "critical": 1.0}
        assert found.allowed.tolist() == [[False, False, True]]
    assert breaker.state == "open"
    clock.now = 5.0  # still open: the primary is not called at all
    assert breaker.predict_full_with_source(["user: hi"])[1] == "fallback"
    assert breaker.failures == 2
    clock.now = 10.0  # half-open: one trial, which fails -> open again
    assert breaker.predict_full_with_source(["user: hi"])[1] == "fallback"
    assert (breaker.state, breaker.failures) == ("open", 3)
    primary = InProcessClassifier(tiny_bert_dir)
    breaker.primary = primary  # the primary answers again
    clock.now = 20.0
    found, source = breaker.predict_full_with_source(["user: hi"])
    assert source == "primary" and breaker.state == "closed" and breaker.failures == 0
    # the primary's own predictions, untouched: per-tier probabilities (no need to sum to 1),
    # every tier allowed for an untrained bundle, its embedding carried through
    own = primary.predict_full(["user: hi"])
    assert found.scores == pytest.approx(own.scores, abs=1e-6)
    assert found.allowed.all() and found.embeddings.shape == (1, primary.embedding_dim)
    assert breaker.predict(["user: hi"])[0] == pytest.approx(own.tier_scores(0), abs=1e-6)
    assert breaker.fallback_answers == 4


def test_the_request_path_records_who_scored_the_request(tiny_qwen_dir: Path,
                                                         router_config: RouterConfig) -> None:
    from router.dispatch import Dispatcher
    from router.policy import RouteRequest, RouterPolicy

    dead = VLLMClassifier(f"http://127.0.0.1:{free_port()}", tiny_qwen_dir, timeout_s=0.5)
    breaker = CircuitBreakerClassifier(dead, FixedTierClassifier("critical"),
                                       failures_to_open=1, reset_after_s=60)
    policy = RouterPolicy(router_config, breaker, Dispatcher(router_config))
    decision = policy.decide(RouteRequest(messages=[{"role": "user", "content": "hi"}]))
    # scored by fixed:critical: the rule can only choose critical, which always routes
    assert decision.classifier_source == "fallback"
    assert (decision.gate.action, decision.predicted_tier, decision.target_tier) == (
        "route", "critical", "critical")
    assert decision.allowed == {"simple": False, "medium": False, "critical": True}
