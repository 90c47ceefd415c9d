"""The confidence gate: calibrated tier probabilities -> route | cascade | escalate.

* confidence >= trust threshold: **route** to the predicted tier;
* escalate threshold <= confidence < trust threshold: **cascade** (call the predicted tier, score
  the answer, escalate if the score is low);
* confidence < escalate threshold: **escalate** above the predicted tier.

Here confidence is the probability of the predicted (most likely) tier. An escalation goes to the
cheapest tier *t* above the prediction with P(needed tier <= t) >= trust threshold: labels are
"the cheapest tier that answered correctly", so that cumulative probability is the chance that
*t* is good enough. The frontier tier (critical) has nothing above it: a prediction of critical
is always routed.

Thresholds, by precedence (DESIGN.md): an A/B variant's, else those fitted and stored with the
model version, else the config's defaults. ``Thresholds.source`` says which applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from router.config import GateConfig
from router.tiers import TIERS, Tier

GateAction = Literal["route", "cascade", "escalate"]


@dataclass(frozen=True)
class Thresholds:
    escalate: float
    trust: float
    source: str  # "config" | "model:<version>" | "ab:<variant>"

    def __post_init__(self) -> None:
        if not 0.0 <= self.escalate <= self.trust <= 1.0:
            raise ValueError(f"thresholds need 0 <= escalate <= trust <= 1, got "
                             f"escalate={self.escalate}, trust={self.trust} ({self.source})")

    def as_dict(self) -> dict[str, float]:
        return {"escalate": self.escalate, "trust": self.trust}


def resolve_thresholds(config: GateConfig, fitted: Mapping[str, float] | None = None,
                       model_version: str | None = None,
                       variant: tuple[str, Mapping[str, float]] | None = None) -> Thresholds:
    """The thresholds that apply: A/B ``variant`` (name, values), else ``fitted``, else config."""
    if variant is not None:
        name, values = variant
        return Thresholds(values["escalate"], values["trust"], f"ab:{name}")
    if fitted is not None:
        return Thresholds(fitted["escalate"], fitted["trust"], f"model:{model_version}")
    return Thresholds(config.escalate_threshold, config.trust_threshold, "config")


@dataclass(frozen=True)
class GateDecision:
    action: GateAction
    predicted_tier: Tier
    confidence: float
    target_tier: Tier  # where the request goes first (a cascade starts at the predicted tier)


def decide(scores: Mapping[str, float], thresholds: Thresholds) -> GateDecision:
    """Gate one request. ``scores``: probability per tier (every tier present, summing to ~1)."""
    missing = [tier for tier in TIERS if tier not in scores]
    if missing:
        raise ValueError(f"scores lack tier(s) {missing}: {dict(scores)}")
    # Ties go to the more capable tier: when unsure, err towards quality.
    predicted = max(reversed(TIERS), key=lambda tier: scores[tier])
    confidence = float(scores[predicted])
    if predicted == TIERS[-1] or confidence >= thresholds.trust:
        return GateDecision("route", predicted, confidence, predicted)
    if confidence >= thresholds.escalate:
        return GateDecision("cascade", predicted, confidence, predicted)
    above = TIERS[TIERS.index(predicted) + 1:]
    cumulative = sum(scores[tier] for tier in TIERS[: TIERS.index(predicted) + 1])
    target = above[-1]
    for tier in above:
        cumulative += scores[tier]
        if cumulative >= thresholds.trust:
            target = tier
            break
    return GateDecision("escalate", predicted, confidence, target)
