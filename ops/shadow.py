"""Shadow-mode report: how the challenger's would-be decisions compare with the live ones.

Reads the ``shadow`` field of decision records (:mod:`router.shadow`). Figures, over the
requests the challenger scored:

* ``agreement``: share where the challenger would have sent the request to the same tier first;
  ``same_prediction``: share with the same predicted tier;
* ``gate_escalation_rate`` live and would-be, over the requests the gate decided;
* ``est_cost_per_task_usd`` live and would-be: each answer's recorded tokens priced at the live
  and at the would-be tier (one footing for both; not the billed cost), and their ratio;
* ``target_tiers``: live x would-be counts (``{live: {would_be: n}}``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from router.telemetry import DecisionRecord
from router.tiers import TIERS


def report(records: Sequence[DecisionRecord]) -> dict[str, Any]:
    """The module docstring's figures, per challenger version and overall (``all``)."""
    scored = [r for r in records if r.shadow is not None]
    versions = sorted({str(r.shadow.get("model_version")) for r in scored})
    out: dict[str, Any] = {"requests": len(records), "scored": len(scored),
                           "by_version": {v: _figures([r for r in scored if str(
                               r.shadow.get("model_version")) == v]) for v in versions}}
    out["all"] = _figures(scored)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _figures(records: Sequence[DecisionRecord]) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r.shadow]
    gated = [r for r in ok if r.gate_action is not None]
    priced = [r for r in ok if r.shadow.get("est_cost_usd") is not None
              and r.shadow.get("live_est_cost_usd") is not None]
    live_cost = _mean([r.shadow["live_est_cost_usd"] for r in priced])
    would_cost = _mean([r.shadow["est_cost_usd"] for r in priced])
    pairs = Counter((r.target_tier, r.shadow.get("target_tier")) for r in ok)
    return {
        "scored": len(records), "errors": len(records) - len(ok),
        "agreement": _mean([float(bool(r.shadow.get("agrees"))) for r in ok]),
        "same_prediction": _mean([float(bool(r.shadow.get("same_prediction"))) for r in ok]),
        "gate_escalation_rate": {
            "live": _mean([float(r.gate_action == "escalate") for r in gated]),
            "would_be": _mean([float(r.shadow.get("gate_action") == "escalate")
                               for r in gated])},
        "est_cost_per_task_usd": {
            "live": live_cost, "would_be": would_cost,
            "ratio": (would_cost / live_cost) if live_cost and would_cost is not None
            else None, "priced": len(priced)},
        "target_tiers": {live: {would: pairs[(live, would)] for would in TIERS
                                if pairs[(live, would)]}
                         for live in TIERS if any(pairs[(live, w)] for w in TIERS)},
    }
