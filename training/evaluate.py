"""evaluate: the per-tier heads' calibration and the stored operating point, on the test fold.

* **Heads** (:func:`training.scoring.head_metrics`): for each tier, on the outcome-labelled test
  rows that record it (rule-labelled rows never count; RouteLLM rows record no medium model),
  ECE of P(acceptable) over 15 equal-width bins, Brier and AUROC, each with a bootstrap 95%
  interval; the same for the ablation variant (``models/ablation``) when calibrate wrote one.
  The HF ``evaluate`` module ``training/metrics/calibration`` gives the pooled figure over every
  (row, tier) cell as a binary forecast.
* **Policy**: the served bundle at its stored operating point, replayed on the test fold through
  :func:`router.gate.replay` (overrides, rule, gate, cascade with the response scorer's scores of
  each tier's answer): cost and quality relative to frontier-only, escalation and tier shares,
  overall (weighted by the split's ``weight``, which undoes the tail oversampling) and per
  source; with overrides off too.
* **Slices**: per tail slice (finance, legal, medical, critical, rare) unweighted: reach-critical
  (the share of the slice's requests the policy sends to the frontier tier, overrides + rule),
  override rate and the heads' metrics.

Writes ``metrics/classifier.json``, ``metrics/gate.json``, ``plots/reliability.png``,
``plots/confusion.png`` (the chosen tier against the cheapest sufficient one) and
``plots/reliability.json`` (DVC plot data).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.classifier import Predictions, TierClassifier, load_bundle
from router.config import RouterConfig, load_config
from router.gate import TOP
from router.tiers import TIERS
from training.params import EvaluateParams, load_params
from training.paths import ABLATION, CALIBRATED, PLOTS_DIR, SCORER, TEST, metrics_file
from training.scoring import (
    CALIBRATION_SOURCES,
    PolicyTable,
    decision_prices,
    dumps,
    head_metrics,
    per_source,
    policy_table,
    reliability_table,
    replay_metrics,
    run_policy,
    targets_matrix,
)

logger = logging.getLogger(__name__)

CLASSIFIER_METRICS = metrics_file("classifier")
GATE_METRICS = metrics_file("gate")
METRIC_MODULE = Path(__file__).resolve().parent / "metrics" / "calibration"
HIGH_STAKES = ("finance", "legal", "medical")


def _slices(rows: pd.DataFrame) -> list[list[str]]:
    if "slice" not in rows:
        return [[] for _ in range(len(rows))]
    return [json.loads(s) if isinstance(s, str) else list(s) for s in rows["slice"]]


def predict(classifier: TierClassifier, texts: list[str], batch: int = 256) -> Predictions:
    """The classifier over ``texts`` in batches (a transformer pass holds a batch in memory)."""
    parts = [classifier.predict_full(texts[start:start + batch])
             for start in range(0, len(texts), batch)]
    return Predictions.concat(parts)


def pooled_calibration(p: np.ndarray, targets: np.ndarray, usable: np.ndarray,
                       bins: int) -> dict[str, float]:
    """Every known (row, tier) cell of the usable rows as one binary forecast, through the HF
    ``evaluate`` module (top-label ECE and Brier of [1 - p, p])."""
    import evaluate as hf_evaluate

    known = usable[:, None] & np.isfinite(targets)
    q, y = p[known], targets[known].astype(int)
    metric = hf_evaluate.load(str(METRIC_MODULE))
    found = metric.compute(predictions=np.column_stack([1 - q, q]).tolist(),
                           references=y.tolist(), bins=bins)
    return {"ece": float(found["ece"]), "brier": float(found["brier"]), "cells": len(q)}


def evaluate_bundle(classifier: TierClassifier, rows: pd.DataFrame, config: RouterConfig,
                    params: EvaluateParams, scores: np.ndarray | None
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Score one bundle on ``rows`` (a test fold): (classifier metrics, gate metrics, plot data).
    ``scores`` (n, 3): the response scorer's scores of each tier's answer (None: no checks).
    Used by ``register`` too, to re-score the champion on the challenger's test fold."""
    point = classifier.meta.operating_point
    if point is None:
        raise ValueError(f"{classifier.meta.version}: no stored operating point (calibrate)")
    predictions = predict(classifier, rows["text"].tolist())
    usable = rows["label_source"].isin(CALIBRATION_SOURCES).to_numpy()
    targets = targets_matrix(rows)
    heads = head_metrics(predictions.scores, targets, usable, bins=params.ece_bins,
                         bootstrap=params.bootstrap, seed=params.seed)
    table = policy_table(rows, config, scores)
    prices = decision_prices(table, predictions, config)
    max_calls = config.cascade.max_calls
    run = run_policy(table, predictions, prices, point, max_calls=max_calls)
    policy = replay_metrics(run, table)
    no_overrides = replay_metrics(run_policy(table, predictions, prices, point,
                                             max_calls=max_calls, overrides=False), table)
    routing_only = replay_metrics(run_policy(table, predictions, prices, point,
                                             max_calls=max_calls, cascade=False), table)

    slices: dict[str, Any] = {}
    row_slices = _slices(rows)
    for name in sorted({name for names in row_slices for name in names}):
        mask = np.array([name in s for s in row_slices])
        slices[name] = {"rows": int(mask.sum()), "outcome_rows": int((mask & usable).sum()),
                        "reach_critical": float(run.called[mask, TOP].mean()),
                        "override_rate": float((table.forced[mask] >= 0).mean()),
                        "heads": head_metrics(predictions.scores[mask], targets[mask],
                                              usable[mask], bins=params.ece_bins,
                                              bootstrap=max(params.bootstrap // 10, 10),
                                              seed=params.seed)}
    mean_ece = float(np.mean([h["ece"] for h in heads.values() if h.get("rows")]))
    metrics: dict[str, Any] = {
        "model_version": classifier.meta.version, "head": classifier.meta.head,
        "heads": heads, "mean_head_ece": mean_ece,
        "pooled": pooled_calibration(predictions.scores, targets, usable, params.ece_bins),
        "outcome_rows": int(usable.sum()), "rule_labelled_rows_excluded": int((~usable).sum()),
        "cost_ratio_vs_frontier": policy["cost_ratio_vs_frontier"],
        "quality_ratio_vs_frontier": policy["quality_ratio_vs_frontier"],
        "escalation_rate": policy["escalation_rate"],
        "slices": slices,
        "high_stakes_reach_critical": {name: slices[name]["reach_critical"]
                                       for name in HIGH_STAKES if name in slices},
    }
    metrics["min_high_stakes_reach_critical"] = (
        min(metrics["high_stakes_reach_critical"].values())
        if metrics["high_stakes_reach_critical"] else None)
    gate = {"operating_point": point.as_dict(), "threshold_source": point.source,
            "policy": policy, "by_source": per_source(run, table),
            "without_overrides": no_overrides, "routing_only": routing_only,
            "baselines": _baselines(table)}
    best = np.array([next((j for j in range(len(TIERS)) if row[j] == 1), 0)
                     for row in table.correct])
    known = np.isfinite(table.correct).all(axis=1)
    confusion = np.zeros((len(TIERS), len(TIERS)), dtype=int)
    np.add.at(confusion, (best[known], run.final[known]), 1)
    metrics["confusion_cheapest_sufficient_vs_kept"] = confusion.tolist()
    plot = {tier: reliability_table(predictions.scores[usable & np.isfinite(targets[:, j]), j],
                                    targets[usable & np.isfinite(targets[:, j]), j],
                                    params.ece_bins)
            for j, tier in enumerate(TIERS)}
    return metrics, gate, plot


def _baselines(table: PolicyTable) -> dict[str, Any]:
    """Every row to one tier (through ``executes``: two-tier rows asked medium get critical)."""
    from router.gate import CascadeRun, Decisions

    out = {}
    n = len(table)
    for j, tier in enumerate(TIERS):
        final = table.executes[:, j]
        called = np.zeros((n, len(TIERS)), dtype=bool)
        called[np.arange(n), final] = True
        zero = np.zeros(n, dtype=bool)
        run = CascadeRun(Decisions(final, np.zeros(n, int), final, np.ones(n)), final, called,
                         np.ones(n, int), zero, zero)
        out[tier] = replay_metrics(run, table)
    return out


def write_plots(plot: dict[str, Any], confusion: list[list[int]], folder: Path) -> None:
    """Reliability diagram per tier head and the confusion matrix, as PNG + JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for tier, style in zip(TIERS, ("o-", "s-", "^-"), strict=True):
        points = [(b["confidence"], b["accuracy"]) for b in plot[tier] if b["count"]]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=f"{tier} head")
    ax.set_xlabel("P(tier's answer acceptable)")
    ax.set_ylabel("share acceptable")
    ax.set_title("Reliability per head (test fold, outcome rows)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "reliability.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    matrix = np.array(confusion)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(len(TIERS)), TIERS)
    ax.set_yticks(range(len(TIERS)), TIERS)
    ax.set_xlabel("kept answer's tier")
    ax.set_ylabel("cheapest acceptable tier")
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=100)
    plt.close(fig)
    rows = [{"bin": i, "confidence": b["confidence"], "accuracy": b["accuracy"], "when": tier}
            for tier in TIERS for i, b in enumerate(plot[tier]) if b["count"]]
    (folder / "reliability.json").write_text(json.dumps(rows, indent=1) + "\n")


def fold_answer_scores(rows: pd.DataFrame, config: RouterConfig) -> np.ndarray | None:
    """The response scorer's scores of each tier's answer to a fold's rows (calibrate's)."""
    from training.calibrate import answer_scores

    return answer_scores(rows, config, SCORER)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    config = load_config(params.calibrate.router_config)
    rows = pd.read_parquet(TEST)
    scores = fold_answer_scores(rows, config)
    metrics, gate, plot = evaluate_bundle(load_bundle(CALIBRATED), rows, config,
                                          params.evaluate, scores)
    if (ABLATION / "router_model.json").exists():
        ablation, ablation_gate, _ = evaluate_bundle(load_bundle(ABLATION), rows, config,
                                                     params.evaluate, scores)
        metrics["ablation"] = {"head": ablation["head"], "heads": ablation["heads"],
                               "mean_head_ece": ablation["mean_head_ece"],
                               "policy": ablation_gate["policy"],
                               "by_source": ablation_gate["by_source"]}
    CLASSIFIER_METRICS.parent.mkdir(parents=True, exist_ok=True)
    CLASSIFIER_METRICS.write_text(dumps(metrics))
    GATE_METRICS.write_text(dumps(gate))
    write_plots(plot, metrics["confusion_cheapest_sufficient_vs_kept"], PLOTS_DIR)
    policy = gate["policy"]
    logger.info("evaluate: %s heads, mean ECE %.4f; stored point: cost %.3f, quality %.3f of "
                "frontier, escalation %.3f; high-stakes reach-critical %s", metrics["head"],
                metrics["mean_head_ece"], policy["cost_ratio_vs_frontier"],
                policy["quality_ratio_vs_frontier"], policy["escalation_rate"],
                {k: round(v, 3) for k, v in metrics["high_stakes_reach_critical"].items()})


if __name__ == "__main__":
    main()
