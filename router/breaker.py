"""A circuit breaker around a remote tier classifier (vLLM), with a configured fallback.

States: *closed* (call the primary; a failure -- error, timeout, garbage -- answers that request
from the fallback and counts), *open* after ``failures_to_open`` failures in a row (every request
goes straight to the fallback: a slow or dead primary costs nothing), *half-open* once
``reset_after_s`` has passed (one request tries the primary again: success closes the circuit,
failure re-opens it). The fallback is the configured choice: the in-process classifier on the
same weights (same probabilities, slower) or ``fixed:critical`` (safe, expensive).

Each answer says who gave it (:meth:`CircuitBreakerClassifier.predict_full_with_source`), so the
decision record names the backend that scored the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

from router.classifier import ClassifierMeta, Predictions, TierClassifier, TierScores
from router.errors import RouterError

logger = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


class CircuitBreakerClassifier:
    """``primary`` behind a breaker, ``fallback`` when it is down. ``meta``: the primary's
    (thresholds and version belong to the model, whoever serves it)."""

    def __init__(self, primary: TierClassifier, fallback: TierClassifier, *,
                 failures_to_open: int = 3, reset_after_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures_to_open < 1 or reset_after_s <= 0:
            raise ValueError("failures_to_open must be >= 1 and reset_after_s > 0")
        self.primary, self.fallback = primary, fallback
        self.meta: ClassifierMeta = primary.meta
        self.failures_to_open = failures_to_open
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.state: State = "closed"
        self.failures = 0  # in a row
        self.fallback_answers = 0  # requests the fallback scored, in total
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight
        self._lock = threading.Lock()

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        found = self.predict_full(texts)
        return [found.tier_scores(i) for i in range(len(found))]

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        return self.predict_full_with_source(texts)[0]

    def predict_full_with_source(self, texts: Sequence[str]) -> tuple[Predictions, str]:
        """Predictions and who gave them: ``"primary"`` or ``"fallback"``."""
        if not self._may_call_primary():
            return self._from_fallback(texts, "circuit open")
        try:
            scores = self.primary.predict_full(texts)
        except (RouterError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return self._from_fallback(texts, str(exc))
        self._succeeded()
        return scores, "primary"

    def _may_call_primary(self) -> bool:
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and self.clock() - self._opened_at >= self.reset_after_s:
                self.state = "half_open"
            if self.state == "half_open" and not self._trial:
                self._trial = True  # one trial at a time; the others keep the fallback
                return True
            return False

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self._trial = False
            if self.state == "half_open" or self.failures >= self.failures_to_open:
                if self.state != "open":
                    logger.error("classifier circuit OPEN after %d failure(s): %s; scoring with "
                                 "the fallback for %.0f s", self.failures, exc,
                                 self.reset_after_s)
                self.state, self._opened_at = "open", self.clock()

    def _succeeded(self) -> None:
        with self._lock:
            if self.state != "closed":
                logger.warning("classifier circuit closed: the primary answers again")
            self.state, self.failures, self._trial = "closed", 0, False

    def _from_fallback(self, texts: Sequence[str], reason: str) -> tuple[Predictions, str]:
        with self._lock:
            self.fallback_answers += 1
        logger.warning("classifier fallback for %d text(s): %s", len(texts), reason)
        return self.fallback.predict_full(texts), "fallback"
