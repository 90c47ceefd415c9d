"""calibrate: temperature scaling, then the gate's thresholds fitted on the validation fold.

1. Scaling: ``method`` fitted by validation NLL (rows labelled by a rule excluded) --
   ``temperature`` (one T) or ``bias_temperature`` (T plus one logit offset per tier).
2. Trust threshold: the lowest confidence at which the predicted tier suffices (label <= predicted)
   for at least ``quality_target`` of the validation rows at or above it.
3. Escalate threshold: a grid search of the gate policy replayed on the validation outcome
   tables (overrides included): ``min_cost`` = the cheapest policy whose quality is at least
   ``quality_target`` x frontier-only quality; ``max_quality`` = the best policy costing at most
   ``cost_budget`` x frontier-only cost. Infeasible targets fall back to the closest policy and
   say so.

4. Reference distribution (drift monitoring, :mod:`router.monitor`): the calibrated model and
   the fitted gate on a weighted sample of ``reference_rows`` train-fold rows (weights undo the
   split's tail boost): confidence histogram, predicted-tier mix, gate escalation and override
   rates.

Output: ``models/calibrated/`` = the merged model plus ``router_model.json`` (version,
temperature, bias, thresholds, max_length, how they were fitted, reference) -- the deployable
bundle the router loads -- and ``metrics/calibrate.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from router.classifier import MODEL_META
from router.config import RouterConfig, load_config
from router.gate import Thresholds, decide
from router.monitor import reference_distribution
from router.tiers import TIERS
from training.params import CalibrateParams, load_params
from training.paths import CALIBRATED, MERGED, TRAIN, VALIDATION, metrics_file
from training.scoring import (
    CALIBRATION_SOURCES,
    expected_calibration_error,
    fit_scaling,
    fit_temperature,
    label_indices,
    model_logits,
    outcome_table,
    overridden_rows,
    policy_tiers,
    replay,
    softmax,
)

logger = logging.getLogger(__name__)

METRICS = metrics_file("calibrate")


@dataclass(frozen=True)
class Calibration:
    method: str
    temperature: float
    bias: tuple[float, ...]
    escalate: float
    trust: float
    objective: str
    feasible: bool
    rows: int
    validation: dict  # replay of the fitted policy on validation (cost/quality ratios...)
    validation_ece: dict  # validation ECE: raw, temperature only, fitted method


def fit_trust(probs: np.ndarray, labels: np.ndarray, target: float, step: float) -> float:
    """Lowest threshold t with P(label <= predicted | confidence >= t) >= target (1.0 if none)."""
    predicted = probs.shape[1] - 1 - np.argmax(probs[:, ::-1], axis=1)
    confidence = probs[np.arange(len(probs)), predicted]
    suffices = labels <= predicted
    for t in np.arange(0.0, 1.0 + 1e-9, step):
        mask = confidence >= t
        if mask.sum() >= 20 and suffices[mask].mean() >= target:
            return float(round(t, 6))
    return 1.0


def calibrate(logits: np.ndarray, rows: pd.DataFrame, params: CalibrateParams,
              config: RouterConfig) -> Calibration:
    """Fit temperature and thresholds. ``logits``: (n, 3) raw logits of ``rows`` (validation)."""
    usable = rows["label_source"].isin(CALIBRATION_SOURCES).to_numpy()
    if usable.sum() < 50:
        raise ValueError(f"only {int(usable.sum())} outcome-labelled validation rows; "
                         "need at least 50 to calibrate")
    logits, rows = logits[usable], rows[usable].reset_index(drop=True)
    labels = label_indices(rows["label"].tolist())
    scaling = fit_scaling(logits, labels, params.method)
    probs = scaling.probs(logits)
    validation_ece = {
        "raw": expected_calibration_error(softmax(logits), labels),
        "temperature": expected_calibration_error(
            softmax(logits, fit_temperature(logits, labels)), labels),
        params.method: expected_calibration_error(probs, labels)}
    trust = fit_trust(probs, labels, params.quality_target, params.grid_step)
    table = outcome_table(rows, config)
    overridden = overridden_rows(rows["text"].tolist(), config)
    weights = rows["weight"].to_numpy(dtype=float) if "weight" in rows else None

    candidates = []
    for escalate in np.arange(0.0, trust + 1e-9, params.grid_step):
        thresholds = Thresholds(float(round(escalate, 6)), trust, "fit")
        target, escalated = policy_tiers(probs, thresholds, overridden)
        result = replay(table, target, weights)
        result["escalation_rate"] = float(escalated.mean())
        candidates.append((thresholds.escalate, result))

    def feasible(result: dict) -> bool:
        if params.objective == "min_cost":
            return result["quality_ratio_vs_frontier"] >= params.quality_target
        return result["cost_ratio_vs_frontier"] <= params.cost_budget

    ok = [c for c in candidates if feasible(c[1])]
    if params.objective == "min_cost":
        pool = ok or candidates
        key = ((lambda c: c[1]["cost_ratio_vs_frontier"]) if ok
               else (lambda c: -c[1]["quality_ratio_vs_frontier"]))
    else:
        pool = ok or candidates
        key = ((lambda c: -c[1]["quality_ratio_vs_frontier"]) if ok
               else (lambda c: c[1]["cost_ratio_vs_frontier"]))
    escalate, result = min(pool, key=key)
    if not ok:
        logger.warning("calibrate: no threshold meets the %s target; using the closest policy",
                       params.objective)
    return Calibration(method=params.method, temperature=scaling.temperature,
                       bias=scaling.bias, escalate=escalate, trust=trust,
                       objective=params.objective, feasible=bool(ok), rows=len(rows),
                       validation=result, validation_ece=validation_ece)


def reference(logits: np.ndarray, rows: pd.DataFrame, calibration: Calibration,
              config: RouterConfig) -> dict:
    """The drift reference of the calibrated model. ``logits``: (n, 3) raw logits of ``rows``
    (a train-fold sample with its ``weight`` and ``text`` columns)."""
    probs = softmax(logits, calibration.temperature, calibration.bias)
    thresholds = Thresholds(calibration.escalate, calibration.trust, "calibrate")
    overridden = overridden_rows(rows["text"].tolist(), config)
    # An overridden request never reaches the gate (router.policy), so it is not escalated.
    escalated = np.array([decide(dict(zip(TIERS, p, strict=True)), thresholds).action
                          == "escalate" for p in probs]) & ~overridden
    return reference_distribution(probs, rows["weight"].to_numpy(), escalated, overridden,
                                  source=f"train fold, {len(rows)} rows sampled, weighted")


def write_bundle(merged: Path, out: Path, calibration: Calibration,
                 drift_reference: dict | None = None) -> dict:
    """Copy the merged model to ``out`` and write its ``router_model.json``; returns the meta.
    The version names the fitted values only: the reference describes, it does not fit."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(merged, out)
    previous = json.loads((merged / MODEL_META).read_text()) if (merged / MODEL_META).exists() \
        else {}
    fitted = {"temperature": calibration.temperature, "bias": list(calibration.bias),
              "thresholds": {"escalate": calibration.escalate, "trust": calibration.trust}}
    digest = hashlib.sha256(json.dumps(fitted, sort_keys=True).encode()).hexdigest()[:8]
    meta = {**previous, **fitted,
            "version": f"{previous.get('version', merged.name)}-cal{digest}",
            "calibration": {"method": calibration.method, "objective": calibration.objective,
                            "feasible": calibration.feasible, "rows": calibration.rows}}
    if drift_reference is not None:
        meta["reference"] = drift_reference
    (out / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    config = load_config(params.calibrate.router_config)
    rows = pd.read_parquet(VALIDATION)
    logits = model_logits(MERGED, rows["text"].tolist())
    try:
        calibration = calibrate(logits, rows, params.calibrate, config)
    except ValueError as exc:
        logger.error("calibrate: %s", exc)
        sys.exit(1)
    train = pd.read_parquet(TRAIN, columns=["text", "weight"])
    sample = train.sample(min(params.calibrate.reference_rows, len(train)),
                          random_state=params.calibrate.reference_seed)
    drift_reference = reference(model_logits(MERGED, sample["text"].tolist()), sample,
                                calibration, config)
    meta = write_bundle(MERGED, CALIBRATED, calibration, drift_reference)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps({**asdict(calibration), "version": meta["version"]},
                                  indent=2) + "\n")
    logger.info("calibrate: %s T=%.3f bias=%s escalate=%.2f trust=%.2f cost ratio %.3f "
                "quality ratio %.3f",
                calibration.method, calibration.temperature,
                [round(b, 3) for b in calibration.bias], calibration.escalate, calibration.trust,
                calibration.validation["cost_ratio_vs_frontier"],
                calibration.validation["quality_ratio_vs_frontier"])


if __name__ == "__main__":
    main()
