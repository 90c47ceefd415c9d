"""``tier-router bench``: every approach on one workload, with intervals, curves and AIQ.

Rows: for a built-in workload, the rows of the champion's test fold (the split stage's
``test.parquet``, so nothing the classifier or its thresholds were fitted on); for a PATH, every
row. Thresholds come from the models (fitted on validation folds) or the config; nothing here is
fitted on the rows it reports, except the per-approach curves' hulls, which every approach gets
alike. ``per_category_mix`` is fitted on the workload's other rows (or, for a PATH, by two-fold
cross-fitting).

Approaches (see :mod:`bench.approaches`): ``frontier_only``; ``routing_only`` (overrides, the
classifier and the gate; a cascade decision goes to the predicted tier); ``cascade_only`` (no
classifier: cheapest tier first, the response scorer escalates); ``hybrid`` (routing + cascade +
cache); ``random_mix`` (cheapest tier or frontier at random, at the hybrid's cost);
``best_fixed_mix`` (the zero router: the best random mix of single tiers at the hybrid's cost);
``per_category_mix`` (one tier per category); ``oracle`` (cheapest tier that was right).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.approaches import (
    TOP,
    CacheServe,
    Curve,
    HybridKnobs,
    Observations,
    Run,
    Sweep,
    aiq,
    apply_rule,
    bootstrap_aiq,
    cascade_only,
    hybrid,
    mixture,
    oracle,
    per_category_rule,
    quality_at,
    single_tier,
    upper_hull,
)
from router.config import RouterConfig
from router.tiers import TIERS
from training.scoring import CHARS_PER_TOKEN, ESTIMATED_OUTPUT_TOKENS, tier_prices
from workloads import Workload, WorkloadRecord

logger = logging.getLogger(__name__)

QUALITY_TARGET = 0.95  # "95% of frontier quality" (DESIGN.md headline and RouteLLM's metric)
GRID = np.round(np.linspace(0.0, 1.0, 21), 2)  # threshold sweep, step 0.05
COARSE_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)  # step 0.1, for the 3-knob hybrid sweep
TRUST_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LAMBDAS = np.concatenate([[0.0], np.geomspace(0.01, 10.0, 30)])  # per-category cost weights


@dataclass(frozen=True)
class BenchSettings:
    escalate: float
    trust: float
    score_threshold: float
    max_calls: int
    bootstrap: int = 500
    seed: int = 0
    scorer_ms: float = 0.0  # measured time of one response-scorer call
    # Per approach, knob settings fitted on a validation fold (fit_operating_points); None:
    # the models' own fitted thresholds above.
    fitted: dict[str, dict[str, float]] | None = None


def summarise(run: Run, *, n_boot: int, seed: int) -> dict[str, Any]:
    """The JSON row of one approach."""
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
        "cache_hit_rate": float(np.mean(run.cache_hit)),
        "frontier_call_share": float(np.mean(run.frontier)),
        "rows_with_known_quality": int(known.sum()),
    }


def training_table(workload: Workload, records: Sequence[WorkloadRecord], config: RouterConfig,
                   mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recorded correctness and cost (m, 3) of ``records``; costs estimated where unrecorded."""
    prices = tier_prices(config)
    correct = np.full((len(records), len(TIERS)), np.nan)
    cost = np.zeros((len(records), len(TIERS)))
    for i, record in enumerate(records):
        tokens = sum(len(t) for t in record.turns) / CHARS_PER_TOKEN
        for j in range(len(TIERS)):
            tier = TIERS[mapping[j]]
            outcome = workload.tier_outcome(record, tier)
            if outcome is not None and outcome.correct is not None:
                correct[i, j] = float(outcome.correct)
            cost[i, j] = (outcome.cost_usd if outcome is not None and outcome.cost_usd is not None
                          else tokens * prices[tier][0]
                          + ESTIMATED_OUTPUT_TOKENS * prices[tier][1])
    return correct, cost


@dataclass(frozen=True)
class CategoryRules:
    """Per-category rules fitted on training rows: one per cost weight, and the chosen one."""

    rules: list[dict[str, int]]  # one per LAMBDAS weight, cheapest-leaning last
    chosen: dict[str, int]
    weight: float


def fit_category_rules(categories: Sequence[str], correct: np.ndarray, cost: np.ndarray,
                       tiers: Sequence[int]) -> CategoryRules:
    """A rule per cost weight; the chosen one is the cheapest reaching QUALITY_TARGET x frontier
    quality on these (training) rows, else the best-quality one."""
    frontier_quality = float(np.nanmean(correct[:, TOP]))
    rows = np.arange(len(categories))
    rules, best = [], None
    for weight in LAMBDAS:
        rule = per_category_rule(categories, correct, cost, tiers, float(weight))
        rules.append(rule)
        j = np.array([rule[c] for c in categories])
        quality = float(np.nanmean(correct[rows, j]))
        spend = float(cost[rows, j].mean())
        if quality >= QUALITY_TARGET * frontier_quality and (best is None or spend < best[0]):
            best = (spend, rule, float(weight))
    if best is None:
        return CategoryRules(rules, rules[0], 0.0)
    return CategoryRules(rules, best[1], best[2])


def frontier_share_for(sweeps: Sequence[Sweep], target_quality: float) -> float | None:
    """Least frontier-call share reaching ``target_quality`` on the hull of the sweeps' points
    in (frontier share, quality) space -- RouteLLM's "calls to the strong model" metric."""
    shares = np.concatenate([s.frontier.mean(axis=1) for s in sweeps])
    qualities = np.concatenate([s.points()[1] for s in sweeps])
    curve = upper_hull(shares, qualities, (0.0, -np.inf), (1.0, -np.inf))
    if curve.quality[-1] < target_quality:
        return None
    k = int(np.argmax(curve.quality >= target_quality))
    if k == 0:
        return float(curve.cost[0])
    x0, x1, y0, y1 = curve.cost[k - 1], curve.cost[k], curve.quality[k - 1], curve.quality[k]
    return float(x0 + (target_quality - y0) * (x1 - x0) / (y1 - y0))


def evaluate(obs: Observations, settings: BenchSettings, *, category_rules: CategoryRules,
             cache: CacheServe | None = None, two_tier: bool = False) -> dict[str, Any]:
    """Every approach at its operating point, the sweeps, their AIQ and the intervals."""
    tiers = obs.tiers
    cheapest_j, frontier_j = tiers[0], TOP
    frontier = single_tier(obs, frontier_j)
    cheapest = single_tier(obs, cheapest_j)
    knobs = HybridKnobs(settings.escalate, settings.trust, settings.score_threshold,
                        settings.max_calls)
    fitted = settings.fitted or {}
    runs: dict[str, Run] = {
        "frontier_only": frontier,
        "routing_only": hybrid(obs, replace(knobs, cascade=False,
                                            **fitted.get("routing_only", {}))),
        "cascade_only": cascade_only(
            obs, fitted.get("cascade_only", {}).get("score_threshold", settings.score_threshold),
            settings.max_calls, scorer_ms=settings.scorer_ms),
        "hybrid": hybrid(obs, replace(knobs, **fitted.get("hybrid", {})), cache,
                         scorer_ms=settings.scorer_ms),
    }
    target_cost = float(runs["hybrid"].cost.mean())
    singles = {j: single_tier(obs, j) for j in tiers}
    runs["random_mix"] = _mix_at(cheapest, frontier, target_cost)
    runs["best_fixed_mix"] = _best_fixed_at(list(singles.values()), target_cost)
    runs["per_category_mix"] = apply_rule(obs, category_rules.chosen)
    runs["oracle"] = oracle(obs)

    sweeps = _sweeps(obs, settings, knobs, singles, category_rules.rules, cache)
    logger.info("swept %s settings; bootstrapping AIQ",
                {name: len(sweep.knobs) for name, sweep in sweeps.items()})
    low = (float(cheapest.cost.mean()), float(np.nanmean(cheapest.correct)))
    high = (float(frontier.cost.mean()), float(np.nanmean(frontier.correct)))
    curves = {name: sweep.curve(low, high) for name, sweep in sweeps.items()}
    aiqs = {name: aiq(curve, low[0], high[0]) for name, curve in curves.items()}
    boot = bootstrap_aiq(sweeps, frontier, cheapest, n=max(settings.bootstrap // 5, 50),
                         seed=settings.seed)
    differences = {}
    for base in ("best_fixed_mix", "per_category_mix", "routing_only", "cascade_only",
                 "random_mix"):
        diff = np.array(boot["hybrid"]) - np.array(boot[base])
        differences[f"hybrid_minus_{base}"] = {
            "aiq": aiqs["hybrid"] - aiqs[base],
            "ci95": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))]}

    report: dict[str, Any] = {
        "rows": len(obs),
        "tiers": [TIERS[j] for j in tiers],
        "approaches": {name: summarise(run, n_boot=settings.bootstrap, seed=settings.seed)
                       for name, run in runs.items()},
        "aiq": {**aiqs, "differences": differences,
                "cost_range": [low[0], high[0]]},
        "curves": {name: {"cost": c.cost.tolist(), "quality": c.quality.tolist()}
                   for name, c in curves.items()},
        "sweeps": {name: {"knobs": s.knobs, "cost": s.points()[0].tolist(),
                          "quality": s.points()[1].tolist()} for name, s in sweeps.items()},
        "settings": {"escalate": settings.escalate, "trust": settings.trust,
                     "score_threshold": settings.score_threshold,
                     "max_calls": settings.max_calls, "fitted_on_validation": fitted},
    }
    frontier_quality = high[1]
    report["headline"] = {
        "hybrid_quality_ratio": report["approaches"]["hybrid"]["quality"] / frontier_quality,
        "hybrid_cost_ratio": target_cost / high[0],
        "curve_cost_ratio_at_95pct_quality": _cost_at(curves["hybrid"],
                                                      QUALITY_TARGET * frontier_quality, high[0]),
    }
    if two_tier:
        no_overrides = _sweeps(obs, settings, replace(knobs, overrides=False), singles,
                               category_rules.rules, None, only=("hybrid", "routing_only"))
        target = QUALITY_TARGET * frontier_quality
        report["frontier_share_for_95pct_quality"] = {
            "with_overrides": frontier_share_for([sweeps["hybrid"], sweeps["routing_only"]],
                                                 target),
            "without_overrides": frontier_share_for(list(no_overrides.values()), target),
            "per_category_mix": frontier_share_for([sweeps["per_category_mix"]], target),
            "random_mix": frontier_share_for([sweeps["random_mix"]], target),
        }
    return report


FITTED_APPROACHES = ("hybrid", "routing_only", "cascade_only")


def fit_operating_points(obs: Observations, settings: BenchSettings,
                         cache: CacheServe | None = None) -> dict[str, dict[str, float]]:
    """Per approach with knobs, the setting fitted on ``obs`` (a *validation* fold): the cheapest
    reaching QUALITY_TARGET x frontier-only's quality there, else the best-quality one -- the
    same min-cost objective as ``calibrate``. Returns {approach: knob values}."""
    knobs = HybridKnobs(settings.escalate, settings.trust, settings.score_threshold,
                        settings.max_calls)
    singles = {j: single_tier(obs, j) for j in obs.tiers}
    target = QUALITY_TARGET * float(np.nanmean(single_tier(obs, TOP).correct))
    sweeps = _sweeps(obs, settings, knobs, singles, [], cache, only=FITTED_APPROACHES)
    chosen = {}
    for name, sweep in sweeps.items():
        costs, qualities = sweep.points()
        ok = np.flatnonzero(qualities >= target)
        best = int(ok[np.argmin(costs[ok])]) if len(ok) else int(np.nanargmax(qualities))
        chosen[name] = dict(sweep.knobs[best])
    return chosen


def _cost_at(curve: Curve, quality: float, frontier_cost: float) -> float | None:
    """Least cost (as a share of frontier-only's) at which the curve reaches ``quality``."""
    if curve.quality[-1] < quality:
        return None
    k = int(np.argmax(curve.quality >= quality))
    if k == 0:
        return float(curve.cost[0] / frontier_cost)
    x0, x1, y0, y1 = curve.cost[k - 1], curve.cost[k], curve.quality[k - 1], curve.quality[k]
    return float((x0 + (quality - y0) * (x1 - x0) / (y1 - y0)) / frontier_cost)


def _mix_at(cheap: Run, dear: Run, cost: float) -> Run:
    c0, c1 = float(cheap.cost.mean()), float(dear.cost.mean())
    p = float(np.clip((cost - c0) / (c1 - c0), 0.0, 1.0)) if c1 > c0 else 1.0
    return mixture([cheap, dear], [1.0 - p, p])


def _best_fixed_at(singles: list[Run], cost: float) -> Run:
    """The best random mix of two single tiers at ``cost`` (on the singles' upper hull)."""
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


def _sweeps(obs: Observations, settings: BenchSettings, knobs: HybridKnobs,
            singles: dict[int, Run], category_rules: list[dict[str, int]],
            cache: CacheServe | None,
            only: Sequence[str] | None = None) -> dict[str, Sweep]:
    want = set(only) if only else None

    def wanted(name: str) -> bool:
        return want is None or name in want

    sweeps: dict[str, Sweep] = {}
    # Gate settings: every (escalate <= trust) pair on a coarse grid, the fitted pair included.
    gates = sorted({(float(e), float(t)) for t in TRUST_GRID for e in COARSE_GRID if e <= t}
                   | {(knobs.escalate, knobs.trust)})
    if wanted("hybrid"):
        settings_h = [{"escalate": e, "trust": t, "score_threshold": float(s)}
                      for e, t in gates for s in COARSE_GRID]
        sweeps["hybrid"] = Sweep.of("hybrid", settings_h, lambda k: hybrid(
            obs, replace(knobs, escalate=k["escalate"], trust=k["trust"],
                         score_threshold=k["score_threshold"]), cache, settings.scorer_ms))
    if wanted("routing_only"):
        sweeps["routing_only"] = Sweep.of(
            "routing_only", [{"escalate": e, "trust": t} for e, t in gates],
            lambda k: hybrid(obs, replace(knobs, escalate=k["escalate"], trust=k["trust"],
                                          cascade=False)))
    if wanted("cascade_only"):
        sweeps["cascade_only"] = Sweep.of(
            "cascade_only", [{"score_threshold": float(s)} for s in GRID],
            lambda k: cascade_only(obs, k["score_threshold"], knobs.max_calls,
                                   knobs.overrides, settings.scorer_ms))
    if wanted("best_fixed_mix"):
        sweeps["best_fixed_mix"] = Sweep.of(
            "best_fixed_mix", [{"tier": TIERS[j]} for j in singles],
            lambda k: singles[TIERS.index(k["tier"])])
    if wanted("random_mix"):
        ends = [singles[min(singles)], singles[TOP]]
        sweeps["random_mix"] = Sweep.of(
            "random_mix", [{"frontier_probability": float(p)} for p in GRID],
            lambda k: mixture(ends, [1 - k["frontier_probability"], k["frontier_probability"]]))
    if wanted("per_category_mix"):
        sweeps["per_category_mix"] = Sweep.of(
            "per_category_mix", [{"rule": k} for k in range(len(category_rules))],
            lambda k: apply_rule(obs, category_rules[k["rule"]]))
    return sweeps


def write_plots(report: dict[str, Any], folder: Path, name: str) -> list[Path]:
    """Cost/quality curves of every approach as ``folder/<name>.png``, operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 5))
    for approach, curve in report["curves"].items():
        ax.plot(curve["cost"], curve["quality"], marker=".", label=f"{approach} "
                f"(AIQ {report['aiq'][approach]:.3f})")
    for approach, row in report["approaches"].items():
        ax.scatter([row["cost_per_task"]], [row["quality"]], marker="x")
        ax.annotate(approach, (row["cost_per_task"], row["quality"]), fontsize=7)
    ax.set_xlabel("cost per task (USD)")
    ax.set_ylabel("quality (share correct)")
    ax.set_title(f"{name}: {report['rows']} rows")
    ax.legend(fontsize=7, loc="lower right")
    path = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


__all__ = ["BenchSettings", "CategoryRules", "evaluate", "fit_category_rules", "quality_at",
           "summarise", "training_table", "write_plots"]
