"""Shared by calibrate, evaluate and register: logits, calibration metrics, policy replay.

Nothing here reads params.yaml or writes files; the stage modules do.

Policy replay "from the outcome tables": each labelled row carries, per tier, whether that tier's
recorded answer was right (``outcomes``) and what it cost (``costs``; estimated from the config's
prices where the data records none). The gate's decision for a row picks a tier; the row then
scores that tier's recorded correctness and cost. No HTTP: the numbers are what the request path
would get from the simulator, computed directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.config import RouterConfig
from router.gate import Thresholds
from router.overrides import DomainOverrides
from router.tiers import TIERS
from training.labellers import json_map

# Rows labelled by a stated rule (support intents) never count toward calibration metrics.
CALIBRATION_SOURCES = ("outcomes", "judge")
# A rough English average for estimating prompt tokens where the data records no cost.
CHARS_PER_TOKEN = 4.0
# Output tokens assumed for a cost estimate (short multiple-choice / numeric answers).
ESTIMATED_OUTPUT_TOKENS = 64


def model_logits(model_dir: Path, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Raw logits ``(n, 3)`` in TIERS order of the classifier in ``model_dir``."""
    from router.classifier import InProcessClassifier

    classifier = InProcessClassifier(model_dir)
    chunks = [classifier.logits(list(texts[start:start + batch_size])).cpu().numpy()
              for start in range(0, len(texts), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(TIERS)))


def softmax(logits: np.ndarray, temperature: float = 1.0,
            bias: Sequence[float] | None = None) -> np.ndarray:
    """``softmax(logits / temperature + bias)`` row-wise; ``logits`` (n, k), ``bias`` (k,)."""
    z = logits / temperature
    if bias is not None:
        z = z + np.asarray(bias, dtype=float)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def label_indices(labels: Sequence[str]) -> np.ndarray:
    return np.array([TIERS.index(label) for label in labels])


@dataclass(frozen=True)
class Scaling:
    """A fitted post-hoc calibration: ``softmax(logits / temperature + bias)``."""

    temperature: float = 1.0
    bias: tuple[float, ...] = (0.0,) * len(TIERS)  # TIERS order; the last is pinned at 0

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature, self.bias)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood (Guo et al. 2017), in [0.05, 20]."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        probs = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + 1e-12)))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def fit_scaling(logits: np.ndarray, labels: np.ndarray, method: str) -> Scaling:
    """Fit ``method`` on ``logits`` (n, k) and integer ``labels`` (n,) by minimising the NLL.

    ``temperature``: one scalar (Guo et al. 2017). ``bias_temperature``: the scalar plus one
    logit offset per class (bias-corrected temperature scaling, Alexandari et al. 2020). The
    offsets absorb a shift in class priors between the train fold and the data scored -- here
    split's tail boost moves critical rows into validation/test (about 26% critical in train,
    33% in validation and test) -- which a single temperature cannot: it only sharpens or
    flattens.
    """
    temperature = fit_temperature(logits, labels)
    if method == "temperature":
        return Scaling(temperature)
    if method != "bias_temperature":
        raise ValueError(f"unknown calibration method {method!r}")
    from scipy.optimize import minimize

    k = logits.shape[1]
    rows = np.arange(len(labels))

    def nll(p: np.ndarray) -> float:
        z = logits * p[0] + np.r_[p[1:], 0.0]  # p[0] = 1/T; the last offset is the reference
        z = z - z.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_probs[rows, labels].mean())

    start = np.r_[1.0 / temperature, np.zeros(k - 1)]
    result = minimize(nll, start, method="L-BFGS-B",
                      bounds=[(1 / 20.0, 1 / 0.05)] + [(-10.0, 10.0)] * (k - 1))
    return Scaling(float(1.0 / result.x[0]), tuple(float(b) for b in np.r_[result.x[1:], 0.0]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15,
                               weights: np.ndarray | None = None) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins (weighted when given)."""
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=float)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = weights.sum()
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            w = weights[mask]
            gap = abs(np.average(correct[mask], weights=w)
                      - np.average(confidence[mask], weights=w))
            ece += w.sum() / total * gap
    return float(ece)


def brier_score(probs: np.ndarray, labels: np.ndarray,
                weights: np.ndarray | None = None) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot label (0 best, 2 worst)."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.average(((probs - onehot) ** 2).sum(axis=1), weights=weights))


def reliability_table(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Per bin: ``{"lower", "upper", "count", "confidence", "accuracy"}`` (for plots)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [{"lower": float(edges[b]), "upper": float(edges[b + 1]),
             "count": int((index == b).sum()),
             "confidence": float(confidence[index == b].mean()) if (index == b).any() else None,
             "accuracy": float(correct[index == b].mean()) if (index == b).any() else None}
            for b in range(bins)]


def bootstrap_interval(values: Sequence[Any], statistic, *, n: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over resampled row indices."""
    rng = np.random.default_rng(seed)
    size = len(values)
    stats = [statistic(rng.integers(0, size, size)) for _ in range(n)]
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


@dataclass(frozen=True)
class OutcomeTable:
    """Per row and tier: recorded correctness (bool, NaN = unknown) and cost (USD)."""

    correct: np.ndarray  # (n, 3) float: 1.0 right, 0.0 wrong, NaN unknown
    cost: np.ndarray  # (n, 3) USD

    def subset(self, mask: np.ndarray) -> OutcomeTable:
        return OutcomeTable(self.correct[mask], self.cost[mask])


def tier_prices(config: RouterConfig) -> dict[str, tuple[float, float]]:
    """Mean (input, output) USD per token over each tier's deployments."""
    prices = {}
    for tier in TIERS:
        deployments = config.deployments(tier)
        prices[tier] = (
            float(np.mean([d.litellm_params.input_cost_per_token for d in deployments])),
            float(np.mean([d.litellm_params.output_cost_per_token for d in deployments])))
    return prices


def outcome_table(rows: pd.DataFrame, config: RouterConfig) -> OutcomeTable:
    """The outcome table of ``rows`` (harvest columns ``outcomes``, ``scores``, ``costs``)."""
    prices = tier_prices(config)
    correct = np.full((len(rows), len(TIERS)), np.nan)
    cost = np.zeros((len(rows), len(TIERS)))
    for i, (outcomes, costs, text) in enumerate(zip(rows["outcomes"], rows["costs"],
                                                    rows["text"], strict=True)):
        outcomes = json_map(outcomes, where=f"row {i}: outcomes")
        costs = json_map(costs, where=f"row {i}: costs")
        tokens = len(text) / CHARS_PER_TOKEN
        for j, tier in enumerate(TIERS):
            value = outcomes.get(tier)
            if value is not None:
                correct[i, j] = float(bool(value))
            recorded = costs.get(tier)
            cost[i, j] = (float(recorded) if recorded is not None else
                          tokens * prices[tier][0] + ESTIMATED_OUTPUT_TOKENS * prices[tier][1])
    return OutcomeTable(correct, cost)


def policy_tiers(probs: np.ndarray, thresholds: Thresholds,
                 overridden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The tier index the gate sends each row to, and whether it escalated: ``(n,), (n,)``.

    Vectorised :func:`router.gate.decide` (tests hold the two equal). Cascade decisions go to
    the predicted tier (what the request path does until the response scorer exists).
    Overridden rows go to critical.
    """
    top = len(TIERS) - 1
    # argmax with ties to the more capable tier, as decide() does
    predicted = top - np.argmax(probs[:, ::-1], axis=1)
    confidence = probs[np.arange(len(probs)), predicted]
    escalated = (confidence < thresholds.escalate) & (predicted < top)
    cumulative = np.cumsum(probs, axis=1)
    # cheapest tier above the prediction whose cumulative probability reaches trust
    above = np.arange(len(TIERS))[None, :] > predicted[:, None]
    enough = above & (cumulative >= thresholds.trust)
    enough[:, top] |= above[:, top]  # critical if nothing cheaper is enough
    escalation_target = np.argmax(enough, axis=1)
    target = np.where(escalated, escalation_target, predicted)
    if overridden is not None:
        target = np.where(overridden, top, target)
        escalated = escalated & ~overridden
    return target, escalated


def overridden_rows(texts: Sequence[str], config: RouterConfig) -> np.ndarray:
    overrides = DomainOverrides(config.overrides)
    return np.array([overrides.match(text) is not None for text in texts], dtype=bool)


def replay(table: OutcomeTable, target: np.ndarray, weights: np.ndarray | None = None
           ) -> dict[str, float]:
    """Cost and quality of sending each row to ``target``, and relative to frontier-only.

    Rows whose chosen tier's outcome is unknown are left out of both policies' quality.
    """
    n = len(target)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    rows = np.arange(n)
    chosen_correct = table.correct[rows, target]
    frontier_correct = table.correct[:, -1]
    known = ~np.isnan(chosen_correct) & ~np.isnan(frontier_correct)
    cost = float(np.average(table.cost[rows, target], weights=weights))
    frontier_cost = float(np.average(table.cost[:, -1], weights=weights))
    quality = float(np.average(chosen_correct[known], weights=weights[known])) if known.any() \
        else float("nan")
    frontier_quality = float(np.average(frontier_correct[known], weights=weights[known])) \
        if known.any() else float("nan")
    return {"cost_per_task": cost, "quality": quality, "frontier_cost_per_task": frontier_cost,
            "frontier_quality": frontier_quality,
            "cost_ratio_vs_frontier": cost / frontier_cost if frontier_cost else float("nan"),
            "quality_ratio_vs_frontier": quality / frontier_quality if frontier_quality
            else float("nan"),
            "tier_share": {tier: float(np.average(target == j, weights=weights))
                           for j, tier in enumerate(TIERS)}}
