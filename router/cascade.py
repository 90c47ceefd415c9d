"""The cascade's latency rule: whether a request's budget leaves room for a cascade.

Which tier a cascade calls after a failed check is the decision rule's business
(:func:`router.gate.escalation_after_failure`, one implementation for the service, training's
replay and the benchmark); this module only holds the budget test the request path applies
before it starts one. A request whose latency budget the cascade would overrun skips it: it goes
straight to the tier the rule chose.
"""

from __future__ import annotations

from router.tiers import TIERS, Tier

CRITICAL: Tier = TIERS[-1]


def fits_budget(expected_cascade_ms: float, budget_ms: float | None) -> bool:
    """Whether a cascade expected to take ``expected_cascade_ms`` fits a budget (None = none)."""
    return budget_ms is None or expected_cascade_ms <= budget_ms
