"""Drift and health over a window of recent decisions (DESIGN: calibration drifts unnoticed,
escalation creeps past 5%, the tail gets misrouted).

The *reference* is what the serving model did on its training distribution, measured by the
``calibrate`` stage on a weighted sample of the train fold and stored with the model version in
``router_model.json`` (``reference``, see :func:`reference_distribution`)::

    {"source": str, "rows": int, "confidence_edges": [11 floats], "confidence": [10 shares],
     "tiers": {tier: share}, "gate_escalation_rate": float, "override_rate": float}

:func:`window_stats` compares a window of decision records with it:

* ``confidence_psi`` / ``tier_psi``: population stability index of the classifier's confidence
  (10 equal-width bins from 0 to 1) and of its predicted-tier mix. Rule of thumb: < 0.1
  stable, 0.1-0.25 moderate, > 0.25 a shift worth a retrain (alert rules use 0.25).
* ``escalation_rate``: requests sent above the predicted tier by the gate or a cascade, over all
  requests (DESIGN's target: <= 5%); ``gate_escalation_rate`` counts the gate alone over the
  requests it decided (no override, pin or cache hit), the figure the reference holds, so a
  creep is judged like for like.
* ``override_rate``, ``cache_hit_rate``, ``cost_per_task_usd`` (mean over answered requests) and
  ``frontier_share`` (answered by the critical tier).

:class:`DriftMonitor` keeps the window in memory as a decision-log observer and exports these as
Prometheus gauges (computed at scrape time); ``tier-router monitor`` computes the same from the
decision log.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from router.config import MonitorConfig
from router.errors import RouterError
from router.telemetry import DecisionRecord
from router.tiers import TIERS

# Confidence = P(acceptable) of the tier the rule chose: anywhere in [0, 1] (per-tier
# probabilities need not sum to 1, and a price weight can choose an unlikely cheap tier).
CONFIDENCE_EDGES: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))
# Shares below this count as this in the PSI: an empty bin must not make it infinite.
PSI_FLOOR = 1e-4
PSI_SHIFT = 0.25  # above this a distribution has shifted (the alert rules' threshold)


class DriftReferenceError(RouterError):
    """A model's stored reference distribution is missing or malformed."""


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over bins of two share vectors."""
    e = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), PSI_FLOOR)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def confidence_shares(confidence: Sequence[float], weights: Sequence[float] | None = None,
                      edges: Sequence[float] = CONFIDENCE_EDGES) -> list[float]:
    """Weighted share of ``confidence`` values per bin of ``edges`` (ends included)."""
    values = np.clip(np.asarray(confidence, dtype=float), edges[0], edges[-1])
    counts, _ = np.histogram(values, bins=np.asarray(edges), weights=weights)
    total = counts.sum()
    return (counts / total).tolist() if total > 0 else [0.0] * (len(edges) - 1)


def tier_shares(tiers: Iterable[str | None], weights: Sequence[float] | None = None
                ) -> dict[str, float]:
    """Weighted share of each tier among ``tiers`` (None entries are skipped)."""
    totals = dict.fromkeys(TIERS, 0.0)
    for index, tier in enumerate(tiers):
        if tier in totals:
            totals[tier] += 1.0 if weights is None else float(weights[index])
    total = sum(totals.values())
    return {tier: (value / total if total else 0.0) for tier, value in totals.items()}


def reference_distribution(confidence: np.ndarray, chosen: np.ndarray, weights: np.ndarray,
                           escalated: np.ndarray, overridden: np.ndarray,
                           source: str) -> dict[str, Any]:
    """The reference of a model at its operating point, as the decision log will see it:
    ``confidence`` (n,) the P of the tier the rule chose (the record's ``confidence``),
    ``chosen`` (n,) that tier's index in TIERS (the record's ``predicted_tier``), ``weights``
    (n,) row weights (undoing the split's tail boost), ``escalated`` / ``overridden`` (n,)
    booleans: the gate escalated the row / an override rule matched it."""
    w = np.asarray(weights, dtype=float)
    escalated = np.asarray(escalated, dtype=bool)
    overridden = np.asarray(overridden, dtype=bool)
    predicted = [TIERS[int(i)] for i in np.asarray(chosen)]
    return {"source": source, "rows": len(confidence),
            "confidence_edges": list(CONFIDENCE_EDGES),
            "confidence": confidence_shares(np.asarray(confidence, dtype=float), w),
            "tiers": tier_shares(predicted, w),
            # over the rows the gate decides: an overridden request never reaches it
            "gate_escalation_rate": (float(np.average(escalated[~overridden],
                                                      weights=w[~overridden]))
                                     if (~overridden).any() else 0.0),
            "override_rate": float(np.average(overridden, weights=w))}


def check_reference(reference: Any) -> Mapping[str, Any]:
    """``reference`` validated; raises :class:`DriftReferenceError` saying what is wrong."""
    if not isinstance(reference, Mapping):
        raise DriftReferenceError("the model carries no reference distribution (re-run calibrate)")
    try:
        edges = [float(x) for x in reference["confidence_edges"]]
        shares = [float(x) for x in reference["confidence"]]
        tiers = {str(k): float(v) for k, v in reference["tiers"].items()}
        rates = [float(reference[k]) for k in ("gate_escalation_rate", "override_rate")]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DriftReferenceError(f"malformed reference distribution: {exc!r}") from None
    if len(shares) != len(edges) - 1 or any(b <= a for a, b in pairwise(edges)):
        raise DriftReferenceError("reference confidence needs increasing edges and one share "
                                  "per bin")
    if set(tiers) != set(TIERS):
        raise DriftReferenceError(f"reference tiers must be {list(TIERS)}, got {sorted(tiers)}")
    if not all(math.isfinite(x) and x >= 0 for x in [*shares, *tiers.values(), *rates]):
        raise DriftReferenceError("reference shares and rates must be finite and non-negative")
    return reference


@dataclass(frozen=True)
class _Seen:
    """What the window keeps of one decision record."""

    confidence: float | None
    predicted_tier: str | None
    gated: bool  # the gate decided it (no override, pin or cache hit)
    gate_escalated: bool
    escalated: bool
    overridden: bool
    cache_hit: bool
    cost_usd: float | None
    final_tier: str | None


def _seen(record: DecisionRecord) -> _Seen:
    cascaded = record.extra.get("escalation_reason") == "cascade"
    gate = record.gate_action == "escalate"
    cost = record.cost_usd if record.status == "ok" else None
    return _Seen(record.confidence, record.predicted_tier, record.gate_action is not None, gate,
                 gate or cascaded,
                 record.override_rule is not None, record.cache_status in ("exact", "semantic"),
                 cost if cost is None or math.isfinite(cost) else None, record.final_tier)


def _stats(seen: Sequence[_Seen], reference: Mapping[str, Any] | None) -> dict[str, Any]:
    classified = [s for s in seen if s.predicted_tier is not None]
    gated = [s for s in seen if s.gated]
    answered = [s for s in seen if s.cost_usd is not None]
    n = len(seen)
    out: dict[str, Any] = {
        "requests": n, "classified": len(classified),
        "escalation_rate": sum(s.escalated for s in seen) / n if n else math.nan,
        "gate_escalation_rate": (sum(s.gate_escalated for s in gated) / len(gated)
                                 if gated else math.nan),
        "override_rate": sum(s.overridden for s in seen) / n if n else math.nan,
        "cache_hit_rate": sum(s.cache_hit for s in seen) / n if n else math.nan,
        "cost_per_task_usd": (sum(s.cost_usd for s in answered) / len(answered)  # type: ignore[misc]
                              if answered else math.nan),
        "frontier_share": (sum(s.final_tier == TIERS[-1] for s in answered) / len(answered)
                           if answered else math.nan),
        "confidence_psi": math.nan, "tier_psi": math.nan,
    }
    if reference is not None and classified:
        edges = reference["confidence_edges"]
        out["confidence_psi"] = psi(reference["confidence"], confidence_shares(
            [s.confidence for s in classified if s.confidence is not None], edges=edges))
        actual = tier_shares(s.predicted_tier for s in classified)
        out["tier_psi"] = psi([reference["tiers"][t] for t in TIERS],
                              [actual[t] for t in TIERS])
        out["reference_gate_escalation_rate"] = float(reference["gate_escalation_rate"])
    return out


def window_stats(records: Iterable[DecisionRecord],
                 reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """The module docstring's figures over ``records`` (NaN where the window has nothing to
    measure; the PSIs are NaN without a reference)."""
    return _stats([_seen(r) for r in records], reference)


GAUGES: Mapping[str, str] = {
    "confidence_psi": "Population stability index of classifier confidence vs the model's "
                      "reference",
    "tier_psi": "Population stability index of the predicted-tier mix vs the model's reference",
    "escalation_rate": "Share of requests sent above the predicted tier (gate or cascade)",
    "gate_escalation_rate": "Share of the requests the gate decided that it escalated",
    "reference_gate_escalation_rate": "The gate's escalation share on the model's reference",
    "override_rate": "Share of requests routed by a domain override",
    "cache_hit_rate": "Share of requests answered from the cache",
    "cost_per_task_usd": "Mean provider cost of an answered request, USD",
    "frontier_share": "Share of answered requests answered by the frontier tier",
    "requests": "Decisions in the monitoring window",
}


class DriftMonitor:
    """The last ``config.window`` decisions, as a decision-log observer; gauges on a registry.

    Gauges read NaN until the window holds ``config.min_requests`` decisions (a handful of
    requests says nothing about drift). ``reference``: the serving model's stored reference,
    or None (then the PSIs stay NaN). Swap it with :meth:`set_reference` on a model reload.
    """

    def __init__(self, config: MonitorConfig, reference: Mapping[str, Any] | None = None,
                 registry: Any = None) -> None:
        self.config = config
        self._reference = check_reference(reference) if reference is not None else None
        self._window: deque[_Seen] = deque(maxlen=config.window)
        self._lock = threading.Lock()
        if registry is not None:
            from prometheus_client import Gauge

            for name, help_text in GAUGES.items():
                gauge = Gauge(f"tier_router_window_{name}", help_text, registry=registry)
                gauge.set_function(lambda name=name: self.value(name))

    def set_reference(self, reference: Mapping[str, Any] | None) -> None:
        """Compare with another model's reference from now on (the window is kept)."""
        self._reference = check_reference(reference) if reference is not None else None

    def observe(self, record: DecisionRecord) -> None:
        """Add one finished request. Cheap; safe from any thread."""
        seen = _seen(record)
        with self._lock:
            self._window.append(seen)

    def stats(self) -> dict[str, Any]:
        """:func:`window_stats` of the current window."""
        with self._lock:
            seen = list(self._window)
        return _stats(seen, self._reference)

    def value(self, name: str) -> float:
        stats = self.stats()
        if name == "requests":
            return float(stats["requests"])
        if stats["requests"] < self.config.min_requests:
            return math.nan
        return float(stats.get(name, math.nan))
