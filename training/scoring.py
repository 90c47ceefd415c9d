"""Shared by calibrate, evaluate and register: the policy replay table and the metrics.

Nothing here reads params.yaml or writes files; the stage modules do.

**Policy replay "from the outcome tables".** Each labelled row carries, per tier, whether that
tier's answer was acceptable (``targets``, the label stage's column), how long the answer was
(``output_tokens``) and the prompt's length (``prompt_tokens``). The whole policy -- overrides,
the decision rule, the gate, the cascade with the response scorer's check of each tier's answer
-- runs through :func:`router.gate.replay`, the one implementation the service and the benchmark
use; a row then scores the kept answer's target and pays every call it made. What a call costs
is the configured per-token prices x the row's tokens (what LiteLLM charges the simulator's
answers); the decision itself uses *expected* prices (:mod:`router.pricing`).

A tier a row does not record is answered by the next tier up that it does record, at that
tier's price and outcome: RouteLLM's MMLU / GSM8K / MT-Bench rows record no medium model, so a
medium choice there is GPT-4's answer at GPT-4's price -- never GPT-4's outcome at a medium
price (``executes``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from router.classifier import Predictions
from router.config import RouterConfig
from router.gate import TOP, CascadeRun, OperatingPoint, replay
from router.overrides import DomainOverrides
from router.pricing import expected_prices, price_matrix, tier_prices
from router.tiers import TIERS
from training.labellers import json_map

# Rows labelled by a stated rule (support intents) never count toward calibration metrics.
CALIBRATION_SOURCES = ("outcomes", "judge")


def _tier_matrix(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A per-tier JSON column as (n, 3) floats; NaN where a tier is absent or null."""
    out = np.full((len(rows), len(TIERS)), np.nan)
    for i, cell in enumerate(rows[column]):
        values = json_map(cell, where=f"row {i} {column}")
        for j, tier in enumerate(TIERS):
            if values.get(tier) is not None:
                out[i, j] = float(values[tier])
    return out


def targets_matrix(rows: pd.DataFrame) -> np.ndarray:
    """The ``targets`` column as (n, 3) floats: 1 acceptable, 0 not, NaN not recorded."""
    return _tier_matrix(rows, "targets")


def _tokens(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    prompt = np.array([float(v) if v is not None and not (isinstance(v, float) and math.isnan(v))
                       else 0.0 for v in rows["prompt_tokens"]])
    return prompt, _tier_matrix(rows, "output_tokens")


def executes_matrix(known: np.ndarray) -> np.ndarray:
    """(n, 3) int: the tier answering row i when tier j is asked -- j itself where the row
    records j, else the next tier up that it records (else j: nothing to score there)."""
    n = len(known)
    out = np.tile(np.arange(len(TIERS)), (n, 1))
    for j in range(len(TIERS) - 2, -1, -1):
        alias = ~known[:, j] & known[:, j + 1:].any(axis=1)
        out[alias, j] = out[alias, j + 1]
    return out


@dataclass(frozen=True)
class PolicyTable:
    """Per row (n) and tier (3): what a replay of the policy needs (module docstring)."""

    correct: np.ndarray  # (n, 3) target of the answer given when tier j is asked (NaN unknown)
    cost: np.ndarray  # (n, 3) USD charged when tier j is asked
    executes: np.ndarray  # (n, 3) int
    prompt_tokens: np.ndarray  # (n,)
    output_tokens: np.ndarray  # (n, 3) the recorded answers' tokens (NaN unknown)
    forced: np.ndarray  # (n,) an override's tier index, -1 none
    scores: np.ndarray  # (n, 3) the scorer's P(acceptable) of each tier's answer (NaN: none)
    weights: np.ndarray  # (n,) the split's weights (undo the tail oversampling)
    sources: np.ndarray  # (n,) str

    def __len__(self) -> int:
        return len(self.correct)

    def subset(self, mask: np.ndarray) -> PolicyTable:
        return PolicyTable(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def policy_table(rows: pd.DataFrame, config: RouterConfig,
                 scores: np.ndarray | None = None, output_fill: np.ndarray | None = None
                 ) -> PolicyTable:
    """The replay table of ``rows`` (label + split columns). ``scores`` (n, 3): the response
    scorer's scores of each tier's answer (None: no check is possible, every answer passes).
    ``output_fill`` (n, 3): output tokens to charge where a row records none (e.g. the
    neighbourhood's expectation); default the tier's mean over the rows."""
    targets = targets_matrix(rows)
    known = np.isfinite(targets)
    executes = executes_matrix(known)
    r = np.arange(len(rows))[:, None]
    prompt, output = _tokens(rows)
    if output_fill is None:
        means = np.array([np.nanmean(output[:, j]) if np.isfinite(output[:, j]).any() else 0.0
                          for j in range(len(TIERS))])
        output_fill = np.tile(means, (len(rows), 1))
    charged = np.where(np.isfinite(output), output, output_fill)
    prices = price_matrix(tier_prices(config))
    own_cost = expected_prices(prompt, charged, prices)
    overrides = DomainOverrides(config.overrides)
    forced = np.array([-1 if overrides.match(text) is None else TOP for text in rows["text"]])
    weights = (rows["weight"].to_numpy(dtype=float) if "weight" in rows
               else np.ones(len(rows)))
    answer_scores = (np.full((len(rows), len(TIERS)), np.nan) if scores is None
                     else np.asarray(scores, dtype=float))
    return PolicyTable(correct=targets[r, executes], cost=own_cost[r, executes],
                       executes=executes, prompt_tokens=prompt, output_tokens=output,
                       forced=forced, scores=answer_scores[r, executes], weights=weights,
                       sources=rows["source"].to_numpy(dtype=object))


def decision_prices(table: PolicyTable, predictions: Predictions,
                    config: RouterConfig) -> np.ndarray:
    """(n, 3) expected USD the rule weighs: prompt tokens x input price + the classifier's
    expected output tokens x output price (what the service computes per request)."""
    return expected_prices(table.prompt_tokens, predictions.output_tokens,
                           price_matrix(tier_prices(config)))


def run_policy(table: PolicyTable, predictions: Predictions, prices: np.ndarray,
               point: OperatingPoint, *, max_calls: int, cascade: bool = True,
               overrides: bool = True, allowed: np.ndarray | None = None) -> CascadeRun:
    """:func:`router.gate.replay` over the table (``allowed`` defaults to the predictions'),
    with the predictions' check statistics deciding the cascades."""
    return replay(predictions.scores, prices, point, table.scores, table.executes,
                  max_calls=max_calls, cascade=cascade,
                  allowed=predictions.allowed if allowed is None else allowed,
                  forced=table.forced if overrides else None, check=predictions.check)


def _avg(values: np.ndarray, weights: np.ndarray) -> float:
    known = np.isfinite(values)
    if not known.any() or weights[known].sum() <= 0:
        return float("nan")
    return float(np.average(values[known], weights=weights[known]))


def replay_metrics(run: CascadeRun, table: PolicyTable) -> dict[str, Any]:
    """Cost and quality of a replayed policy and relative to frontier-only, on the rows whose
    kept answer and frontier answer both have a known target; escalation and tier shares."""
    rows = np.arange(len(table))
    spent = (run.called * table.cost).sum(axis=1)
    kept = table.correct[rows, run.final]
    frontier = table.correct[:, TOP]
    both = np.isfinite(kept) & np.isfinite(frontier)
    w = table.weights
    cost, frontier_cost = _avg(spent, w), _avg(table.cost[:, TOP], w)
    quality = _avg(np.where(both, kept, np.nan), w)
    frontier_quality = _avg(np.where(both, frontier, np.nan), w)
    return {
        "cost_per_task": cost, "quality": quality,
        "frontier_cost_per_task": frontier_cost, "frontier_quality": frontier_quality,
        "cost_ratio_vs_frontier": cost / frontier_cost if frontier_cost else float("nan"),
        "quality_ratio_vs_frontier": (quality / frontier_quality if frontier_quality
                                      else float("nan")),
        "escalation_rate": _avg(run.escalated.astype(float), w),
        "cascade_rate": _avg(run.cascaded.astype(float), w),
        "frontier_call_share": _avg(run.called[:, TOP].astype(float), w),
        "override_rate": _avg((table.forced >= 0).astype(float), w),
        "tier_share": {tier: _avg((run.final == j).astype(float), w)
                       for j, tier in enumerate(TIERS)},
        "rows": len(table), "quality_rows": int(both.sum()),
    }


def per_source(run: CascadeRun, table: PolicyTable) -> dict[str, dict[str, Any]]:
    """:func:`replay_metrics` restricted to each source's rows."""
    out = {}
    for source in sorted(set(table.sources.tolist())):
        mask = table.sources == source
        out[source] = replay_metrics(sub_run(run, mask), table.subset(mask))
    return out


def sub_run(run: CascadeRun, mask: np.ndarray) -> CascadeRun:
    from router.gate import Decisions

    d = run.decisions
    return CascadeRun(Decisions(d.chosen[mask], d.action[mask], d.target[mask],
                                d.confidence[mask]),
                      run.final[mask], run.called[mask], run.calls[mask], run.escalated[mask],
                      run.cascaded[mask])


# ------------------------------------------------------------------ metrics of probabilities

def binary_ece(p: np.ndarray, y: np.ndarray, bins: int = 15,
               weights: np.ndarray | None = None) -> float:
    """ECE of P(y = 1) itself over ``bins`` equal-width bins of [0, 1] (weighted when given):
    what a threshold on the probability acts on."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    total = w.sum()
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += w[mask].sum() / total * abs(np.average(y[mask], weights=w[mask])
                                               - np.average(p[mask], weights=w[mask]))
    return float(ece)


def brier(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    return float(np.average((np.asarray(p) - np.asarray(y)) ** 2, weights=weights))


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def log_loss(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    y = np.asarray(y, dtype=float)
    return float(np.average(-(y * np.log(p) + (1 - y) * np.log(1 - p)), weights=weights))


def masked_log_loss(p: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary log loss over the known (row, tier) cells of ``targets`` (n, 3)."""
    known = np.isfinite(targets)
    return log_loss(p[known], targets[known])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15,
                               weights: np.ndarray | None = None) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins (weighted when given);
    ``probs`` (n, k), integer ``labels`` (n,)."""
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
            ece += w.sum() / total * abs(np.average(correct[mask], weights=w)
                                         - np.average(confidence[mask], weights=w))
    return float(ece)


def brier_score(probs: np.ndarray, labels: np.ndarray,
                weights: np.ndarray | None = None) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot label (0 best, 2 worst)."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.average(((probs - onehot) ** 2).sum(axis=1), weights=weights))


def reliability_table(p: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict]:
    """Per bin of P: ``{"lower", "upper", "count", "confidence", "accuracy"}`` (for plots)."""
    index = np.clip((np.asarray(p) * bins).astype(int), 0, bins - 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return [{"lower": float(edges[b]), "upper": float(edges[b + 1]),
             "count": int((index == b).sum()),
             "confidence": float(p[index == b].mean()) if (index == b).any() else None,
             "accuracy": float(y[index == b].mean()) if (index == b).any() else None}
            for b in range(bins)]


def bootstrap_interval(values: Sequence[Any], statistic: Callable[[np.ndarray], float], *,
                       n: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over resampled row indices."""
    rng = np.random.default_rng(seed)
    size = len(values)
    stats = [statistic(rng.integers(0, size, size)) for _ in range(n)]
    stats = [s for s in stats if math.isfinite(s)]
    if not stats:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def head_metrics(p: np.ndarray, targets: np.ndarray, usable: np.ndarray, *, bins: int,
                 bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per tier, on the rows that record it among ``usable`` (outcome-labelled): ECE (15
    equal-width bins of P), Brier and AUROC of P(acceptable), each with a bootstrap 95%
    interval over those rows, their count, the observed rate and the mean P."""
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "ece": lambda q, y: binary_ece(q, y, bins), "brier": brier, "auroc": auroc}
    out: dict[str, dict[str, Any]] = {}
    for j, tier in enumerate(TIERS):
        rows = np.flatnonzero(usable & np.isfinite(targets[:, j]))
        if len(rows) == 0:
            out[tier] = {"rows": 0}
            continue
        pj, yj = p[rows, j], targets[rows, j]
        entry: dict[str, Any] = {"rows": len(rows), "rate": float(yj.mean()),
                                 "mean_p": float(pj.mean())}
        for name, fn in metrics.items():
            entry[name] = fn(pj, yj)
            entry[f"{name}_ci95"] = list(bootstrap_interval(
                rows, lambda index, fn=fn, pj=pj, yj=yj: fn(pj[index], yj[index]),
                n=bootstrap, seed=seed))
        out[tier] = entry
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (nested) replaced by None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(json_safe(value), indent=2) + "\n"
