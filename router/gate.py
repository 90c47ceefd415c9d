"""The decision rule and the confidence gate: one implementation for the service, training's
calibration replay and the benchmark.

Inputs per request: ``p`` -- for each tier, the calibrated probability that *this tier's* answer
is acceptable (:mod:`router.classifier`); ``price`` -- the request's expected USD at each tier
(:mod:`router.pricing`); ``allowed`` -- the tiers the classifier has evidence for on requests
like this one (a tier never observed in the request's neighbourhood is not chosen by the rule).

1. **Choose** the tier maximising ``p_t - price_weight * price_t`` (ties to the more capable
   tier). ``price_weight`` (lambda, quality per USD) is the operator's trade-off: 0 buys the most
   likely answer whatever it costs; large values buy the cheapest.
2. **Check or not.** Where the neighbourhood table knows what the response scorer's check does
   on requests like this one (:class:`CheckStats`, at each of its score thresholds: per tier s
   the share of its right answers that pass, ``tpr``, and of its wrong ones, ``fpr``; and per
   tier e above, the share right when s was right, ``b``, and when s was wrong, ``a``), calling a
   cheaper tier s *and checking it at threshold t* is one more option, valued by the same rule
   with the request's own p_s:
   ``p_s tpr + p_s (1 - tpr) b_e + (1 - p_s)(1 - fpr) a_e - price_weight (price_s + P(fail)
   price_e)``, ``P(fail) = p_s (1 - tpr) + (1 - p_s)(1 - fpr)``, e the tier above s that the same
   expression values most, less ``escalation_weight`` x P(fail) (an escalation's second call
   costs latency). When the best (s, t) beats routing to the chosen tier, the request
   *cascades* from s (a failed check -- score below t -- sends it to e); a lower price weight
   buys stricter checks. A check that tells nothing (tpr = fpr) never beats routing. This is
   where checks pay (GSM8K, whose final answer and arithmetic can be checked) and not where
   they do not (a multiple-choice letter), measured per neighbourhood rather than assumed.
   Without check statistics (a table-less backend), the confidence band does it instead:
   ``escalate`` <= confidence < ``trust`` cascades the chosen tier (checked at
   ``score_threshold``), a failed check escalating by the rule among the tiers above.
3. **Confidence** = p of the chosen tier; **gate**: confidence < ``escalate`` -> *escalate* to the
   cheapest allowed tier above the chosen one whose p reaches ``trust``, or to critical if none
   does; otherwise *route*. Choosing critical always routes (nothing is above it).

Words (DESIGN, fixed): an **escalation** is the gate (low confidence) or the cascade (a failed
check) sending a request above the tier the rule chose first; the rule choosing critical in the
first place is not one.

The four knobs form one :class:`OperatingPoint`, fitted together on a validation replay of the
whole policy (``training.calibrate``) and stored with the model version. Precedence (DESIGN): an
A/B variant's point, else the model's, else the config's defaults; ``source`` says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from router.config import GateConfig
from router.tiers import TIERS, Tier

GateAction = Literal["route", "cascade", "escalate"]
ACTIONS: tuple[GateAction, ...] = ("route", "cascade", "escalate")
ROUTE, CASCADE, ESCALATE = 0, 1, 2
TOP = len(TIERS) - 1


class GateError(ValueError):
    """Scores, prices or an operating point the rule cannot use."""


@dataclass(frozen=True)
class OperatingPoint:
    """The decision's knobs. ``price_weight``: lambda in quality per USD (>= 0); ``escalate`` <=
    ``trust`` in [0, 1]; ``score_threshold`` in [0, 1]: an answer scored below it fails its
    check (band cascades, and checks after a cascade's first); ``escalation_weight``: mu, the
    quality points a cascade must gain per expected escalation (>= 0: each escalation is a
    second sequential call, latency the rule does not otherwise see; the Lagrange multiplier of
    the escalation budget). ``source``: "config" | "model:<version>" | "ab:<variant>"."""

    price_weight: float
    trust: float
    escalate: float
    score_threshold: float
    source: str = "config"
    escalation_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.escalate <= self.trust <= 1.0):
            raise GateError(f"operating point needs 0 <= escalate <= trust <= 1, got "
                            f"escalate={self.escalate}, trust={self.trust} ({self.source})")
        if not (self.price_weight >= 0.0 and np.isfinite(self.price_weight)):
            raise GateError(f"price_weight must be a finite number >= 0, got "
                            f"{self.price_weight} ({self.source})")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise GateError(f"score_threshold must be in [0, 1], got {self.score_threshold} "
                            f"({self.source})")
        if not (self.escalation_weight >= 0.0 and np.isfinite(self.escalation_weight)):
            raise GateError(f"escalation_weight must be a finite number >= 0, got "
                            f"{self.escalation_weight} ({self.source})")

    def as_dict(self) -> dict[str, float]:
        return {"price_weight": self.price_weight, "trust": self.trust,
                "escalate": self.escalate, "score_threshold": self.score_threshold,
                "escalation_weight": self.escalation_weight}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> OperatingPoint:
        """From :meth:`as_dict`'s keys; raises :class:`GateError` naming what is missing."""
        missing = [k for k in ("price_weight", "trust", "escalate", "score_threshold")
                   if k not in values]
        if missing:
            raise GateError(f"operating point ({source}) lacks {missing}")
        try:
            return cls(float(values["price_weight"]), float(values["trust"]),
                       float(values["escalate"]), float(values["score_threshold"]), source,
                       float(values.get("escalation_weight", 0.0)))
        except (TypeError, ValueError) as exc:
            raise GateError(f"operating point ({source}): {exc}") from None


def config_point(config: GateConfig) -> OperatingPoint:
    """The config's defaults (used only when the model stores no fitted point)."""
    return OperatingPoint(config.price_weight, config.trust_threshold,
                          config.escalate_threshold, config.score_threshold, "config",
                          config.escalation_weight)


def resolve_point(config: GateConfig, fitted: OperatingPoint | None = None,
                  variant: tuple[str, GateConfig] | None = None) -> OperatingPoint:
    """The point that applies: an A/B ``variant`` (name, its gate config), else ``fitted``
    (stored with the model version), else the config's defaults."""
    if variant is not None:
        name, gate = variant
        return replace(config_point(gate), source=f"ab:{name}")
    return fitted if fitted is not None else config_point(config)


# ------------------------------------------------------------------ the vectorised core

@dataclass(frozen=True)
class CheckStats:
    """What the response scorer's check does on n requests' neighbourhoods, at T score
    thresholds ``thresholds`` (T,): ``tpr`` / ``fpr`` (n, T, 3) the share of each tier's right /
    wrong answers that pass; ``right_when_right`` / ``right_when_wrong`` (n, 3, 3) ``[i, s, e]``
    the share of tier e's answers right when tier s's answer was right / wrong; ``checkable``
    (n,) the check applies here at all."""

    thresholds: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    right_when_right: np.ndarray
    right_when_wrong: np.ndarray
    checkable: np.ndarray

    ROWS = ("tpr", "fpr", "right_when_right", "right_when_wrong", "checkable")

    def take(self, index: np.ndarray | slice) -> CheckStats:
        return CheckStats(self.thresholds, *(getattr(self, f)[index] for f in self.ROWS))

    @classmethod
    def concat(cls, parts: list[CheckStats]) -> CheckStats:
        if any(not np.array_equal(p.thresholds, parts[0].thresholds) for p in parts):
            raise GateError("check statistics at different thresholds cannot be joined")
        return cls(parts[0].thresholds,
                   *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.ROWS))


@dataclass(frozen=True)
class Decisions:
    """The rule's output for n requests, arrays of shape (n,): tier indices in TIERS order."""

    chosen: np.ndarray  # the tier the rule chose
    action: np.ndarray  # ROUTE | CASCADE | ESCALATE
    target: np.ndarray  # the tier called first
    confidence: np.ndarray  # p of the chosen tier
    fail_target: np.ndarray | None = None  # after a failed first check (-1: by the rule)
    check_threshold: np.ndarray | None = None  # the first check's threshold (NaN: the point's)


def _check(p: np.ndarray, price: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    if p.ndim != 2 or p.shape[1] != len(TIERS) or price.shape != p.shape:
        raise GateError(f"p and price must both be (n, {len(TIERS)}); got {p.shape} and "
                        f"{price.shape}")
    if allowed is None:
        return np.ones(p.shape, dtype=bool)
    if allowed.shape != p.shape:
        raise GateError(f"allowed must be {p.shape}, got {allowed.shape}")
    allowed = allowed.astype(bool).copy()
    allowed[:, TOP] = True  # the frontier tier is always a candidate
    return allowed


def choose(p: np.ndarray, price: np.ndarray, price_weight: float,
           allowed: np.ndarray | None = None, above: np.ndarray | None = None) -> np.ndarray:
    """argmax over allowed tiers of ``p - price_weight * price`` (ties to the more capable
    tier); with ``above`` (n,) only tiers strictly above it count, and rows with none left get
    -1. Shapes: (n, 3), (n, 3), (n, 3) bool -> (n,) int."""
    allowed = _check(p, price, allowed)
    if above is not None:
        allowed = allowed & (np.arange(len(TIERS))[None, :] > np.asarray(above)[:, None])
    utility = np.where(allowed, p - price_weight * price, -np.inf)
    best = TOP - np.argmax(utility[:, ::-1], axis=1)
    return np.where(allowed.any(axis=1), best, -1)


def cascade_options(p: np.ndarray, price: np.ndarray, point: OperatingPoint,
                    allowed: np.ndarray, check: CheckStats
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request, the best "call s, check at t, escalate on failure" option (module
    docstring, step 2): its utility (n,), start tier s (n,), failure tier e (n,) and threshold t
    (n,); -inf / -1 / NaN where no option exists (not checkable, nothing allowed above)."""
    n = len(p)
    rows = np.arange(n)
    weight = point.price_weight
    best = np.full(n, -np.inf)
    start = np.full(n, -1)
    after = np.full(n, -1)
    threshold = np.full(n, np.nan)
    for s in range(TOP):
        ps = p[:, s:s + 1]  # (n, 1)
        above = allowed & (np.arange(len(TIERS))[None, :] > s)
        for k, t in enumerate(check.thresholds):
            tpr, fpr = check.tpr[:, k, s:s + 1], check.fpr[:, k, s:s + 1]
            fail = ps * (1 - tpr) + (1 - ps) * (1 - fpr)
            # each tier e above s as the tier a failure goes to: (n, 3)
            value = (ps * tpr + ps * (1 - tpr) * check.right_when_right[:, s, :]
                     + (1 - ps) * (1 - fpr) * check.right_when_wrong[:, s, :]
                     - weight * (price[:, s:s + 1] + fail * price)
                     - point.escalation_weight * fail)
            value = np.where(above, value, -np.inf)
            e = TOP - np.argmax(value[:, ::-1], axis=1)  # ties to the more capable tier
            here = np.where(allowed[:, s] & check.checkable, value[rows, e], -np.inf)
            better = here > best
            best = np.where(better, here, best)
            start = np.where(better, s, start)
            after = np.where(better, e, after)
            threshold = np.where(better, float(t), threshold)
    return best, start, after, threshold


def decide_many(p: np.ndarray, price: np.ndarray, point: OperatingPoint,
                allowed: np.ndarray | None = None, check: CheckStats | None = None
                ) -> Decisions:
    """The rule and the gate for n requests (module docstring, steps 1-3). ``check``: the
    requests' check statistics (None: the confidence band decides cascades)."""
    p = np.asarray(p, dtype=float)
    price = np.asarray(price, dtype=float)
    allowed = _check(p, price, allowed)
    rows = np.arange(len(p))
    chosen = choose(p, price, point.price_weight, allowed)
    confidence = p[rows, chosen]
    low = (chosen < TOP) & (confidence < point.escalate)
    if check is None:
        action = np.where((chosen == TOP) | (confidence >= point.trust), ROUTE,
                          np.where(low, ESCALATE, CASCADE))
        fail_target = check_threshold = None
        start = chosen
    else:
        utility, first, after, threshold = cascade_options(p, price, point, allowed, check)
        route_value = p[rows, chosen] - point.price_weight * price[rows, chosen]
        cascades = utility > route_value + 1e-12
        action = np.where(cascades, CASCADE, np.where(low, ESCALATE, ROUTE))
        start = np.where(cascades, first, chosen)
        fail_target = np.where(cascades, after, -1)
        check_threshold = np.where(cascades, threshold, np.nan)
    above = np.arange(len(TIERS))[None, :] > chosen[:, None]
    enough = above & allowed & (p >= point.trust)
    enough[:, TOP] |= above[:, TOP]  # critical when no cheaper tier above is trusted
    target = np.where(action == ESCALATE, np.argmax(enough, axis=1), start)
    return Decisions(chosen, action, target, confidence, fail_target, check_threshold)


def next_after_failure(p: np.ndarray, price: np.ndarray, point: OperatingPoint,
                       answered: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """The tier to call after a failed check on the answer of tier ``answered`` (n,): the
    rule's choice among the allowed tiers above it; -1 where none is (critical answered)."""
    return choose(np.asarray(p, dtype=float), np.asarray(price, dtype=float),
                  point.price_weight, allowed, above=answered)


def check_fails(score: float | np.ndarray, threshold: float | np.ndarray) -> Any:
    """An answer whose scorer P(acceptable) is below ``threshold`` fails its check; an
    unscored answer (NaN) passes: no evidence against it."""
    score = np.asarray(score, dtype=float)
    return np.where(np.isnan(score), False, score < threshold)


@dataclass(frozen=True)
class CascadeRun:
    """A whole policy replayed over recorded answers, arrays of shape (n,) / (n, 3)."""

    decisions: Decisions
    final: np.ndarray  # the tier whose answer is kept
    called: np.ndarray  # (n, 3) bool: tiers called (after mapping)
    calls: np.ndarray  # sequential calls made
    escalated: np.ndarray  # the gate or a failed check sent the row above its chosen tier
    cascaded: np.ndarray  # the row went through the cascade (at least one check)


def replay(p: np.ndarray, price: np.ndarray, point: OperatingPoint, scores: np.ndarray,
           executes: np.ndarray | None = None, *, max_calls: int = 2, cascade: bool = True,
           allowed: np.ndarray | None = None, forced: np.ndarray | None = None,
           check: CheckStats | None = None) -> CascadeRun:
    """The policy on n requests whose every tier's answer is known in advance (recorded
    outcomes, or a benchmark that asked each tier once).

    ``scores`` (n, 3): the response scorer's P(acceptable) of each tier's answer (NaN: not
    scored, passes). ``executes`` (n, 3): the tier that answers when tier j is asked (two-tier
    data: medium is answered by critical, at its price and outcome); default identity.
    ``forced`` (n,): rows an override or a pin sends to a fixed tier (-1: none): routed there,
    never cascaded. ``cascade=False``: routing only (a cascade decision is dispatched to the
    tier it starts at, unchecked). ``check``: the requests' check statistics (see
    :func:`decide_many`)."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    rows = np.arange(n)
    executes = (np.tile(np.arange(len(TIERS)), (n, 1)) if executes is None
                else np.asarray(executes, dtype=int))
    decisions = decide_many(p, price, point, allowed, check)
    action, target = decisions.action.copy(), decisions.target.copy()
    fail_target = decisions.fail_target
    if forced is not None:
        pinned = np.asarray(forced) >= 0
        action = np.where(pinned, ROUTE, action)
        target = np.where(pinned, forced, target)
        fail_target = None if fail_target is None else np.where(pinned, -1, fail_target)
        decisions = Decisions(np.where(pinned, forced, decisions.chosen), action, target,
                              decisions.confidence, fail_target, decisions.check_threshold)
    current = executes[rows, target]
    called = np.zeros((n, len(TIERS)), dtype=bool)
    called[rows, current] = True
    calls = np.ones(n, dtype=int)
    escalated = action == ESCALATE
    going = (action == CASCADE) if cascade else np.zeros(n, dtype=bool)
    cascaded = going.copy()
    for step_number in range(max_calls - 1):
        following = next_after_failure(p, price, point, current, allowed)
        threshold: float | np.ndarray = point.score_threshold
        if step_number == 0 and fail_target is not None:
            # the first check is the one the decision valued: its threshold, its tier after
            following = np.where(fail_target >= 0, fail_target, following)
            threshold = np.where(np.isfinite(decisions.check_threshold),  # type: ignore
                                 decisions.check_threshold, point.score_threshold)
        step = going & check_fails(scores[rows, current], threshold) & (following >= 0)
        if not step.any():
            break
        current = np.where(step, executes[rows, np.maximum(following, 0)], current)
        called[rows[step], current[step]] = True
        calls += step
        escalated |= step
        going = step
    return CascadeRun(decisions, current, called, calls, escalated, cascaded)


# ------------------------------------------------------------------ one request

@dataclass(frozen=True)
class GateDecision:
    """The rule's decision for one request."""

    action: GateAction
    chosen_tier: Tier  # the tier the rule chose
    confidence: float  # p of the chosen tier
    target_tier: Tier  # where the request goes first (a cascade starts at the tier it checks)
    fail_tier: Tier | None = None  # a cascade's next tier after a failed first check
    check_threshold: float | None = None  # a cascade's first check (None: the point's)

    @property
    def predicted_tier(self) -> Tier:
        """The record's ``predicted_tier`` column: the rule's choice."""
        return self.chosen_tier


def row(values: Mapping[str, float], what: str) -> np.ndarray:
    """A tier -> value mapping as a (1, 3) row in TIERS order; raises naming what is missing."""
    missing = [tier for tier in TIERS if tier not in values]
    if missing:
        raise GateError(f"{what} lacks tier(s) {missing}: {dict(values)}")
    return np.array([[float(values[tier]) for tier in TIERS]])


def decide(scores: Mapping[str, float], prices: Mapping[str, float], point: OperatingPoint,
           allowed: Mapping[str, bool] | None = None,
           check: CheckStats | None = None) -> GateDecision:
    """:func:`decide_many` for one request: ``scores`` tier -> P(acceptable), ``prices`` tier ->
    expected USD, ``allowed`` tier -> whether the rule may choose it (default: all), ``check``
    its check statistics (one row)."""
    mask = None if allowed is None else row({t: float(v) for t, v in allowed.items()},
                                            "allowed").astype(bool)
    out = decide_many(row(scores, "scores"), row(prices, "prices"), point, mask, check)
    fail = (None if out.fail_target is None or out.fail_target[0] < 0
            else TIERS[int(out.fail_target[0])])
    threshold = (None if out.check_threshold is None or not np.isfinite(out.check_threshold[0])
                 else float(out.check_threshold[0]))
    return GateDecision(ACTIONS[int(out.action[0])], TIERS[int(out.chosen[0])],
                        float(out.confidence[0]), TIERS[int(out.target[0])], fail, threshold)


def escalation_after_failure(scores: Mapping[str, float], prices: Mapping[str, float],
                             point: OperatingPoint, answered: Tier,
                             allowed: Mapping[str, bool] | None = None) -> Tier | None:
    """:func:`next_after_failure` for one request: the tier after ``answered``'s failed check,
    or None when nothing is above it."""
    mask = None if allowed is None else row({t: float(v) for t, v in allowed.items()},
                                            "allowed").astype(bool)
    following = next_after_failure(row(scores, "scores"), row(prices, "prices"), point,
                                   np.array([TIERS.index(answered)]), mask)[0]
    return None if following < 0 else TIERS[int(following)]
