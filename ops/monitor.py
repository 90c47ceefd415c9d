"""``tier-router monitor``: drift and health over a window of the decision log, judged by the same
Prometheus alert rules the service's gauges feed (``docs/alerts/tier-router.rules.yml``).

The rules' expressions over ``tier_router_window_<figure>`` gauges are evaluated on
:func:`router.monitor.window_stats` of the window: the forms ``GAUGE > NUMBER`` and
``GAUGE > GAUGE + NUMBER`` (and ``<``). Other expressions (``increase(...)`` over counters) need
Prometheus' history and are listed as not evaluated. ``for:`` durations are Prometheus' business:
here a rule fires when its condition holds over the window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from router.errors import RouterError
from router.monitor import window_stats
from router.telemetry import DecisionRecord

GAUGE_PREFIX = "tier_router_window_"
_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_EXPR = re.compile(rf"^\s*{GAUGE_PREFIX}(?P<left>\w+)\s*(?P<op>[<>])\s*"
                   rf"(?:{GAUGE_PREFIX}(?P<right>\w+)\s*(?P<sign>[-+])\s*)?(?P<number>{_NUMBER})"
                   rf"\s*$")


class RulesError(RouterError):
    """The alert rules file cannot be read or has no rules."""


def load_rules(path: Path) -> list[dict[str, Any]]:
    """The rules of a Prometheus rules file: ``[{"alert", "expr", ...}]``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        rules = [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise RulesError(f"{path}: not a Prometheus rules file: {exc}") from None
    if not rules:
        raise RulesError(f"{path}: no alerting rules")
    return rules


def evaluate(rule: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    """``{"alert", "expr", "evaluated", "firing", "value", "bound"}`` for one rule; ``value``
    and ``bound`` are the two sides of the comparison (NaN: no data, never firing)."""
    out: dict[str, Any] = {"alert": rule["alert"], "expr": rule["expr"]}
    match = _EXPR.match(str(rule["expr"]))
    if match is None or match["left"] not in stats or (
            match["right"] is not None and match["right"] not in stats):
        return {**out, "evaluated": False, "firing": None,
                "note": "needs Prometheus (not a window gauge comparison)"}
    value = float(stats[match["left"]])
    bound = float(match["number"])
    if match["right"] is not None:
        bound = float(stats[match["right"]]) + (bound if match["sign"] == "+" else -bound)
    firing = (not math.isnan(value) and not math.isnan(bound)
              and (value > bound if match["op"] == ">" else value < bound))
    return {**out, "evaluated": True, "firing": firing, "value": value, "bound": bound}


def report(records: Sequence[DecisionRecord], reference: Mapping[str, Any] | None,
           rules: Sequence[Mapping[str, Any]], window: int) -> dict[str, Any]:
    """The last ``window`` of ``records`` (oldest first): figures, and each rule's result.
    ``reference``: the serving model's stored reference (None: no PSIs)."""
    recent = list(records)[-window:]
    stats = window_stats(recent, reference)
    results = [evaluate(rule, stats) for rule in rules]
    return {"window": {"requests": len(recent),
                       "from": recent[0].created_at.isoformat() if recent else None,
                       "to": recent[-1].created_at.isoformat() if recent else None},
            "figures": stats,
            "firing": [r["alert"] for r in results if r["firing"]],
            "rules": results}
