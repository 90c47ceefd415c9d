from __future__ import annotations

import pytest

from router.config import GateConfig
from router.gate import Thresholds, decide, resolve_thresholds

DEFAULT = Thresholds(escalate=0.70, trust=0.85, source="config")


@pytest.mark.parametrize(("scores", "action", "predicted", "target"), [
    ({"simple": 0.90, "medium": 0.05, "critical": 0.05}, "route", "simple", "simple"),
    ({"simple": 0.75, "medium": 0.20, "critical": 0.05}, "cascade", "simple", "simple"),
    # P(simple or medium suffices) = 0.90 >= trust: escalate one tier.
    ({"simple": 0.60, "medium": 0.30, "critical": 0.10}, "escalate", "simple", "medium"),
    # P(simple or medium) = 0.80 < trust: escalate to the frontier.
    ({"simple": 0.50, "medium": 0.30, "critical": 0.20}, "escalate", "simple", "critical"),
    ({"simple": 0.10, "medium": 0.60, "critical": 0.30}, "escalate", "medium", "critical"),
    # Nothing is above critical: a critical prediction is routed whatever its confidence.
    ({"simple": 0.30, "medium": 0.30, "critical": 0.40}, "route", "critical", "critical"),
    # A tie goes to the more capable tier.
    ({"simple": 0.45, "medium": 0.45, "critical": 0.10}, "escalate", "medium", "critical"),
])
def test_gate_actions(scores: dict, action: str, predicted: str, target: str) -> None:
    decision = decide(scores, DEFAULT)
    assert (decision.action, decision.predicted_tier, decision.target_tier) == (
        action, predicted, target)
    assert decision.confidence == max(scores.values())


def test_threshold_precedence() -> None:
    config = GateConfig()
    assert resolve_thresholds(config) == DEFAULT
    fitted = resolve_thresholds(config, {"escalate": 0.5, "trust": 0.8}, "v3")
    assert (fitted.escalate, fitted.trust, fitted.source) == (0.5, 0.8, "model:v3")
    variant = resolve_thresholds(config, {"escalate": 0.5, "trust": 0.8}, "v3",
                                 variant=("b", {"escalate": 0.6, "trust": 0.95}))
    assert (variant.escalate, variant.trust, variant.source) == (0.6, 0.95, "ab:b")


def test_bad_thresholds_and_scores() -> None:
    with pytest.raises(ValueError, match="escalate <= trust"):
        Thresholds(0.9, 0.8, "model:x")
    with pytest.raises(ValueError, match="lack tier"):
        decide({"simple": 1.0}, DEFAULT)
