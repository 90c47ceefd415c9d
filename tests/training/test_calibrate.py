from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.classifier import MODEL_META, load_classifier
from router.config import RouterConfig
from router.gate import Thresholds, decide
from router.tiers import TIERS
from training.calibrate import calibrate, fit_trust, write_bundle
from training.params import CalibrateParams
from training.scoring import (
    expected_calibration_error,
    fit_scaling,
    fit_temperature,
    policy_tiers,
    softmax,
)


def synthetic_logits(rows: pd.DataFrame, temperature: float, seed: int = 0) -> np.ndarray:
    """Logits whose softmax at ``temperature`` is calibrated for the rows' labels."""
    rng = np.random.default_rng(seed)
    labels = np.array([TIERS.index(label) for label in rows["label"]])
    logits = rng.normal(0.0, 1.0, (len(rows), 3))
    logits[np.arange(len(rows)), labels] += 1.5  # informative, not perfect
    return logits * temperature  # over-confident by ``temperature`` at T = 1


def test_temperature_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    assert abs(fit_temperature(logits * 3.0, labels) - 3.0) < 0.3


def test_bias_corrects_a_shift_in_tier_priors() -> None:
    """A model trained where critical was rarer under-predicts it; offsets fix what T cannot."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (6000, 3))
    shift = np.array([0.0, 0.0, 1.0])  # the scored data has e^1 x the critical odds
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits + shift)])
    temperature_only = fit_scaling(logits, labels, "temperature")
    corrected = fit_scaling(logits, labels, "bias_temperature")
    assert temperature_only.bias == (0.0, 0.0, 0.0)
    assert corrected.temperature == pytest.approx(1.0, abs=0.1)
    # offsets are relative to critical's (pinned at 0): simple and medium about -1
    assert corrected.bias[0] == pytest.approx(-1.0, abs=0.15)
    assert corrected.bias[1] == pytest.approx(-1.0, abs=0.15)
    # The share of critical predicted matches the share observed only with the offsets.
    observed = (labels == 2).mean()
    assert corrected.probs(logits)[:, 2].mean() == pytest.approx(observed, abs=0.01)
    assert abs(temperature_only.probs(logits)[:, 2].mean() - observed) > 0.1
    assert (expected_calibration_error(corrected.probs(logits), labels)
            < expected_calibration_error(temperature_only.probs(logits), labels) / 1.5)
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_scaling(logits, labels, "isotonic")


def test_vectorised_policy_matches_the_gate() -> None:
    probs = np.random.default_rng(2).dirichlet([1, 1, 1], 2000)
    for thresholds in (Thresholds(0.7, 0.85, "t"), Thresholds(0.3, 0.5, "t")):
        target, escalated = policy_tiers(probs, thresholds)
        for row, tier, esc in zip(probs, target, escalated, strict=True):
            decision = decide(dict(zip(TIERS, row.tolist(), strict=True)), thresholds)
            assert (TIERS.index(decision.target_tier), decision.action == "escalate") == (
                tier, esc)


def test_thresholds_fitted_for_the_cost_quality_objective(
        fold_rows: pd.DataFrame, router_config: RouterConfig) -> None:
    logits = synthetic_logits(fold_rows, 3.0)
    fitted = calibrate(logits, fold_rows, CalibrateParams(quality_target=0.95), router_config)
    assert 2.0 < fitted.temperature < 4.5
    assert 0.0 <= fitted.escalate <= fitted.trust <= 1.0
    if fitted.feasible:
        assert fitted.validation["quality_ratio_vs_frontier"] >= 0.95
    # A looser quality target can only make the cheapest feasible policy cheaper.
    loose = calibrate(logits, fold_rows, CalibrateParams(quality_target=0.80), router_config)
    assert loose.validation["cost_ratio_vs_frontier"] <= (
        fitted.validation["cost_ratio_vs_frontier"] + 1e-9)
    budget = calibrate(logits, fold_rows, CalibrateParams(objective="max_quality",
                                                          cost_budget=0.3), router_config)
    if budget.feasible:
        assert budget.validation["cost_ratio_vs_frontier"] <= 0.3


def test_trust_threshold_is_the_lowest_confident_enough() -> None:
    probs = np.array([[0.9, 0.05, 0.05]] * 50 + [[0.6, 0.3, 0.1]] * 50)
    labels = np.array([0] * 50 + [2] * 50)  # the 0.6-confident rows needed critical
    assert 0.6 < fit_trust(probs, labels, 0.95, 0.01) <= 0.9


def test_bundle_carries_temperature_and_thresholds(tiny_bert_dir: Path, tmp_path: Path,
                                                   fold_rows: pd.DataFrame,
                                                   router_config: RouterConfig) -> None:
    fitted = calibrate(synthetic_logits(fold_rows, 2.0), fold_rows, CalibrateParams(),
                       router_config)
    meta = write_bundle(tiny_bert_dir, tmp_path / "calibrated", fitted)
    stored = json.loads((tmp_path / "calibrated" / MODEL_META).read_text())
    assert stored == meta
    classifier = load_classifier(str(tmp_path / "calibrated"))
    assert classifier.meta.temperature == fitted.temperature
    assert classifier.meta.bias == fitted.bias and fitted.method == "bias_temperature"
    assert classifier.meta.thresholds == {"escalate": fitted.escalate, "trust": fitted.trust}
    assert classifier.meta.version.startswith(tiny_bert_dir.name + "-cal")
