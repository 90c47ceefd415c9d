"""Calibration metrics as a local Hugging Face ``evaluate`` module (the hub is unreachable).

Load with ``evaluate.load("training/metrics/calibration")``. Inputs: ``predictions`` = one
probability vector per row (classes in a fixed order), ``references`` = the true class index.
Returns ``ece`` (top-label, ``bins`` equal-width bins), ``brier`` (multi-class, mean over rows of
the squared distance to the one-hot label) and ``accuracy``; ``weights`` weight the rows.
"""

import datasets
import evaluate
import numpy as np

from training.scoring import brier_score, expected_calibration_error

_DESCRIPTION = "Expected calibration error (equal-width bins), multi-class Brier score, accuracy."
_KWARGS = """
predictions: list of probability vectors, shape (n, k).
references: list of int class indices, shape (n,).
bins: int, number of equal-width confidence bins (default 15).
weights: optional list of float row weights.
"""


class Calibration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Value("int64"),
            }))

    def _compute(self, predictions, references, bins=15, weights=None):
        probs = np.asarray(predictions, dtype=float)
        labels = np.asarray(references, dtype=int)
        w = None if weights is None else np.asarray(weights, dtype=float)
        correct = (probs.argmax(axis=1) == labels).astype(float)
        return {"ece": expected_calibration_error(probs, labels, bins, w),
                "brier": brier_score(probs, labels, w),
                "accuracy": float(np.average(correct, weights=w))}
