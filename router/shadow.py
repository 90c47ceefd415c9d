"""Shadow mode: a second classifier (the registry's ``challenger``) scores live traffic beside the
serving one without acting on it.

For each request the router classified, :meth:`ShadowScorer.score` runs the challenger and the
decision rule at *its* stored operating point (its own price weight and thresholds, the live
request's prompt length) and returns what *it* would have done, stored in the decision record's
``shadow`` field:

``{"model_version", "scores", "predicted_tier", "confidence", "gate_action", "target_tier",
"agrees", "same_prediction", "est_cost_usd", "ms"}``

* ``target_tier``: where the challenger would have sent the request first. Overrides and pinned
  models are not the classifier's call: there the live target stands for both.
* ``agrees``: the challenger's target equals the live decision's target tier.
* ``est_cost_usd`` / ``live_est_cost_usd``: the answer's recorded tokens priced at the would-be
  and at the live target tier's first deployment (estimates on one footing: another model would
  have written another answer, and a cascade's second call is not counted), filled in when the
  request finishes (:meth:`ShadowScorer.finish`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from router.classifier import TierClassifier
from router.config import RouterConfig
from router.gate import OperatingPoint, decide, resolve_point
from router.pricing import expected_prices, price_matrix, tier_prices
from router.tiers import TIERS, Tier

logger = logging.getLogger(__name__)


class ShadowScorer:
    """The challenger classifier and the operating point stored with it."""

    def __init__(self, classifier: TierClassifier, config: RouterConfig) -> None:
        self.classifier = classifier
        self.config = config
        self.point: OperatingPoint = resolve_point(config.gate,
                                                   classifier.meta.operating_point)
        self._prices = price_matrix(tier_prices(config))

    @property
    def version(self) -> str:
        return self.classifier.meta.version

    def score(self, text: str, prompt_tokens: float, live_target: Tier,
              live_predicted: Tier | None, classifier_decides: bool) -> dict[str, Any]:
        """The challenger's would-be decision for one normalised request text of
        ``prompt_tokens`` (estimated) prompt tokens.

        ``classifier_decides``: False when an override or a pinned model fixed the target (the
        challenger could not have changed it). Never raises: a failure is returned as
        ``{"model_version", "error"}`` so the live request is unaffected."""
        started = time.perf_counter()
        try:
            found = self.classifier.predict_full([text])
            scores = found.tier_scores(0)
            prices = dict(zip(TIERS, expected_prices([prompt_tokens], found.output_tokens[:1],
                                                     self._prices)[0].tolist(), strict=True))
            gate = decide(scores, prices, self.point, found.tier_allowed(0), found.check_of(0))
        except Exception as exc:  # the shadow must never fail a live request
            logger.warning("shadow classifier %s failed: %s", self.version, exc)
            return {"model_version": self.version, "error": f"{type(exc).__name__}: {exc}"}
        target = gate.target_tier if classifier_decides else live_target
        return {"model_version": self.version,
                "scores": {tier: float(p) for tier, p in scores.items()},
                "predicted_tier": gate.predicted_tier, "confidence": gate.confidence,
                "gate_action": gate.action if classifier_decides else None,
                "target_tier": target, "agrees": target == live_target,
                "same_prediction": gate.predicted_tier == live_predicted,
                "ms": (time.perf_counter() - started) * 1000}

    def finish(self, shadow: dict[str, Any], live_target: Tier, prompt_tokens: int | None,
               completion_tokens: int | None) -> dict[str, Any]:
        """``shadow`` with the would-be and the live first-call cost at the answer's recorded
        tokens (``est_cost_usd``, ``live_est_cost_usd``): priced alike, so they compare."""
        if "error" in shadow:
            return shadow
        return {**shadow,
                "est_cost_usd": self.config.list_price(shadow.get("target_tier"), prompt_tokens,
                                                       completion_tokens),
                "live_est_cost_usd": self.config.list_price(live_target, prompt_tokens,
                                                            completion_tokens)}
