from __future__ import annotations

from pathlib import Path

import pandas as pd

from router.config import RouterConfig
from router.gate import Thresholds
from tests.training.test_calibrate import synthetic_logits
from training.evaluate import evaluate_model, write_plots
from training.params import EvaluateParams
from training.scoring import Scaling, fit_temperature, label_indices

PARAMS = EvaluateParams(bootstrap=50)
KEYS = {"ece", "ece_before_temperature", "ece_ci95", "brier", "macro_f1", "critical_recall",
        "cost_ratio_vs_frontier", "quality_ratio_vs_frontier", "slices", "ece_rows"}


def test_metrics_plots_and_slices(fold_rows: pd.DataFrame, router_config: RouterConfig,
                                  tmp_path: Path) -> None:
    rows = fold_rows.copy()
    rows.loc[:49, "label_source"] = "rule"  # rule-labelled rows never count for calibration
    logits = synthetic_logits(rows, 3.0)
    temperature = fit_temperature(logits, label_indices(rows["label"].tolist()))
    metrics, gate, plot = evaluate_model(logits, Scaling(temperature),
                                         Thresholds(0.5, 0.8, "model:t"), rows, router_config,
                                         PARAMS)
    assert set(metrics) >= KEYS
    assert metrics["ece_rows"] == len(rows) - 50
    assert metrics["rule_labelled_rows_excluded"] == 50
    assert metrics["ece"] < metrics["ece_before_temperature"]
    low, high = metrics["ece_ci95"]
    assert low <= metrics["ece"] <= high
    assert metrics["slices"]["critical"]["rows"] == int((rows["label"] == "critical").sum())
    assert 0 < metrics["cost_ratio_vs_frontier"] <= 1.0
    assert gate["thresholds"] == {"escalate": 0.5, "trust": 0.8}
    assert gate["baselines"]["critical"]["cost_ratio_vs_frontier"] == 1.0
    write_plots(plot, metrics["confusion"], tmp_path)
    for name in ("reliability.png", "confusion.png", "reliability.json"):
        assert (tmp_path / name).stat().st_size > 0
