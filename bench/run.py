"""``tier-router bench``'s arithmetic: every approach on one workload's observations, the
val-fixed curves, AIQ, the paired bootstrap intervals and the headline figures.

Rows: the workload's test fold (:mod:`bench.main` chooses them); curves choose their knob
settings on the workload's *validation* fold, observed the same way. Nothing here is fitted on
the rows it reports, and nothing is refit per workload:

* ``hybrid`` is the shipped champion at its stored operating point (``policy.point``: lambda,
  trust, escalate, score threshold, fitted once by training's calibrate stage on a validation
  replay of the whole policy), overrides forced, the cascade on, run by
  :func:`router.gate.replay`. ``routing_only`` is the same with the cascade off;
  ``hybrid_no_overrides`` (two-tier data) the same without overrides; ``hybrid_no_medium``
  (three-tier data, RouterBench) the same point with medium disallowed -- does medium pay?
* ``cascade_only``: no classifier; cheapest tier first, escalate on a failed check, at the
  stored score threshold.
* ``frontier_only`` and the other single tiers; ``random_mix`` (cheapest tier or frontier at
  random) and ``best_fixed_mix`` (the zero router: the best random mix of single tiers), both at
  the hybrid's cost; ``per_category_mix`` (one tier per category, fitted on training rows);
  ``oracle`` (the cheapest tier that was right).

Curves (val-fixed, see :mod:`bench.approaches`): ``hybrid``, ``routing_only`` and their variants
vary ``price_weight`` alone over ``PRICE_WEIGHTS`` (0 and 60 geometric steps from 1 to 1e6
quality per USD, plus the stored value), every other knob at its stored value; ``cascade_only``
varies the score threshold over ``SCORE_THRESHOLDS``; ``per_category_mix`` the cost weight over
``COST_WEIGHTS`` (one rule per weight, each fitted on training rows); ``best_fixed_mix`` which
single tiers to mix; ``random_mix`` the frontier probability. The settings on the validation
upper envelope are kept; with no validation rows (a PATH workload) every grid point is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.approaches import (
    TOP,
    Curve,
    Observations,
    Run,
    Sweep,
    aiq,
    apply_rule,
    bootstrap_aiq,
    cascade_only,
    endpoints,
    envelope_settings,
    hybrid,
    mixture,
    oracle,
    per_category_rule,
    share_curve,
    single_tier,
    val_fixed_curve,
    without_medium,
    x_at,
)
from router.classifier import DEFAULT_OUTPUT_TOKENS
from router.config import RouterConfig
from router.gate import OperatingPoint
from router.pricing import estimate_tokens, prompt_chars, tier_prices
from router.tiers import TIERS
from workloads import Workload, WorkloadRecord

logger = logging.getLogger(__name__)

REPORT_FORMAT = 2  # bench-docs renders this format; older reports are named as such
QUALITY_TARGET = 0.95  # "95% of frontier quality" (DESIGN.md headline and RouteLLM's metric)
# lambda (quality per USD): 0 buys the likeliest answer; per-request prices are ~1e-4..1e-2
# USD, so 1..1e6 runs from "price barely counts" to "always the cheapest allowed tier".
PRICE_WEIGHTS = np.concatenate([[0.0], np.geomspace(1.0, 1e6, 60)])
SCORE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 41), 3)  # cascade_only, step 0.025
COST_WEIGHTS = np.concatenate([[0.0], np.geomspace(0.01, 10.0, 30)])  # per-category rules
MIX_PROBABILITIES = np.round(np.linspace(0.0, 1.0, 21), 2)  # random_mix's frontier share
DIFFERENCE_BASES = ("best_fixed_mix", "per_category_mix", "routing_only", "cascade_only",
                    "random_mix")


@dataclass(frozen=True)
class BenchSettings:
    """What the bench runs: the stored operating point and the product config's cascade."""

    point: OperatingPoint
    max_calls: int
    cascade: bool = True  # the config's cascade.enabled (the service cascades only then)
    bootstrap: int = 500
    seed: int = 0


def summarise(run: Run, *, n_boot: int, seed: int) -> dict[str, Any]:
    """The JSON row of one approach (a bootstrap interval on its quality)."""
    known = np.isfinite(run.correct)
    correct = run.correct[known]
    rng = np.random.default_rng(seed)
    boots = [float(correct[rng.integers(0, len(correct), len(correct))].mean())
             for _ in range(n_boot)] if len(correct) else [float("nan")]
    return {
        "cost_per_task": float(run.cost.mean()),
        "p95_latency_ms": float(np.percentile(run.latency_ms, 95)),
        "p50_latency_ms": float(np.percentile(run.latency_ms, 50)),
        "quality": float(correct.mean()) if len(correct) else None,
        "quality_ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
        "escalation_rate": float(np.mean(run.escalated)),
        "frontier_call_share": float(np.mean(run.frontier)),
        "mean_calls": float(np.mean(run.calls)),
        "rows_with_known_quality": int(known.sum()),
    }


def group_summary(runs: Mapping[str, Run], groups: Sequence[str]) -> dict[str, Any]:
    """Per approach and group (e.g. the mixed workload's parts): rows, cost per task,
    quality, escalation rate, frontier-call share and p95 latency."""
    labels = np.asarray(groups)
    out: dict[str, Any] = {}
    for name, run in runs.items():
        out[name] = {}
        for group in sorted(set(groups)):
            mask = labels == group
            correct = run.correct[mask]
            known = np.isfinite(correct)
            out[name][group] = {
                "rows": int(mask.sum()), "cost_per_task": float(run.cost[mask].mean()),
                "quality": float(correct[known].mean()) if known.any() else None,
                "escalation_rate": float(np.mean(run.escalated[mask])),
                "frontier_call_share": float(np.mean(run.frontier[mask])),
                "p95_latency_ms": float(np.percentile(run.latency_ms[mask], 95))}
    return out


def training_table(workload: Workload, records: Sequence[WorkloadRecord], config: RouterConfig,
                   mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recorded correctness and cost (m, 3) of ``records`` (through ``mapping`` (3,)); costs
    estimated from the config's prices where the data records none (RouteLLM's)."""
    prices = tier_prices(config)
    correct = np.full((len(records), len(TIERS)), np.nan)
    cost = np.zeros((len(records), len(TIERS)))
    for i, record in enumerate(records):
        tokens = estimate_tokens(prompt_chars(record.turns))
        for j in range(len(TIERS)):
            tier = TIERS[mapping[j]]
            outcome = workload.tier_outcome(record, tier)
            if outcome is not None and outcome.correct is not None:
                correct[i, j] = float(outcome.correct)
            cost[i, j] = (outcome.cost_usd if outcome is not None and outcome.cost_usd is not None
                          else tokens * prices[tier][0] + DEFAULT_OUTPUT_TOKENS * prices[tier][1])
    return correct, cost


@dataclass(frozen=True)
class CategoryRules:
    """Per-category rules fitted on training rows: one per cost weight, and the chosen one."""

    rules: list[dict[str, int]]  # one per COST_WEIGHTS weight, cheapest-leaning last
    chosen: dict[str, int]
    weight: float
    weights: tuple[float, ...] = ()  # the cost weight of each rule (COST_WEIGHTS by default)


def fit_category_rules(categories: Sequence[str], correct: np.ndarray, cost: np.ndarray,
                       tiers: Sequence[int]) -> CategoryRules:
    """A rule per cost weight; the chosen one is the cheapest reaching QUALITY_TARGET x frontier
    quality on these (training) rows, else the best-quality one."""
    frontier_quality = float(np.nanmean(correct[:, TOP]))
    rows = np.arange(len(categories))
    rules, best = [], None
    for weight in COST_WEIGHTS:
        rule = per_category_rule(categories, correct, cost, tiers, float(weight))
        rules.append(rule)
        j = np.array([rule[c] for c in categories])
        quality = float(np.nanmean(correct[rows, j]))
        spend = float(cost[rows, j].mean())
        if quality >= QUALITY_TARGET * frontier_quality and (best is None or spend < best[0]):
            best = (spend, rule, float(weight))
    weights = tuple(float(w) for w in COST_WEIGHTS)
    if best is None:
        return CategoryRules(rules, rules[0], 0.0, weights)
    return CategoryRules(rules, best[1], best[2], weights)


def _mix_at(cheap: Run, dear: Run, cost: float) -> Run:
    """Cheapest tier or frontier at random, priced at ``cost`` (clipped to the two ends)."""
    c0, c1 = float(cheap.cost.mean()), float(dear.cost.mean())
    p = float(np.clip((cost - c0) / (c1 - c0), 0.0, 1.0)) if c1 > c0 else 1.0
    return mixture([cheap, dear], [1.0 - p, p])


def _best_fixed_at(singles: list[Run], cost: float) -> Run:
    """The best random mix of two single tiers at ``cost`` (on the singles' upper hull): the
    zero router, measured on the rows it reports (it has no knob that could overfit but the
    mix itself)."""
    points = [(float(r.cost.mean()), float(np.nanmean(r.correct)), r) for r in singles]
    best: tuple[float, Run] | None = None
    for a in points:
        for b in points:
            if a[0] <= cost <= b[0] or (a is b and abs(a[0] - cost) < 1e-15):
                p = 0.0 if b[0] == a[0] else (cost - a[0]) / (b[0] - a[0])
                quality = (1 - p) * a[1] + p * b[1]
                if best is None or quality > best[0]:
                    best = (quality, mixture([a[2], b[2]], [1 - p, p]))
    if best is None:  # cost outside the singles' range: the nearest single tier
        nearest = min(points, key=lambda pt: abs(pt[0] - cost))
        return nearest[2]
    return best[1]


def price_weight_grid(point: OperatingPoint) -> list[float]:
    """PRICE_WEIGHTS and the stored lambda (so the curve can pass through the stored point)."""
    return sorted({float(w) for w in PRICE_WEIGHTS} | {float(point.price_weight)})


def score_threshold_grid(point: OperatingPoint) -> list[float]:
    """SCORE_THRESHOLDS and the stored score threshold."""
    return sorted({float(s) for s in SCORE_THRESHOLDS} | {float(point.score_threshold)})


def sweeps_for(obs: Observations, settings: BenchSettings, category_rules: CategoryRules, *,
               two_tier: bool = False, medium_ablation: bool = False) -> dict[str, Sweep]:
    """Every curve's grid on ``obs`` (test or validation: the same settings in the same order,
    so indices kept on validation name the same settings on test)."""
    point, calls, on = settings.point, settings.max_calls, settings.cascade
    weights = price_weight_grid(point)

    def at(weight: float) -> OperatingPoint:
        return replace(point, price_weight=weight, source=f"{point.source}, lambda swept")

    lam = [{"price_weight": w} for w in weights]
    sweeps = {
        "hybrid": Sweep.of("hybrid", lam, lambda k: hybrid(
            obs, at(k["price_weight"]), max_calls=calls, cascade=on)),
        "routing_only": Sweep.of("routing_only", lam, lambda k: hybrid(
            obs, at(k["price_weight"]), max_calls=calls, cascade=False)),
    }
    if two_tier:
        sweeps["hybrid_no_overrides"] = Sweep.of("hybrid_no_overrides", lam, lambda k: hybrid(
            obs, at(k["price_weight"]), max_calls=calls, cascade=on, overrides=False))
    if medium_ablation:
        no_medium = without_medium(obs)
        sweeps["hybrid_no_medium"] = Sweep.of("hybrid_no_medium", lam, lambda k: hybrid(
            obs, at(k["price_weight"]), max_calls=calls, cascade=on, allowed=no_medium))
    sweeps["cascade_only"] = Sweep.of(
        "cascade_only", [{"score_threshold": s} for s in score_threshold_grid(point)],
        lambda k: cascade_only(obs, k["score_threshold"], max_calls=calls))
    cost_weights = category_rules.weights or tuple(range(len(category_rules.rules)))
    sweeps["per_category_mix"] = Sweep.of(
        "per_category_mix", [{"cost_weight": float(w), "rule": k}
                             for k, w in enumerate(cost_weights)],
        lambda k: apply_rule(obs, category_rules.rules[k["rule"]]))
    singles = {j: single_tier(obs, j) for j in obs.tiers}
    sweeps["best_fixed_mix"] = Sweep.of(
        "best_fixed_mix", [{"tier": TIERS[j]} for j in singles],
        lambda k: singles[TIERS.index(k["tier"])])
    ends = [singles[min(singles)], singles[TOP]]
    sweeps["random_mix"] = Sweep.of(
        "random_mix", [{"frontier_probability": float(p)} for p in MIX_PROBABILITIES],
        lambda k: mixture(ends, [1 - k["frontier_probability"], k["frontier_probability"]]))
    return sweeps


def _sweep_points(sweep: Sweep) -> dict[str, list[float]]:
    costs, qualities = sweep.points()
    return {"cost": costs.tolist(), "quality": qualities.tolist(),
            "frontier_share": sweep.shares().tolist()}


def _ratio(value: float | None, of: float) -> float | None:
    return None if value is None or not of else float(value / of)


def evaluate(obs: Observations, settings: BenchSettings, *, category_rules: CategoryRules,
             validation: Observations | None = None, two_tier: bool = False,
             medium_ablation: bool = False, groups: Sequence[str] | None = None
             ) -> dict[str, Any]:
    """Every approach at its operating point, the val-fixed curves, their AIQ, the paired
    bootstrap intervals of the AIQ differences and the headline figures.

    ``obs``: the test rows; ``validation``: the validation rows the curves keep their settings
    on (None: every grid point is kept, and the report says so). ``two_tier``: add the runs
    without overrides and the frontier-call shares; ``medium_ablation``: add
    ``hybrid_no_medium`` and its AIQ difference from ``hybrid``; ``groups`` (n,): a label per
    test row (the mixed workload's parts) to break the stored-point runs down by."""
    point, calls, on = settings.point, settings.max_calls, settings.cascade
    tiers = obs.tiers
    singles = {j: single_tier(obs, j) for j in tiers}
    cheapest, frontier = singles[tiers[0]], singles[TOP]
    runs: dict[str, Run] = {"frontier_only": frontier}
    for j in tiers:
        if j != TOP:
            runs[f"{TIERS[j]}_only"] = singles[j]
    runs["hybrid"] = hybrid(obs, point, max_calls=calls, cascade=on)
    runs["routing_only"] = hybrid(obs, point, max_calls=calls, cascade=False)
    if two_tier:
        runs["hybrid_no_overrides"] = hybrid(obs, point, max_calls=calls, cascade=on,
                                             overrides=False)
    if medium_ablation:
        runs["hybrid_no_medium"] = hybrid(obs, point, max_calls=calls, cascade=on,
                                          allowed=without_medium(obs))
    runs["cascade_only"] = cascade_only(obs, point.score_threshold, max_calls=calls)
    target_cost = float(runs["hybrid"].cost.mean())
    runs["random_mix"] = _mix_at(cheapest, frontier, target_cost)
    runs["best_fixed_mix"] = _best_fixed_at(list(singles.values()), target_cost)
    runs["per_category_mix"] = apply_rule(obs, category_rules.chosen)
    runs["oracle"] = oracle(obs)

    flags = {"two_tier": two_tier, "medium_ablation": medium_ablation}
    sweeps = sweeps_for(obs, settings, category_rules, **flags)
    low, high = endpoints(cheapest, frontier)
    if validation is not None and len(validation):
        val_sweeps = sweeps_for(validation, settings, category_rules, **flags)
        val_singles = {j: single_tier(validation, j) for j in validation.tiers}
        val_low, val_high = endpoints(val_singles[min(val_singles)], val_singles[TOP])
        keep = {name: envelope_settings(val_sweeps[name], val_low, val_high)
                for name in sweeps}
        protocol = (f"val-fixed: settings on the upper envelope of {len(validation)} "
                    "validation rows, their test points joined linearly (no envelope on test)")
    else:
        val_sweeps = {}
        keep = {name: list(range(len(sweep.knobs))) for name, sweep in sweeps.items()}
        protocol = ("no validation rows: every grid point's test point, joined linearly "
                    "(no envelope on test)")
    logger.info("curves: %s settings kept of %s; bootstrapping AIQ",
                {name: len(k) for name, k in keep.items()},
                {name: len(s.knobs) for name, s in sweeps.items()})
    curves = {name: val_fixed_curve(sweep, keep[name], low, high)
              for name, sweep in sweeps.items()}
    aiqs = {name: aiq(curve, low[0], high[0]) for name, curve in curves.items()}
    boot = bootstrap_aiq(sweeps, keep, frontier, cheapest, n=settings.bootstrap,
                         seed=settings.seed)
    bases = [*DIFFERENCE_BASES, *(["hybrid_no_medium"] if medium_ablation else [])]
    differences = {}
    for base in bases:
        diff = boot["hybrid"] - boot[base]
        differences[f"hybrid_minus_{base}"] = {
            "aiq": aiqs["hybrid"] - aiqs[base],
            "ci95": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))]}

    approaches = {name: summarise(run, n_boot=settings.bootstrap, seed=settings.seed)
                  for name, run in runs.items()}
    frontier_quality, frontier_cost = high[1], high[0]
    target = QUALITY_TARGET * frontier_quality
    stored = approaches["hybrid"]
    report: dict[str, Any] = {
        "report_format": REPORT_FORMAT,
        "rows": len(obs),
        "validation_rows": 0 if validation is None else len(validation),
        "tiers": [TIERS[j] for j in tiers],
        "point": {**point.as_dict(), "source": point.source, "max_calls": calls,
                  "cascade": on},
        "approaches": approaches,
        "curve_protocol": protocol,
        "grids": {"price_weight": price_weight_grid(point),
                  "score_threshold": score_threshold_grid(point),
                  "cost_weight": [k["cost_weight"] for k in sweeps["per_category_mix"].knobs]},
        "aiq": {**aiqs, "differences": differences, "cost_range": [low[0], high[0]],
                "bootstrap": settings.bootstrap},
        "curves": {name: {"cost": c.cost.tolist(), "quality": c.quality.tolist(),
                          "kept": [sweeps[name].knobs[k] for k in keep[name]]}
                   for name, c in curves.items()},
        "sweeps": {name: {"knobs": s.knobs, "test": _sweep_points(s),
                          "validation": (_sweep_points(val_sweeps[name]) if val_sweeps
                                         else None)}
                   for name, s in sweeps.items()},
        "headline": {
            "cost_ratio_at_95pct_quality": _ratio(x_at(curves["hybrid"], target),
                                                  frontier_cost),
            "stored_point": {
                "cost_ratio": _ratio(stored["cost_per_task"], frontier_cost),
                "quality_ratio": _ratio(stored["quality"], frontier_quality),
                "escalation_rate": stored["escalation_rate"],
                "frontier_call_share": stored["frontier_call_share"],
                "p95_latency_ratio": _ratio(stored["p95_latency_ms"],
                                            approaches["frontier_only"]["p95_latency_ms"])},
        },
    }
    if groups is not None:
        report["by_group"] = group_summary(
            {name: runs[name] for name in ("hybrid", "routing_only", "cascade_only",
                                           "frontier_only")}, groups)
    if two_tier:
        qc = low[1]

        def share(name: str) -> float | None:
            return x_at(share_curve(sweeps[name], keep[name], qc, frontier_quality), target)

        report["frontier_share_for_95pct_quality"] = {
            "with_overrides": share("hybrid"), "without_overrides": share("hybrid_no_overrides"),
            "per_category_mix": share("per_category_mix"), "random_mix": share("random_mix")}
    return report


def write_plots(report: dict[str, Any], folder: Path, name: str) -> list[Path]:
    """The val-fixed cost/quality curves as ``folder/<name>.png``, stored points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 5))
    for approach, curve in report["curves"].items():
        ax.plot(curve["cost"], curve["quality"], marker=".", label=f"{approach} "
                f"(AIQ {report['aiq'][approach]:.3f})")
    for approach, row in report["approaches"].items():
        if row["quality"] is None:
            continue
        ax.scatter([row["cost_per_task"]], [row["quality"]], marker="x")
        ax.annotate(approach, (row["cost_per_task"], row["quality"]), fontsize=7)
    ax.set_xlabel("cost per task (USD)")
    ax.set_ylabel("quality (share correct)")
    ax.set_title(f"{name}: {report['rows']} test rows, val-fixed curves")
    ax.legend(fontsize=7, loc="lower right")
    path = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


__all__ = ["BenchSettings", "CategoryRules", "Curve", "evaluate", "fit_category_rules",
           "group_summary", "summarise", "sweeps_for", "training_table", "write_plots"]
