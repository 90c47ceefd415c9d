"""evaluate: calibration, accuracy and the fitted policy's cost/quality on the test fold.

Calibration metrics (ECE with 15 equal-width bins and a bootstrap interval, Brier) come from the
local ``evaluate`` module ``training/metrics/calibration`` and count only outcome-labelled rows
(rows labelled by a rule never count). Overall figures are weighted by the split's ``weight``
column, which undoes the tail oversampling of the evaluation folds; per-slice figures are not.
The policy replay uses the outcome tables (no HTTP), overrides included.

Writes ``metrics/classifier.json``, ``metrics/gate.json``, ``plots/reliability.png``,
``plots/confusion.png`` and ``plots/reliability.json`` (DVC plot data).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from router.classifier import MODEL_META
from router.config import RouterConfig, load_config
from router.gate import Thresholds
from router.tiers import TIERS
from training.params import EvaluateParams, load_params
from training.paths import CALIBRATED, PLOTS_DIR, TEST, metrics_file
from training.scoring import (
    CALIBRATION_SOURCES,
    Scaling,
    bootstrap_interval,
    expected_calibration_error,
    label_indices,
    model_logits,
    outcome_table,
    overridden_rows,
    policy_tiers,
    reliability_table,
    replay,
    softmax,
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


def _classification(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                    bins: int) -> dict[str, Any]:
    predicted = probs.argmax(axis=1)
    recalls = recall_score(labels, predicted, labels=list(range(len(TIERS))), average=None,
                           sample_weight=weights, zero_division=0)
    return {
        "ece": expected_calibration_error(probs, labels, bins, weights),
        "accuracy": float(np.average(predicted == labels, weights=weights)),
        "macro_f1": float(f1_score(labels, predicted, labels=list(range(len(TIERS))),
                                   average="macro", sample_weight=weights, zero_division=0)),
        "recall": {tier: float(r) for tier, r in zip(TIERS, recalls, strict=True)},
        "critical_recall": float(recalls[-1]),
    }


def evaluate_model(logits: np.ndarray, scaling: Scaling, thresholds: Thresholds,
                   rows: pd.DataFrame, config: RouterConfig, params: EvaluateParams
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Score one model on ``rows`` (a test fold). ``logits``: (n, 3) raw, TIERS order.

    Returns (classifier metrics, gate metrics, plot data). Used by ``register`` too, to re-score
    the champion on the challenger's test fold.
    """
    import evaluate as hf_evaluate

    usable = rows["label_source"].isin(CALIBRATION_SOURCES).to_numpy()
    cal_rows = rows[usable].reset_index(drop=True)
    labels = label_indices(cal_rows["label"].tolist())
    weights = cal_rows["weight"].to_numpy(dtype=float) if "weight" in cal_rows else None
    raw = softmax(logits[usable])
    all_probs = scaling.probs(logits)
    probs = all_probs[usable]
    metric = hf_evaluate.load(str(METRIC_MODULE))
    headline = metric.compute(predictions=probs.tolist(), references=labels.tolist(),
                              bins=params.ece_bins,
                              weights=None if weights is None else weights.tolist())
    before = metric.compute(predictions=raw.tolist(), references=labels.tolist(),
                            bins=params.ece_bins,
                            weights=None if weights is None else weights.tolist())

    def ece_of(indices: np.ndarray) -> float:
        return expected_calibration_error(probs[indices], labels[indices], params.ece_bins,
                                          None if weights is None else weights[indices])

    classification = _classification(probs, labels, weights, params.ece_bins)
    metrics: dict[str, Any] = {
        **classification,
        "ece": headline["ece"],
        "ece_ci95": list(bootstrap_interval(labels, ece_of, n=params.bootstrap,
                                            seed=params.seed)),
        "ece_before_temperature": before["ece"],
        "brier": headline["brier"],
        "brier_before_temperature": before["brier"],
        "ece_rows": int(usable.sum()),
        "rule_labelled_rows_excluded": int((~usable).sum()),
        "temperature": scaling.temperature,
        "bias": list(scaling.bias),
        "confusion": confusion_matrix(labels, probs.argmax(axis=1),
                                      labels=list(range(len(TIERS)))).tolist(),
    }

    # The fitted policy, replayed on the outcome tables (overrides included).
    overridden = overridden_rows(rows["text"].tolist(), config)
    target, escalated = policy_tiers(all_probs, thresholds, overridden)
    table = outcome_table(rows, config)
    all_weights = rows["weight"].to_numpy(dtype=float) if "weight" in rows else None
    outcome_rows = ~np.isnan(table.correct[:, -1])
    known = table.subset(outcome_rows)
    known_weights = None if all_weights is None else all_weights[outcome_rows]
    policy = replay(known, target[outcome_rows], known_weights)
    metrics["cost_ratio_vs_frontier"] = policy["cost_ratio_vs_frontier"]
    metrics["quality_ratio_vs_frontier"] = policy["quality_ratio_vs_frontier"]

    # Slices: unweighted, each with its counts.
    slices: dict[str, Any] = {}
    row_slices = _slices(rows)
    names = sorted({name for names in row_slices for name in names})
    for name in names:
        mask = np.array([name in s for s in row_slices])
        cal_mask = mask[usable]
        entry: dict[str, Any] = {"rows": int(mask.sum()), "outcome_rows": int(cal_mask.sum()),
                                 "reach_critical": float((target[mask] == len(TIERS) - 1).mean()),
                                 "override_rate": float(overridden[mask].mean())}
        if cal_mask.sum() >= 1:
            entry.update(_classification(probs[cal_mask], labels[cal_mask], None,
                                         params.ece_bins))
        slices[name] = entry
    metrics["slices"] = slices
    metrics["high_stakes_reach_critical"] = {
        name: slices[name]["reach_critical"] for name in HIGH_STAKES if name in slices}

    gate = {
        "thresholds": thresholds.as_dict(), "threshold_source": thresholds.source,
        "escalation_rate": float(np.average(escalated, weights=all_weights)),
        "override_rate": float(np.average(overridden, weights=all_weights)),
        "policy": policy,
        "baselines": {tier: replay(known, np.full(int(outcome_rows.sum()), j), known_weights)
                      for j, tier in enumerate(TIERS)},
        "outcome_rows": int(outcome_rows.sum()),
    }
    plot = {"after": reliability_table(probs, labels, params.ece_bins),
            "before": reliability_table(raw, labels, params.ece_bins)}
    return metrics, gate, plot


def write_plots(plot: dict[str, Any], confusion: list[list[int]], folder: Path) -> None:
    """Reliability diagram (before/after calibration) and confusion matrix as PNG + JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for key, style in (("before", "o-"), ("after", "s-")):
        points = [(b["confidence"], b["accuracy"]) for b in plot[key] if b["count"]]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=f"{key} calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (test fold, outcome-labelled rows)")
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
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=100)
    plt.close(fig)
    rows = [{"bin": i, "confidence": b["confidence"], "accuracy": b["accuracy"], "when": key}
            for key in ("before", "after") for i, b in enumerate(plot[key]) if b["count"]]
    (folder / "reliability.json").write_text(json.dumps(rows, indent=1) + "\n")


def load_bundle(model_dir: Path) -> tuple[Scaling, Thresholds]:
    """Calibration and fitted thresholds stored with a calibrated model."""
    meta = json.loads((model_dir / MODEL_META).read_text())
    thresholds = meta["thresholds"]
    scaling = Scaling(float(meta.get("temperature", 1.0)),
                      tuple(float(b) for b in meta.get("bias", Scaling().bias)))
    return scaling, Thresholds(
        thresholds["escalate"], thresholds["trust"], f"model:{meta.get('version')}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    config = load_config(params.calibrate.router_config)
    rows = pd.read_parquet(TEST)
    scaling, thresholds = load_bundle(CALIBRATED)
    logits = model_logits(CALIBRATED, rows["text"].tolist())
    metrics, gate, plot = evaluate_model(logits, scaling, thresholds, rows, config,
                                         params.evaluate)
    CLASSIFIER_METRICS.parent.mkdir(parents=True, exist_ok=True)
    CLASSIFIER_METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    GATE_METRICS.write_text(json.dumps(gate, indent=2) + "\n")
    write_plots(plot, metrics["confusion"], PLOTS_DIR)
    logger.info("evaluate: ECE %.4f (95%% CI %.4f-%.4f; %.4f before T) on %d rows; critical "
                "recall %.3f; cost ratio %.3f, quality ratio %.3f vs frontier",
                metrics["ece"], *metrics["ece_ci95"], metrics["ece_before_temperature"],
                metrics["ece_rows"], metrics["critical_recall"],
                metrics["cost_ratio_vs_frontier"], metrics["quality_ratio_vs_frontier"])


if __name__ == "__main__":
    main()
