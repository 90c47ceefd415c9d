"""Routing approaches replayed over observed per-tier outcomes, their curves and AIQ.

Input: :class:`Observations` -- for each row, what the real request path returned when the row
was sent to each tier (cost, modelled provider latency, recorded correctness, the response
scorer's score) plus the classifier's calibrated probabilities and the router's own overhead.
Every approach below is then a choice of tiers per row; cost, latency and quality add up from the
observations. The cascade uses :mod:`router.cascade`'s rules and the gate
:func:`router.gate.decide`'s (vectorised here; a test holds the two equal).

Curves: each approach's knob is swept; the curve is the upper hull of its (cost, quality) points
together with the cheapest single tier and frontier-only (any router can be configured down to
either), non-decreasing in cost. AIQ (RouterBench's average improvement in quality) is the area
under that curve over [cheapest single tier's cost, frontier-only's cost] divided by the width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.cascade import next_tier
from router.tiers import TIERS

TOP = len(TIERS) - 1
ROUTE, CASCADE, ESCALATE = 0, 1, 2


@dataclass
class Observations:
    """Per row ``i`` and tier ``j`` (TIERS order): what the request path observed.

    ``correct[i, j]``: recorded correctness of tier j's answer (1/0; NaN = unknown).
    ``cost[i, j]`` USD; ``latency_ms[i, j]`` modelled provider latency; ``scores[i, j]`` the
    response scorer's P(correct) of that answer (NaN = not scored). ``tier_map[i, j]``: the tier
    that actually answers row i when j is asked (two-tier data maps medium to critical).
    ``probs`` (n, 3) calibrated classifier probabilities; ``overridden`` (n,) a domain rule fired;
    ``overhead_ms`` (n,) the router's own time (normalise, overrides, classify, gate).
    """

    ids: list[str]
    categories: list[str]
    probs: np.ndarray
    overridden: np.ndarray
    overhead_ms: np.ndarray
    correct: np.ndarray
    cost: np.ndarray
    latency_ms: np.ndarray
    scores: np.ndarray
    tier_map: np.ndarray | None = None  # (n, 3) int; None: every tier answers for itself
    scorer_ms: float = 0.0  # the response scorer's time per (prompt, response) pair

    def __post_init__(self) -> None:
        if self.tier_map is None:
            self.tier_map = np.tile(np.arange(len(TIERS)), (len(self.ids), 1))
        elif self.tier_map.ndim == 1:
            self.tier_map = np.tile(self.tier_map, (len(self.ids), 1))

    def __len__(self) -> int:
        return len(self.ids)

    def mapped(self, tiers: np.ndarray) -> np.ndarray:
        """The tier that answers each row when ``tiers`` (n,) are asked."""
        return self.tier_map[np.arange(len(self.ids)), tiers]

    ARRAYS = ("probs", "overridden", "overhead_ms", "correct", "cost", "latency_ms", "scores",
              "tier_map")

    def save(self, path: Path) -> None:
        """One ``.npz`` holding every array plus the row ids and categories."""
        np.savez_compressed(path, ids=np.array(self.ids), categories=np.array(self.categories),
                            scorer_ms=np.array(self.scorer_ms),
                            **{name: getattr(self, name) for name in self.ARRAYS})

    @classmethod
    def load(cls, path: Path) -> Observations:
        with np.load(path, allow_pickle=False) as data:
            return cls(ids=data["ids"].tolist(), categories=data["categories"].tolist(),
                       scorer_ms=float(data["scorer_ms"]),
                       **{name: data[name] for name in cls.ARRAYS})

    @property
    def tiers(self) -> list[int]:
        """The distinct tiers that answer in this workload (cheapest first)."""
        return sorted(set(self.tier_map.ravel().tolist()))


@dataclass
class Run:
    """What one approach did to each row: arrays of shape (n,)."""

    cost: np.ndarray
    latency_ms: np.ndarray
    correct: np.ndarray  # expected correctness in [0, 1] (mixtures give fractions)
    escalated: np.ndarray  # gate or cascade sent the row above its first choice
    frontier: np.ndarray  # share of the row's traffic that called the critical tier
    cache_hit: np.ndarray


@dataclass(frozen=True)
class CacheServe:
    """Rows answered from the cache: ``hit`` (n,) bool and ``correct`` (n,) of the served answer."""

    hit: np.ndarray
    correct: np.ndarray


def _rows(n: int) -> np.ndarray:
    return np.arange(n)


def single_tier(obs: Observations, tier: int) -> Run:
    """Every row to ``tier`` (as mapped)."""
    j = obs.mapped(np.full(len(obs), tier))
    return _fixed(obs, j)


def _fixed(obs: Observations, j: np.ndarray, escalated: np.ndarray | None = None) -> Run:
    r = _rows(len(obs))
    return Run(cost=obs.cost[r, j], latency_ms=obs.latency_ms[r, j] + obs.overhead_ms,
               correct=obs.correct[r, j], frontier=(j == TOP).astype(float),
               escalated=np.zeros(len(obs), bool) if escalated is None else escalated,
               cache_hit=np.zeros(len(obs), bool))


def oracle(obs: Observations) -> Run:
    """The cheapest tier whose recorded answer was right (the cheapest tier if none was)."""
    tiers = obs.tiers
    right = np.stack([obs.correct[:, j] == 1 for j in tiers], axis=1)
    first = np.where(right.any(axis=1), np.argmax(right, axis=1), 0)
    return _fixed(obs, np.array(tiers)[first])


def mixture(runs: Sequence[Run], weights: Sequence[float]) -> Run:
    """Each row sent to ``runs[k]`` with probability ``weights[k]``: expected values per row."""
    w = np.asarray(weights, dtype=float)

    def mix(name: str) -> np.ndarray:
        return sum(wk * getattr(run, name).astype(float) for wk, run in zip(w, runs, strict=True))

    return Run(cost=mix("cost"), latency_ms=mix("latency_ms"), correct=mix("correct"),
               escalated=mix("escalated"), frontier=mix("frontier"), cache_hit=mix("cache_hit"))


def gate_actions(probs: np.ndarray, escalate: float, trust: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`router.gate.decide`: (action, predicted tier, escalation target)."""
    predicted = TOP - np.argmax(probs[:, ::-1], axis=1)  # ties to the more capable tier
    confidence = probs[_rows(len(probs)), predicted]
    action = np.where((predicted == TOP) | (confidence >= trust), ROUTE,
                      np.where(confidence >= escalate, CASCADE, ESCALATE))
    cumulative = np.cumsum(probs, axis=1)
    above = np.arange(len(TIERS))[None, :] > predicted[:, None]
    enough = above & (cumulative >= trust)
    enough[:, TOP] |= above[:, TOP]
    target = np.where(action == ESCALATE, np.argmax(enough, axis=1), predicted)
    return action, predicted, target


def _next_table(max_calls: int) -> np.ndarray:
    """``table[tier, calls_made]`` = next tier index after a low score, -1 = stop."""
    table = np.full((len(TIERS), len(TIERS) + 2), -1)
    for j, tier in enumerate(TIERS):
        for calls in range(1, len(TIERS) + 2):
            nxt = next_tier(tier, calls, max_calls)
            table[j, calls] = -1 if nxt is None else TIERS.index(nxt)
    return table


@dataclass(frozen=True)
class _Cascaded:
    final: np.ndarray  # tier that gave the kept answer
    cost: np.ndarray  # USD of every call made
    latency_ms: np.ndarray  # provider latency of every call made, in sequence
    escalated: np.ndarray  # a low score sent the row up at least once
    frontier: np.ndarray  # the critical tier was called
    calls: np.ndarray  # calls made (1..max_calls)


def _cascade(obs: Observations, start: np.ndarray, active: np.ndarray, threshold: float,
             max_calls: int) -> _Cascaded:
    """Run the cascade on ``active`` rows from tier ``start`` (already mapped); inactive rows
    call ``start`` once."""
    r = _rows(len(obs))
    table = _next_table(max_calls)
    current = start.copy()
    cost = obs.cost[r, current].copy()
    latency = obs.latency_ms[r, current].copy()
    frontier = current == TOP
    escalated = np.zeros(len(obs), bool)
    calls = np.ones(len(obs), int)
    going = active.copy()
    for _ in range(len(TIERS)):
        nxt = table[current, np.minimum(calls, table.shape[1] - 1)]
        scores = obs.scores[r, current]
        low = np.where(np.isnan(scores), False, scores < threshold)
        step = going & low & (nxt >= 0)
        if not step.any():
            break
        mapped = obs.mapped(np.where(nxt >= 0, nxt, TOP))
        current = np.where(step, mapped, current)
        cost = cost + np.where(step, obs.cost[r, current], 0.0)
        latency = latency + np.where(step, obs.latency_ms[r, current], 0.0)
        frontier |= step & (current == TOP)
        escalated |= step
        calls += step
        going = step
    return _Cascaded(current, cost, latency, escalated, frontier, calls)


@dataclass(frozen=True)
class HybridKnobs:
    escalate: float
    trust: float
    score_threshold: float
    max_calls: int = 2
    cascade: bool = True  # False: routing only (a cascade decision goes to the predicted tier)
    overrides: bool = True


def hybrid(obs: Observations, knobs: HybridKnobs, cache: CacheServe | None = None,
           scorer_ms: float = 0.0) -> Run:
    """Overrides -> gate -> route / cascade / escalate (-> cache in front when given)."""
    n = len(obs)
    r = _rows(n)
    action, _, target = gate_actions(obs.probs, knobs.escalate, knobs.trust)
    if knobs.overrides:
        action = np.where(obs.overridden, ROUTE, action)
        target = np.where(obs.overridden, TOP, target)
    start = obs.mapped(target)
    cascading = (action == CASCADE) & knobs.cascade
    c = _cascade(obs, start, cascading, knobs.score_threshold, knobs.max_calls)
    latency = c.latency_ms + obs.overhead_ms + np.where(cascading, scorer_ms * c.calls, 0.0)
    escalated = (action == ESCALATE) | c.escalated
    hit = np.zeros(n, bool) if cache is None else cache.hit
    return Run(cost=np.where(hit, 0.0, c.cost),
               latency_ms=np.where(hit, obs.overhead_ms, latency),
               correct=np.where(hit, cache.correct if cache else 0.0, obs.correct[r, c.final]),
               escalated=escalated & ~hit, frontier=(c.frontier & ~hit).astype(float),
               cache_hit=hit)


def cascade_only(obs: Observations, score_threshold: float, max_calls: int = 2,
                 overrides: bool = True, scorer_ms: float = 0.0) -> Run:
    """No classifier: every row starts at the cheapest tier and climbs on low scores."""
    n = len(obs)
    start = obs.mapped(np.zeros(n, int))
    if overrides:
        start = np.where(obs.overridden, TOP, start)
    active = start < TOP
    c = _cascade(obs, start, active, score_threshold, max_calls)
    latency = c.latency_ms + obs.overhead_ms + scorer_ms * c.calls * active
    return Run(cost=c.cost, latency_ms=latency,
               correct=obs.correct[_rows(n), c.final], escalated=c.escalated,
               frontier=c.frontier.astype(float), cache_hit=np.zeros(n, bool))


def per_category_rule(categories: Sequence[str], correct: np.ndarray, cost: np.ndarray,
                      tiers: Sequence[int], weight: float) -> dict[str, int]:
    """Per category, the tier maximising ``quality - weight * cost / mean frontier cost``.

    ``correct``/``cost``: (m, 3) of the *training* rows. Ties go to the cheaper tier.
    """
    frontier_cost = float(np.nanmean(cost[:, TOP])) or 1.0
    rule = {}
    cats = np.asarray(categories)
    for category in sorted(set(categories)):
        mask = cats == category
        best, best_value = TOP, -np.inf
        for j in tiers:
            value = (np.nanmean(correct[mask, j]) if np.isfinite(correct[mask, j]).any()
                     else 0.0) - weight * float(np.mean(cost[mask, j])) / frontier_cost
            if value > best_value + 1e-12:
                best, best_value = j, value
        rule[category] = best
    return rule


def apply_rule(obs: Observations, rule: dict[str, int]) -> Run:
    """Each row to its category's tier; categories unseen in training go to the frontier."""
    j = np.array([rule.get(c, TOP) for c in obs.categories])
    return _fixed(obs, obs.mapped(j))


# ---------------------------------------------------------------- curves and AIQ

@dataclass(frozen=True)
class Curve:
    cost: np.ndarray  # hull vertices, increasing cost
    quality: np.ndarray


def upper_hull(costs: np.ndarray, qualities: np.ndarray, low: tuple[float, float],
               high: tuple[float, float]) -> Curve:
    """Non-decreasing upper convex hull of the points plus the ``low``/``high`` endpoints."""
    points = sorted({(float(c), float(q)) for c, q in zip(costs, qualities, strict=True)
                     if np.isfinite(c) and np.isfinite(q)} | {low, high})
    hull: list[tuple[float, float]] = []
    for point in points:
        if hull and point[1] <= hull[-1][1]:
            continue  # costs more, no better: dominated
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord (concave hull only)
            if (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(point)
    return Curve(np.array([p[0] for p in hull]), np.array([p[1] for p in hull]))


def quality_at(curve: Curve, cost: float) -> float:
    """The curve's quality at ``cost`` (flat after its last vertex, NaN before its first)."""
    if cost < curve.cost[0] - 1e-15:
        return float("nan")
    return float(np.interp(cost, curve.cost, curve.quality))


def aiq(curve: Curve, low: float, high: float, points: int = 512) -> float:
    """Mean quality of the curve over costs [low, high]."""
    grid = np.linspace(low, high, points)
    values = np.array([quality_at(curve, c) for c in grid])
    values = np.where(np.isnan(values), curve.quality[0], values)
    return float(np.trapezoid(values, grid) / (high - low)) if high > low else float(values[0])


@dataclass
class Sweep:
    """An approach's knob settings and, per setting, its per-row cost and correctness."""

    name: str
    knobs: list[dict]
    cost: np.ndarray  # (settings, n)
    correct: np.ndarray  # (settings, n)
    frontier: np.ndarray  # (settings, n)

    @classmethod
    def of(cls, name: str, settings: Sequence[dict], run: Callable[[dict], Run]) -> Sweep:
        runs = [run(s) for s in settings]
        return cls(name, list(settings), np.stack([r.cost for r in runs]),
                   np.stack([r.correct for r in runs]), np.stack([r.frontier for r in runs]))

    def points(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        w = np.ones(self.cost.shape[1]) if weights is None else weights
        return self.cost @ w / w.sum(), _nanaverage(self.correct, w)

    def curve(self, low: tuple[float, float], high: tuple[float, float],
              weights: np.ndarray | None = None) -> Curve:
        costs, qualities = self.points(weights)
        return upper_hull(costs, qualities, low, high)


def _nanaverage(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    known = np.isfinite(values)
    return (np.where(known, values, 0.0) @ w) / np.maximum(known.astype(float) @ w, 1e-12)


def bootstrap_aiq(sweeps: dict[str, Sweep], frontier: Run, cheapest: Run, *, n: int, seed: int
                  ) -> dict[str, list[float]]:
    """AIQ of every sweep on ``n`` bootstrap resamples of the rows (same resample for all)."""
    rng = np.random.default_rng(seed)
    rows = len(frontier.cost)
    out: dict[str, list[float]] = {name: [] for name in sweeps}
    for _ in range(n):
        w = np.bincount(rng.integers(0, rows, rows), minlength=rows).astype(float)
        low = (float(cheapest.cost @ w / w.sum()), float(_nanaverage(cheapest.correct[None], w)[0]))
        high = (float(frontier.cost @ w / w.sum()),
                float(_nanaverage(frontier.correct[None], w)[0]))
        for name, sweep in sweeps.items():
            out[name].append(aiq(sweep.curve(low, high, w), low[0], high[0], points=128))
    return out
