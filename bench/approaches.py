"""Routing approaches replayed over observed per-tier outcomes, their val-fixed curves and AIQ.

Input: :class:`Observations` -- for each row, what the real request path returned when the row
was sent to each tier (recorded cost, modelled provider latency, recorded correctness, the
response scorer's score), plus what the router decided from before any call (per-tier
P(acceptable), expected prices, allowed tiers, the override) and its own overhead.

Every approach that involves the decision rule is :func:`router.gate.replay` over those inputs:
the bench holds no second copy of the rule, the gate or the cascade. What a replay *calls* is
then charged at what each call recorded (LiteLLM's ``response_cost``), never at the expected
prices the decision weighed: through ``tier_map``, so on two-tier data asking ``medium`` is
answered by ``critical`` at critical's recorded cost and outcome.

Curves (the outside study's "AIQ (val-fixed)", ``../shared/research/routing_signals.md``): an
approach's knob is swept on a fixed grid on the *validation* rows; the settings on the upper
(concave, non-decreasing) envelope of the validation (cost, quality) points are kept; the test
curve is the linear interpolation through the kept settings' *test* points, plus the cheapest
single tier and frontier-only (no envelope on test: a test envelope picks up noise). AIQ
(RouterBench's average improvement in quality) is the area under that curve over [cheapest single
tier's cost, frontier-only's cost] divided by the width; differences and their intervals come
from a paired bootstrap over test rows with the kept settings held fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.gate import CascadeRun, CheckStats, OperatingPoint, replay
from router.tiers import TIERS

TOP = len(TIERS) - 1
MEDIUM = TIERS.index("medium")
# Bumped whenever the arrays' meaning changes; an .npz of another format is refused (format 1:
# ``probs`` was a distribution over "which tier", with no expected prices or allowed tiers;
# format 2: no check statistics).
OBSERVATIONS_FORMAT = 3


class ObservationsError(ValueError):
    """An observations file this bench cannot use (another format, missing arrays)."""


@dataclass
class Observations:
    """Per row ``i`` and tier ``j`` (TIERS order): what the router decided and what each tier
    answered. Shapes: n rows, 3 tiers.

    Decision inputs, from :meth:`router.policy.RouterPolicy.decide` (``RouteDecision``):
    ``p`` (n, 3) the classifier's calibrated P(tier j's answer is acceptable) -- one probability
    per tier, *not* a distribution (rows need not sum to 1); ``prices`` (n, 3) expected USD at
    each tier (:mod:`router.pricing`); ``allowed`` (n, 3) bool, the tiers with evidence in the
    row's neighbourhood; ``forced`` (n,) int, the tier a domain override sends the row to (-1:
    none); ``check_*``: the decision's :class:`router.gate.CheckStats` -- ``check_thresholds``
    (T,), ``check_tpr`` / ``check_fpr`` (n, T, 3), ``check_rwr`` / ``check_rww`` (n, 3, 3),
    ``checkable`` (n,) --, empty / False where the classifier has none.

    Observed per call, over HTTP through LiteLLM to the simulator: ``cost`` (n, 3) recorded USD
    (``response_cost``); ``latency_ms`` (n, 3) modelled provider latency; ``correct`` (n, 3)
    recorded correctness (1/0, NaN unknown); ``scores`` (n, 3) the response scorer's
    P(acceptable) of that answer (NaN: not scored). ``tier_map`` (n, 3) int: the tier that
    answers row i when j is asked (two-tier data maps medium to critical); a mapped column holds
    a copy of the answering tier's observation and is never read through ``j`` itself.
    ``overhead_ms`` (n,) the router's own time; ``scorer_ms`` one check's time; ``models`` the
    classifier and scorer versions that made these observations.
    """

    ids: list[str]
    categories: list[str]
    p: np.ndarray
    prices: np.ndarray
    allowed: np.ndarray
    forced: np.ndarray
    overhead_ms: np.ndarray
    correct: np.ndarray
    cost: np.ndarray
    latency_ms: np.ndarray
    scores: np.ndarray
    tier_map: np.ndarray | None = None  # (n, 3) int; None: every tier answers for itself
    scorer_ms: float = 0.0
    models: str = ""
    check_thresholds: np.ndarray | None = None
    check_tpr: np.ndarray | None = None
    check_fpr: np.ndarray | None = None
    check_rwr: np.ndarray | None = None
    check_rww: np.ndarray | None = None
    checkable: np.ndarray | None = None

    ARRAYS = ("p", "prices", "allowed", "forced", "overhead_ms", "correct", "cost",
              "latency_ms", "scores", "tier_map", "check_thresholds", "check_tpr",
              "check_fpr", "check_rwr", "check_rww", "checkable")

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.tier_map is None:
            self.tier_map = np.tile(np.arange(len(TIERS)), (n, 1))
        elif np.ndim(self.tier_map) == 1:
            self.tier_map = np.tile(self.tier_map, (n, 1))
        self.tier_map = np.asarray(self.tier_map, dtype=int)
        self.allowed = np.asarray(self.allowed, dtype=bool)
        self.forced = np.asarray(self.forced, dtype=int)
        k = len(TIERS)
        if self.check_thresholds is None:
            self.check_thresholds = np.zeros(0)
        t = len(self.check_thresholds)
        for name, shape in (("check_tpr", (n, t, k)), ("check_fpr", (n, t, k)),
                            ("check_rwr", (n, k, k)), ("check_rww", (n, k, k))):
            if getattr(self, name) is None:
                setattr(self, name, np.full(shape, np.nan))
        if self.checkable is None:
            self.checkable = np.zeros(n, dtype=bool)
        self.checkable = np.asarray(self.checkable, dtype=bool)
        for name in ("p", "prices", "allowed", "correct", "cost", "latency_ms", "scores",
                     "tier_map"):
            if np.shape(getattr(self, name)) != (n, len(TIERS)):
                raise ObservationsError(f"observations: {name} must be ({n}, {len(TIERS)}), "
                                        f"got {np.shape(getattr(self, name))}")
        for name in ("forced", "overhead_ms"):
            if np.shape(getattr(self, name)) != (n,):
                raise ObservationsError(f"observations: {name} must be ({n},), got "
                                        f"{np.shape(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def check(self) -> CheckStats | None:
        """The decisions' check statistics (None: the classifier had none)."""
        if len(self.check_thresholds) == 0:
            return None
        return CheckStats(np.asarray(self.check_thresholds, dtype=float),
                          np.nan_to_num(self.check_tpr), np.nan_to_num(self.check_fpr),
                          np.nan_to_num(self.check_rwr), np.nan_to_num(self.check_rww),
                          self.checkable)

    @property
    def overridden(self) -> np.ndarray:
        """(n,) bool: a domain override fired."""
        return self.forced >= 0

    def mapped(self, tiers: np.ndarray) -> np.ndarray:
        """The tier that answers each row when ``tiers`` (n,) are asked."""
        return self.tier_map[np.arange(len(self.ids)), tiers]

    @property
    def tiers(self) -> list[int]:
        """The distinct tiers that answer in this workload (cheapest first)."""
        return sorted(set(self.tier_map.ravel().tolist()))

    def save(self, path: Path) -> None:
        """One ``.npz`` holding every array, the row ids and categories and the format."""
        np.savez_compressed(path, format=np.array(OBSERVATIONS_FORMAT), ids=np.array(self.ids),
                            categories=np.array(self.categories),
                            scorer_ms=np.array(self.scorer_ms), models=np.array(self.models),
                            **{name: getattr(self, name) for name in self.ARRAYS})

    @classmethod
    def load(cls, path: Path) -> Observations:
        """Read :meth:`save`'s file; raises :class:`ObservationsError` for another format."""
        with np.load(path, allow_pickle=False) as data:
            found = int(data["format"]) if "format" in data.files else 1
            if found != OBSERVATIONS_FORMAT:
                raise ObservationsError(
                    f"{path}: observations in format {found}; this bench reads format "
                    f"{OBSERVATIONS_FORMAT} (per-tier P(acceptable), expected prices and allowed "
                    f"tiers from the decision): delete the file to observe again")
            missing = [k for k in ("ids", "categories", "scorer_ms", "models", *cls.ARRAYS)
                       if k not in data.files]
            if missing:
                raise ObservationsError(f"{path}: lacks {missing}; delete it to observe again")
            return cls(ids=data["ids"].tolist(), categories=data["categories"].tolist(),
                       scorer_ms=float(data["scorer_ms"]), models=str(data["models"]),
                       **{name: data[name] for name in cls.ARRAYS})


@dataclass
class Run:
    """What one approach did to each row: arrays of shape (n,), floats (mixtures give
    fractions: the expected value over the mixture's draw)."""

    cost: np.ndarray  # USD of every call made (recorded)
    latency_ms: np.ndarray  # calls in sequence + router overhead + checks
    correct: np.ndarray  # recorded correctness of the kept answer (NaN unknown)
    escalated: np.ndarray  # gate or a failed check sent the row above the rule's first choice
    frontier: np.ndarray  # the critical tier was called
    calls: np.ndarray = field(default_factory=lambda: np.zeros(0))  # provider calls made

    def __post_init__(self) -> None:
        if len(self.calls) != len(self.cost):
            self.calls = np.ones(len(self.cost))


def _rows(n: int) -> np.ndarray:
    return np.arange(n)


def _fixed(obs: Observations, j: np.ndarray) -> Run:
    """Each row to the *answering* tier ``j`` (n,), one call, no check."""
    r = _rows(len(obs))
    return Run(cost=obs.cost[r, j], latency_ms=obs.latency_ms[r, j] + obs.overhead_ms,
               correct=obs.correct[r, j], frontier=(j == TOP).astype(float),
               escalated=np.zeros(len(obs)))


def single_tier(obs: Observations, tier: int) -> Run:
    """Every row to ``tier`` (as mapped: on two-tier data medium is critical)."""
    return _fixed(obs, obs.mapped(np.full(len(obs), tier)))


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
               escalated=mix("escalated"), frontier=mix("frontier"), calls=mix("calls"))


def charged(obs: Observations, run: CascadeRun) -> Run:
    """A replay's calls charged at what each recorded: ``run.called`` (n, 3) holds *answering*
    tiers (``replay`` maps through ``executes``), so a mapped column is never charged. Latency:
    the calls in sequence, the router's overhead, and one scorer check per call on rows that
    went through the cascade (the request path scores every answer there, the last one too)."""
    rows = _rows(len(obs))
    checks = np.where(run.cascaded, run.calls, 0)
    # np.where, not a product: a column never called may hold NaN, and 0 * NaN is NaN
    return Run(cost=np.where(run.called, obs.cost, 0.0).sum(axis=1),
               latency_ms=np.where(run.called, obs.latency_ms, 0.0).sum(axis=1)
               + obs.overhead_ms + obs.scorer_ms * checks,
               correct=obs.correct[rows, run.final], escalated=run.escalated.astype(float),
               frontier=run.called[:, TOP].astype(float), calls=run.calls.astype(float))


def policy_replay(obs: Observations, point: OperatingPoint, *, max_calls: int,
                  cascade: bool = True, overrides: bool = True,
                  allowed: np.ndarray | None = None) -> CascadeRun:
    """:func:`router.gate.replay` of the whole policy at ``point`` on ``obs``: overrides forced
    (when ``overrides``), the classifier's ``p``, the expected prices and allowed tiers (or
    ``allowed`` (n, 3) instead), the recorded scores and the tier map."""
    return replay(obs.p, obs.prices, point, obs.scores, obs.tier_map, max_calls=max_calls,
                  cascade=cascade, allowed=obs.allowed if allowed is None else allowed,
                  check=obs.check,
                  forced=obs.forced if overrides else None)


def hybrid(obs: Observations, point: OperatingPoint, *, max_calls: int, cascade: bool = True,
           overrides: bool = True, allowed: np.ndarray | None = None) -> Run:
    """The shipped policy (overrides -> rule -> gate -> route / cascade / escalate) at
    ``point``, charged at the recorded calls. ``cascade=False``: routing only."""
    return charged(obs, policy_replay(obs, point, max_calls=max_calls, cascade=cascade,
                                      overrides=overrides, allowed=allowed))


def without_medium(obs: Observations) -> np.ndarray:
    """``obs.allowed`` with medium disallowed (n, 3): the "does medium pay" ablation."""
    allowed = obs.allowed.copy()
    allowed[:, MEDIUM] = False
    return allowed


def cascade_point(score_threshold: float) -> OperatingPoint:
    """The operating point that turns :func:`router.gate.replay` into a pure cascade (see
    :func:`cascade_only`): trust 1 and escalate 0 put every p < 1 in the cascade band."""
    return OperatingPoint(price_weight=1.0, trust=1.0, escalate=0.0,
                          score_threshold=float(score_threshold), source="cascade_only")


def cascade_inputs(obs: Observations, max_calls: int) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """(p, price, allowed), each (n, 3), that make the rule a classifier-free ladder.

    p is constant (no classifier), so with "price" = the tier index and lambda = 1 the rule
    chooses the cheapest allowed tier first and, after a failed check, the next allowed tier
    above. Allowed: the workload's cheapest ``max_calls - 1`` answering tiers (at least the
    cheapest) and critical, so that the last call a cascade may make lands on the frontier (with
    ``max_calls = 2`` on three tiers: simple, then critical) and a mapped tier is never asked."""
    n = len(obs)
    p = np.full((n, len(TIERS)), 0.5)
    price = np.tile(np.arange(len(TIERS), dtype=float), (n, 1))
    below = [j for j in obs.tiers if j != TOP][:max(max_calls - 1, 1)]
    ladder = [*below, TOP]
    allowed = np.zeros((n, len(TIERS)), dtype=bool)
    allowed[:, ladder] = True
    return p, price, allowed


def cascade_only(obs: Observations, score_threshold: float, *, max_calls: int,
                 overrides: bool = True) -> Run:
    """No classifier: every row starts at the cheapest tier and climbs on failed checks (score
    below ``score_threshold``), at most ``max_calls`` calls; overrides still go to their tier.
    Run by :func:`router.gate.replay` with :func:`cascade_inputs` and :func:`cascade_point`."""
    p, price, allowed = cascade_inputs(obs, max_calls)
    run = replay(p, price, cascade_point(score_threshold), obs.scores, obs.tier_map,
                 max_calls=max_calls, cascade=True, allowed=allowed,
                 forced=obs.forced if overrides else None)
    return charged(obs, run)


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
    j = np.array([rule.get(c, TOP) for c in obs.categories], dtype=int)
    return _fixed(obs, obs.mapped(j))


# ---------------------------------------------------------------- curves and AIQ

@dataclass(frozen=True)
class Curve:
    """A piecewise-linear (x, quality) curve, x increasing (cost per task, or frontier share)."""

    cost: np.ndarray
    quality: np.ndarray


def upper_hull(costs: np.ndarray, qualities: np.ndarray, low: tuple[float, float],
               high: tuple[float, float]) -> Curve:
    """Non-decreasing upper concave envelope of the points plus the ``low``/``high`` endpoints
    (used on *validation* points, to choose the settings a val-fixed curve keeps)."""
    points = sorted({(float(c), float(q)) for c, q in zip(costs, qualities, strict=True)
                     if np.isfinite(c) and np.isfinite(q)} | {low, high})
    hull: list[tuple[float, float]] = []
    for point in points:
        if hull and point[1] <= hull[-1][1]:
            continue  # costs more, no better: dominated
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord (concave hull only);
            # the tolerance treats points collinear but for rounding (a random mix's) as on it
            if (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1) >= -1e-15:
                hull.pop()
            else:
                break
        hull.append(point)
    return Curve(np.array([p[0] for p in hull]), np.array([p[1] for p in hull]))


def interpolated(xs: np.ndarray, qualities: np.ndarray, low: tuple[float, float],
                 high: tuple[float, float]) -> Curve:
    """The points and the two endpoints joined in order of x -- no envelope: a kept setting
    that does worse on test pulls the curve down. Non-finite points are dropped."""
    points = sorted([*((float(x), float(q)) for x, q in zip(xs, qualities, strict=True)
                       if np.isfinite(x) and np.isfinite(q)), low, high])
    return Curve(np.array([p[0] for p in points]), np.array([p[1] for p in points]))


def quality_at(curve: Curve, cost: float) -> float:
    """The curve's quality at ``cost`` (flat before its first and after its last point)."""
    return float(np.interp(cost, curve.cost, curve.quality))


def aiq(curve: Curve, low: float, high: float) -> float:
    """Mean quality of the curve over [low, high], exactly (trapezoids between breakpoints);
    the curve is flat outside its points."""
    if high <= low:
        return quality_at(curve, low)
    inside = curve.cost[(curve.cost > low) & (curve.cost < high)]
    xs = np.unique(np.concatenate([[low, high], inside]))
    ys = np.interp(xs, curve.cost, curve.quality)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / (high - low))


def x_at(curve: Curve, quality: float) -> float | None:
    """The least x (cost, or frontier share) at which the curve first reaches ``quality``,
    interpolating on the segment that crosses it; None if it never does."""
    reached = np.flatnonzero(curve.quality >= quality)
    if not len(reached):
        return None
    k = int(reached[0])
    if k == 0:
        return float(curve.cost[0])
    x0, x1, y0, y1 = curve.cost[k - 1], curve.cost[k], curve.quality[k - 1], curve.quality[k]
    return float(x0 + (quality - y0) * (x1 - x0) / (y1 - y0))


def _nanaverage(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the last axis, ignoring NaN: (k, n), (n,) -> (k,)."""
    known = np.isfinite(values)
    return (np.where(known, values, 0.0) @ w) / np.maximum(known.astype(float) @ w, 1e-12)


@dataclass
class Sweep:
    """An approach's knob settings and, per setting, its per-row cost, correctness and
    frontier calls: arrays (settings, n)."""

    name: str
    knobs: list[dict[str, Any]]
    cost: np.ndarray
    correct: np.ndarray
    frontier: np.ndarray

    @classmethod
    def of(cls, name: str, settings: Sequence[dict[str, Any]],
           run: Callable[[dict[str, Any]], Run]) -> Sweep:
        runs = [run(s) for s in settings]
        if not runs:
            raise ValueError(f"sweep {name}: no settings")
        return cls(name, list(settings), np.stack([r.cost for r in runs]),
                   np.stack([r.correct for r in runs]), np.stack([r.frontier for r in runs]))

    def points(self, weights: np.ndarray | None = None,
               keep: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cost, quality) per setting (or the ``keep`` ones), rows weighted by ``weights``."""
        idx = np.arange(len(self.knobs)) if keep is None else np.asarray(keep, dtype=int)
        w = np.ones(self.cost.shape[1]) if weights is None else weights
        return self.cost[idx] @ w / w.sum(), _nanaverage(self.correct[idx], w)

    def shares(self, keep: Sequence[int] | None = None) -> np.ndarray:
        """Frontier-call share per setting (or the ``keep`` ones)."""
        idx = np.arange(len(self.knobs)) if keep is None else np.asarray(keep, dtype=int)
        return self.frontier[idx].mean(axis=1)


def envelope_settings(val: Sweep, low: tuple[float, float], high: tuple[float, float]
                      ) -> list[int]:
    """Indices of the settings whose *validation* (cost, quality) is a vertex of the validation
    upper envelope (with the endpoints ``low``/``high``, measured on validation too). Settings
    with the same validation point are one choice there; the middle one of them (in grid order)
    represents it, so the test curve gets one point per envelope vertex."""
    costs, qualities = val.points()
    hull = upper_hull(costs, qualities, low, high)
    vertices = set(zip(hull.cost.tolist(), hull.quality.tolist(), strict=True))
    groups: dict[tuple[float, float], list[int]] = {}
    for k, point in enumerate(zip(costs.tolist(), qualities.tolist(), strict=True)):
        if point in vertices:
            groups.setdefault(point, []).append(k)
    return sorted(ks[len(ks) // 2] for ks in groups.values())


def val_fixed_curve(test: Sweep, keep: Sequence[int], low: tuple[float, float],
                    high: tuple[float, float], weights: np.ndarray | None = None) -> Curve:
    """The test (cost, quality) points of the kept settings, joined with the endpoints."""
    if not len(keep):
        return interpolated(np.array([]), np.array([]), low, high)
    costs, qualities = test.points(weights, keep)
    return interpolated(costs, qualities, low, high)


def share_curve(test: Sweep, keep: Sequence[int], cheapest_quality: float,
                frontier_quality: float) -> Curve:
    """(frontier-call share, quality) of the kept settings on test, with the cheapest tier at
    share 0 and frontier-only at share 1 -- RouteLLM's "calls to the strong model" axis."""
    if not len(keep):
        return interpolated(np.array([]), np.array([]), (0.0, cheapest_quality),
                            (1.0, frontier_quality))
    return interpolated(test.shares(keep), test.points(keep=keep)[1], (0.0, cheapest_quality),
                        (1.0, frontier_quality))


def endpoints(cheapest: Run, frontier: Run, weights: np.ndarray | None = None
              ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(cost, quality) of the cheapest single tier and of frontier-only, rows weighted."""
    w = np.ones(len(cheapest.cost)) if weights is None else weights
    low = (float(cheapest.cost @ w / w.sum()), float(_nanaverage(cheapest.correct[None], w)[0]))
    high = (float(frontier.cost @ w / w.sum()), float(_nanaverage(frontier.correct[None], w)[0]))
    return low, high


def bootstrap_aiq(sweeps: dict[str, Sweep], keep: dict[str, list[int]], frontier: Run,
                  cheapest: Run, *, n: int, seed: int) -> dict[str, np.ndarray]:
    """Val-fixed AIQ of every sweep on ``n`` bootstrap resamples of the test rows -- the same
    resample for every sweep (paired), the kept settings held fixed. Returns name -> (n,)."""
    rng = np.random.default_rng(seed)
    rows = len(frontier.cost)
    out = {name: np.zeros(n) for name in sweeps}
    for b in range(n):
        w = np.bincount(rng.integers(0, rows, rows), minlength=rows).astype(float)
        low, high = endpoints(cheapest, frontier, w)
        for name, sweep in sweeps.items():
            out[name][b] = aiq(val_fixed_curve(sweep, keep[name], low, high, w), low[0],
                               high[0])
    return out
