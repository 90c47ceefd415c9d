"""The classifier circuit breaker: a real vLLM backend pointed at dead or wrong servers, a real
in-process classifier as the primary that answers again."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.breaker import CircuitBreakerClassifier
from router.classifier import FixedTierClassifier, InProcessClassifier
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
    assert breaker.meta is dead.meta  # thresholds stay the model's
    for _ in range(2):
        scores, source = breaker.predict_with_source(["user: hi"])
        assert source == "fallback" and scores[0]["critical"] == 1.0
    assert breaker.state == "open"
    clock.now = 5.0  # still open: the primary is not called at all
    assert breaker.predict_with_source(["user: hi"])[1] == "fallback"
    assert breaker.failures == 2
    clock.now = 10.0  # half-open: one trial, which fails -> open again
    assert breaker.predict_with_source(["user: hi"])[1] == "fallback"
    assert (breaker.state, breaker.failures) == ("open", 3)
    breaker.primary = InProcessClassifier(tiny_bert_dir)  # the primary answers again
    clock.now = 20.0
    scores, source = breaker.predict_with_source(["user: hi"])
    assert source == "primary" and breaker.state == "closed" and breaker.failures == 0
    assert sum(scores[0].values()) == pytest.approx(1.0)
    assert breaker.fallback_answers == 4
