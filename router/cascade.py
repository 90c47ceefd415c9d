"""The cascade's rules: which tier to call next after a low-scored answer, and when to stop.

One definition shared by the request path (:mod:`router.policy`) and the benchmark, so that the
benchmark's cascade is the one the router runs.

* A cascade starts at a tier (the gate's predicted tier, or the cheapest tier for a pure
  cascade), calls it, scores the answer and escalates while the score is below the threshold.
* At most ``max_calls`` calls in all. The last allowed call goes to the critical tier: a cascade
  that is still unsure after ``max_calls - 1`` answers ends on the frontier, never on a tier
  between (with ``max_calls=2`` a simple answer that scores low goes to critical, not medium).
* A request whose latency budget the cascade would overrun skips it: it goes straight to the tier
  the gate names (see :func:`fits_budget`).
"""

from __future__ import annotations

from router.tiers import TIERS, Tier

CRITICAL: Tier = TIERS[-1]


def next_tier(current: Tier, calls_made: int, max_calls: int) -> Tier | None:
    """The tier to call after a low-scored answer from ``current``; None = stop here.

    ``calls_made``: calls so far, including the one to ``current`` (>= 1).
    """
    if current == CRITICAL or calls_made >= max_calls:
        return None
    if calls_made == max_calls - 1:  # the last call allowed: make it count
        return CRITICAL
    return TIERS[TIERS.index(current) + 1]


def should_escalate(score: float, threshold: float) -> bool:
    """A response scored below ``threshold`` (P(correct) in [0, 1]) is escalated."""
    return score < threshold


def fits_budget(expected_cascade_ms: float, budget_ms: float | None) -> bool:
    """Whether a cascade expected to take ``expected_cascade_ms`` fits a budget (None = none)."""
    return budget_ms is None or expected_cascade_ms <= budget_ms
