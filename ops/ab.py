"""Threshold A/B tests from the decision log: live comparison and offline replay.

:func:`compare` reads the records of a running test (each carries its ``variant``) and compares
every variant with the first (the control: the first variant in the config, else the first in
name order) on

* ``cost_per_task_usd``: mean provider cost of the answered requests (cascades count every call,
  cache hits count 0);
* ``escalation_rate``: share of requests sent above the predicted tier by the gate or a cascade;
* ``quality``: share of rated requests rated positive (``/v1/feedback``).

Each difference (variant - control) gets a 95% bootstrap interval, resampling requests within
each arm. The verdict is plain words: ``not enough data`` while an arm has fewer than
``min_requests`` requests (quality also needs ``min_rated`` rated ones), else which variant is
better -- one that is better on some metric and worse on none, each judged by whether its interval
excludes zero -- or a trade-off, or no detectable difference.

:func:`replay` is the offline comparison: the logged classifier scores of past traffic gated
again under each variant's operating point, giving each variant's tier mix, gate escalation rate and
estimated cost per task (the answer's recorded tokens priced at the tier the variant would have
chosen first). Quality cannot be replayed from a log without outcomes; it says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from router.config import ABVariant, RouterConfig
from router.gate import OperatingPoint, decide, resolve_point
from router.telemetry import DecisionRecord
from router.tiers import TIERS

METRICS: Mapping[str, int] = {"cost_per_task_usd": -1, "escalation_rate": -1, "quality": +1}
"""Each metric and the direction that is better (+1: higher)."""


def rating(record: DecisionRecord) -> float | None:
    """1.0 for positive feedback, 0.0 for negative, None when unrated or unreadable."""
    if not record.feedback:
        return None
    try:
        value = json.loads(record.feedback).get("rating")
    except (ValueError, AttributeError):
        return None
    return {"positive": 1.0, "negative": 0.0}.get(value)


def escalated(record: DecisionRecord) -> bool:
    """Sent above the predicted tier by the gate or by a cascade step."""
    return record.gate_action == "escalate" or \
        record.extra.get("escalation_reason") == "cascade"


def _samples(records: Sequence[DecisionRecord]) -> dict[str, np.ndarray]:
    answered = [r for r in records if r.status == "ok" and r.cost_usd is not None
                and math.isfinite(r.cost_usd)]
    rated = [x for x in (rating(r) for r in records) if x is not None]
    return {"cost_per_task_usd": np.array([r.cost_usd for r in answered], dtype=float),
            "escalation_rate": np.array([escalated(r) for r in records], dtype=float),
            "quality": np.array(rated, dtype=float)}


def _interval(control: np.ndarray, other: np.ndarray, reps: int,
              rng: np.random.Generator) -> list[float]:
    """95% bootstrap interval of mean(other) - mean(control), each arm resampled alone."""
    a = rng.integers(0, len(control), (reps, len(control)))
    b = rng.integers(0, len(other), (reps, len(other)))
    diffs = other[b].mean(axis=1) - control[a].mean(axis=1)
    return [float(x) for x in np.percentile(diffs, [2.5, 97.5])]


def compare(records: Sequence[DecisionRecord], *, order: Sequence[str] = (),
            min_requests: int = 200, min_rated: int = 50, bootstrap: int = 2000,
            seed: int = 0) -> dict[str, Any]:
    """The live comparison (module docstring). ``order``: variant names, control first (the
    config's order); variants not named follow in name order. Records without a variant are
    ignored. Returns ``{"variants": {name: {"requests", "rated", METRIC...}}, "control",
    "comparisons": {name: {METRIC: {"difference", "ci95", "better"}}}, "verdict"}``."""
    arms: dict[str, list[DecisionRecord]] = {}
    for record in records:
        if record.variant is not None:
            arms.setdefault(record.variant, []).append(record)
    names = [n for n in order if n in arms] + sorted(n for n in arms if n not in order)
    report: dict[str, Any] = {"variants": {}, "control": names[0] if names else None,
                              "comparisons": {}, "min_requests": min_requests,
                              "min_rated": min_rated}
    samples = {name: _samples(arms[name]) for name in names}
    for name in names:
        report["variants"][name] = {
            "requests": len(arms[name]), "rated": len(samples[name]["quality"]),
            **{metric: (float(values.mean()) if len(values) else None)
               for metric, values in samples[name].items()}}
    if len(names) < 2:
        report["verdict"] = (f"not enough data: {len(names)} variant(s) in the log; a test "
                             f"needs two")
        return report
    short = [n for n in names if len(arms[n]) < min_requests]
    if short:
        report["verdict"] = ("not enough data: " + ", ".join(
            f"{n} has {len(arms[n])} requests" for n in short)
            + f"; each variant needs at least {min_requests}")
        return report
    rng = np.random.default_rng(seed)
    control = names[0]
    verdicts = []
    for name in names[1:]:
        row: dict[str, Any] = {}
        for metric, direction in METRICS.items():
            base, other = samples[control][metric], samples[name][metric]
            need = min_rated if metric == "quality" else 1
            if len(base) < need or len(other) < need:
                row[metric] = {"difference": None, "ci95": None, "better": None,
                               "note": f"fewer than {need} samples in an arm"}
                continue
            low, high = _interval(base, other, bootstrap, rng)
            # +1: the variant is better than the control, -1 worse, 0 not distinguishable
            sign = 0 if low <= 0 <= high else (1 if low > 0 else -1) * direction
            row[metric] = {"difference": float(other.mean() - base.mean()),
                           "ci95": [low, high],
                           "better": {1: name, -1: control, 0: None}[sign]}
        report["comparisons"][name] = row
        verdicts.append(_verdict(control, name, row))
    report["verdict"] = "; ".join(verdicts)
    return report


def _verdict(control: str, name: str, row: Mapping[str, Mapping[str, Any]]) -> str:
    wins = [m for m, r in row.items() if r["better"] == name]
    losses = [m for m, r in row.items() if r["better"] == control]
    unknown = [m for m, r in row.items() if r["difference"] is None]
    tail = f" ({', '.join(unknown)}: not enough data)" if unknown else ""
    if wins and not losses:
        return f"{name} is better than {control} on {', '.join(wins)}, worse on nothing{tail}"
    if losses and not wins:
        return f"{control} is better than {name} on {', '.join(losses)}, worse on nothing{tail}"
    if wins and losses:
        return (f"trade-off: {name} is better on {', '.join(wins)} and worse on "
                f"{', '.join(losses)} than {control}{tail}")
    return f"no detectable difference between {name} and {control}{tail}"


def replay(records: Sequence[DecisionRecord], variants: Sequence[ABVariant],
           config: RouterConfig, model_point: OperatingPoint | None) -> dict[str, Any]:
    """The offline comparison (module docstring) over the records the gate decided (classifier
    scores and the expected prices the decision weighed present; no override, pin or cache
    hit). ``model_point``: what a variant without ``gate`` uses (the model's fitted point);
    needed only for such a variant."""
    gated = [r for r in records if r.scores and r.gate_action is not None
             and (r.extra or {}).get("expected_cost_usd")]
    out: dict[str, Any] = {"requests": len(gated), "variants": {},
                           "skipped_without_prices": sum(
                               1 for r in records if r.scores and r.gate_action is not None
                               and not (r.extra or {}).get("expected_cost_usd")),
                           "quality": "not replayable: the log holds feedback on the tier that "
                                      "answered, not outcomes for the others"}
    for variant in variants:
        if variant.gate is not None:
            point = resolve_point(variant.gate, variant=(variant.name, variant.gate))
        elif model_point is not None:
            point = model_point
        else:
            raise ValueError(f"variant {variant.name!r} uses the model's operating point: name "
                             f"the model (--model) to replay it")
        tiers, costs, escalations = [], [], 0
        for record in gated:
            allowed = (record.extra or {}).get("allowed")
            decision = decide(record.scores, record.extra["expected_cost_usd"], point,
                              None if allowed is None else {t: t in allowed for t in TIERS})
            tiers.append(decision.target_tier)
            escalations += decision.action == "escalate"
            cost = config.list_price(decision.target_tier, record.prompt_tokens,
                                     record.completion_tokens)
            if cost is not None:
                costs.append(cost)
        n = len(gated)
        out["variants"][variant.name] = {
            "thresholds": point.as_dict(),
            "gate_escalation_rate": escalations / n if n else None,
            "tier_share": {t: (tiers.count(t) / n if n else None) for t in TIERS},
            "est_cost_per_task_usd": float(np.mean(costs)) if costs else None,
            "priced_requests": len(costs)}
    return out

