"""scorer: recorded (prompt, answer, was-it-correct) -> the cascade's response scorer.

Rows: every prompt of the split folds from a seed workload with recorded answers
(``params.scorer.sources``: RouterBench's 11 models, GSM8K's two), one row per recorded answer
whose correctness is known. A row takes its prompt's fold from the split stage, by ``row_id``,
and the prompt text the split holds (normalised, PII-scrubbed: what the classifier sees). So no
test prompt -- nor any near duplicate of one, which split keeps in the same fold -- is ever
trained or calibrated on. Records the split does not hold (dropped by harvest as duplicates, or
not harvested) are left out and counted.

1. Features (:func:`router.scorer.pair_features`): a frozen encoder's mean-pooled embeddings of
   the prompt's end and the answer's end, cheap answer-shape features, the answering tier.
2. Head: L2 logistic regression on the train fold's tier-model answers (and those of
   ``scorer.extra_models``, tier features all zero), the answering tier being a feature: the
   cascade knows which tier answered.
3. Calibration (``platt``: pooled plus one map per tier; or ``isotonic``) on the validation
   fold's *tier-model* answers: the answers a cascade scores.
4. Threshold: the cascade replayed on the validation outcome tables (start at simple, escalate
   one tier up while the calibrated score is below the threshold, at most the router config's
   ``cascade.max_calls`` calls) on a grid -- ``gain_share`` (default): the cheapest threshold
   buying at least ``gain_target`` of the largest quality gain any threshold buys over never
   escalating; ``min_cost``: the cheapest whose quality is at least ``quality_target`` x
   frontier-only quality (what ``calibrate`` fits the gate for); ``max_quality``: the best
   costing at most ``cost_budget`` x frontier-only cost. An infeasible target falls back to the
   closest threshold and says so. Why not ``min_cost`` by default: with ``max_calls`` 2 a
   cascade from simple cannot reach 95% of frontier quality, and the fallback escalates nearly
   every answer (a scorer that changes nothing).
5. Report, on the test fold's tier-model answers: AUROC, ECE (15 equal-width bins, top-label as
   :func:`training.scoring.expected_calibration_error`, and of P(correct) itself), Brier, before
   and after calibration, overall (bootstrap 95% intervals), per tier and per ``eval_name``; and
   the cascade at the fitted threshold against simple-only, always-escalate and an oracle scorer.

Writes ``models/scorer/`` (the bundle :mod:`router.scorer` loads: ``scorer_model.json`` with
version and ``threshold``, ``head.npz``, ``encoder/``) and ``metrics/scorer.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.config import RouterConfig, load_config
from router.errors import ConfigError
from router.scorer import (
    BUNDLE_FORMAT,
    ENCODER_DIR,
    HEAD_FILE,
    SCORER_META,
    LogisticHead,
    TextEncoder,
    apply_calibration,
    logit,
    pair_features,
)
from router.tiers import TIERS
from training.params import ParamsError, ScorerParams, load_params
from training.paths import SCORER, SPLIT_DIR, metrics_file
from training.scoring import bootstrap_interval, expected_calibration_error, outcome_table
from workloads import Workload, WorkloadFormatError, load_workload

logger = logging.getLogger(__name__)

METRICS_PATH = metrics_file("scorer")
FOLDS: tuple[str, ...] = ("train", "validation", "test")  # as training.split.FOLDS
ROW_COLUMNS: tuple[str, ...] = ("row_id", "fold", "source", "category", "model", "tier",
                                "prompt", "response", "correct")
MIN_CALIBRATION_ROWS = 20  # fewer validation answers: no calibration map is fitted ("none")

__all__ = [
    "METRICS_PATH",
    "ScorerError",
    "ScorerResult",
    "build_rows",
    "cascade_replay",
    "fit_calibration",
    "fit_head",
    "fit_threshold",
    "json_safe",
    "main",
    "score_metrics",
    "train_scorer",
    "write_bundle",
]


class ScorerError(ValueError):
    """Data the stage cannot train a scorer on (no rows, one class, folds that overlap)."""


# --- rows ---------------------------------------------------------------------------------

def _tier_of(tier_models: Mapping[str, str], model: str) -> str | None:
    """The highest tier ``model`` stands for in a workload (GSM8K's GPT-4: critical), or None."""
    tiers = [tier for tier in TIERS if tier_models.get(tier) == model]
    return tiers[-1] if tiers else None


def build_rows(folds: Mapping[str, pd.DataFrame], workloads: Sequence[Workload],
               extra_models: Sequence[str] | str = ()) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scorer rows: one per recorded answer of a prompt the split holds, with its fold.

    ``folds``: fold name -> split rows (``row_id``, ``text``); ``workloads``: the seed workloads
    with answers; ``extra_models``: recorded models kept beside the tier models ("all": all).
    Returns rows with columns :data:`ROW_COLUMNS` (``tier``: the tier the model stands for in
    its workload, or None; ``correct``: bool) and counts. Raises :class:`ScorerError` when a
    ``row_id`` sits in two folds.
    """
    fold_of: dict[str, str] = {}
    text_of: dict[str, str] = {}
    for fold, frame in folds.items():
        for row_id, text in zip(frame["row_id"], frame["text"], strict=True):
            if row_id in fold_of and fold_of[row_id] != fold:
                raise ScorerError(f"row_id {row_id!r} is in both {fold_of[row_id]} and {fold}")
            fold_of[row_id], text_of[row_id] = fold, text
    wanted = None if extra_models == "all" else set(extra_models)
    rows: list[dict[str, Any]] = []
    unmatched = 0
    for workload in workloads:
        for record in workload.records:
            fold = fold_of.get(record.id)
            if fold is None:
                unmatched += 1
                continue
            for model, outcome in record.outcomes.items():
                tier = _tier_of(workload.tier_models, model)
                if outcome.response is None or outcome.correct is None:
                    continue
                if tier is None and wanted is not None and model not in wanted:
                    continue
                rows.append({"row_id": record.id, "fold": fold, "source": record.source,
                             "category": record.category, "model": model, "tier": tier,
                             "prompt": text_of[record.id], "response": outcome.response,
                             "correct": bool(outcome.correct)})
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    counts = {
        "records_not_in_split": unmatched,
        "rows_by_fold": {fold: int((frame["fold"] == fold).sum()) for fold in FOLDS},
        "tier_rows_by_fold": {fold: int(((frame["fold"] == fold) & frame["tier"].notna()).sum())
                              for fold in FOLDS},
        "prompts_by_fold": {fold: int(frame.loc[frame["fold"] == fold, "row_id"].nunique())
                            for fold in FOLDS},
        "models": sorted(frame["model"].unique().tolist()),
    }
    return frame, counts


# --- fitting ------------------------------------------------------------------------------

def fit_head(features: np.ndarray, correct: np.ndarray, regularisation: float,
             seed: int) -> LogisticHead:
    """L2 logistic regression on standardised ``features`` (n, d) -> ``correct`` (n,) bools."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(correct)) < 2:
        raise ScorerError(f"the train fold's {len(correct)} answers are all "
                          f"{'right' if correct.all() else 'wrong'}: nothing to learn")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant features: left unscaled (their weight stays ~0)
    model = LogisticRegression(C=regularisation, max_iter=2000, random_state=seed)
    model.fit((features - mean) / scale, correct.astype(int))
    return LogisticHead(mean, scale, model.coef_[0].copy(), float(model.intercept_[0]))


def _platt(raw: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    # Nearly unregularised: two parameters fitted on hundreds of rows.
    model = LogisticRegression(C=1e4, max_iter=1000)
    model.fit(logit(raw)[:, None], correct.astype(int))
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def _calibratable(correct: np.ndarray) -> bool:
    return len(correct) >= MIN_CALIBRATION_ROWS and len(np.unique(correct)) == 2


def fit_calibration(raw: np.ndarray, correct: np.ndarray, method: str,
                    tiers: Sequence[str | None] | None = None) -> dict[str, Any]:
    """A calibration map of raw probabilities (n,) to ``correct`` (n,), as
    :func:`router.scorer.apply_calibration` reads it. Too few rows or one class: ``none``.
    Platt with ``tiers`` (n tiers or None) also fits each tier with enough answers of both
    kinds on its own (``by_tier``)."""
    if method == "none" or not _calibratable(correct):
        if method != "none":
            logger.warning("scorer: %d validation answers (%d right): no %s calibration",
                           len(raw), int(correct.sum()), method)
        return {"method": "none"}
    if method == "platt":
        by_tier = {}
        if tiers is not None:
            tier_array = np.asarray(tiers, dtype=object)
            for tier in TIERS:
                mask = tier_array == tier
                if _calibratable(correct[mask]):
                    by_tier[tier] = _platt(raw[mask], correct[mask])
        return {"method": "platt", **_platt(raw, correct), "by_tier": by_tier}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(raw, correct.astype(float))
        return {"method": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
                "y": [float(v) for v in iso.y_thresholds_]}
    raise ScorerError(f"unknown calibration method {method!r}")


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined metric (one class only) is null."""
    return float(value) if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (nested in dicts and lists) replaced by None."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float):
        return _finite(value)
    return value


def _auroc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _ece(p: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Top-label ECE of the binary forecast ``p`` = P(correct)."""
    return expected_calibration_error(np.column_stack([1.0 - p, p]), y.astype(int), bins)


def _ece_p_correct(p: np.ndarray, y: np.ndarray, bins: int) -> float:
    """ECE of P(correct) itself: ``bins`` equal-width bins over [0, 1] (what a threshold on the
    score acts on; the top-label ECE folds p and 1 - p together)."""
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    return float(sum(abs(y[index == b].mean() - p[index == b].mean()) * (index == b).mean()
                     for b in range(bins) if (index == b).any()))


def score_metrics(p: np.ndarray, correct: np.ndarray, bins: int, *, bootstrap: int = 0,
                  seed: int = 13) -> dict[str, Any]:
    """AUROC, ECE (top-label and of P(correct)), Brier and accuracy of scores ``p`` (n,) for
    answers ``correct`` (n,); with ``bootstrap`` > 0, percentile 95% intervals of AUROC/ECE."""
    y = correct.astype(float)
    if len(p) == 0:
        return {"rows": 0}
    out: dict[str, Any] = {
        "rows": len(p), "accuracy": float(y.mean()), "mean_score": float(p.mean()),
        "auroc": _finite(_auroc(p, y)), "ece": _ece(p, y, bins),
        "ece_p_correct": _ece_p_correct(p, y, bins), "brier": float(np.mean((p - y) ** 2))}
    if bootstrap and len(np.unique(y)) == 2:
        def auroc(index: np.ndarray) -> float:
            value = _auroc(p[index], y[index])
            return value if math.isfinite(value) else 0.5

        out["auroc_ci95"] = list(bootstrap_interval(p, auroc, n=bootstrap, seed=seed))
        out["ece_ci95"] = list(bootstrap_interval(
            p, lambda index: _ece(p[index], y[index], bins), n=bootstrap, seed=seed))
    return out


def cascade_replay(scores: np.ndarray, correct: np.ndarray, cost: np.ndarray, threshold: float,
                   max_calls: int, weights: np.ndarray | None = None) -> dict[str, Any]:
    """The cascade on recorded outcomes: start at simple, escalate one tier up while the
    answer's score is below ``threshold``, at most ``max_calls`` calls; every call is paid.

    ``scores``, ``correct``, ``cost``: (n, 3) in TIERS order (score of, correctness of and USD
    paid for each tier's recorded answer). Returns quality, cost per task (USD), both relative
    to frontier-only, escalation rate, mean calls and the final tier mix.
    """
    n = len(scores)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    rows = np.arange(n)
    top = len(TIERS) - 1
    tier = np.zeros(n, dtype=int)
    spent = cost[:, 0].copy()
    for _ in range(max_calls - 1):
        go = (scores[rows, tier] < threshold) & (tier < top)
        tier = tier + go
        spent = spent + np.where(go, cost[rows, tier], 0.0)
    quality = float(np.average(correct[rows, tier], weights=weights))
    paid = float(np.average(spent, weights=weights))
    frontier_quality = float(np.average(correct[:, top], weights=weights))
    frontier_cost = float(np.average(cost[:, top], weights=weights))
    return {"threshold": float(threshold), "quality": quality, "cost_per_task": paid,
            "quality_ratio_vs_frontier": quality / frontier_quality if frontier_quality
            else float("nan"),
            "cost_ratio_vs_frontier": paid / frontier_cost if frontier_cost else float("nan"),
            "escalation_rate": float(np.average(tier > 0, weights=weights)),
            "mean_calls": float(np.average(tier + 1, weights=weights)),
            "final_tier_share": {name: float(np.average(tier == j, weights=weights))
                                 for j, name in enumerate(TIERS)}}


def fit_threshold(scores: np.ndarray, correct: np.ndarray, cost: np.ndarray,
                  params: ScorerParams, max_calls: int, weights: np.ndarray | None = None
                  ) -> tuple[float, bool, dict[str, Any]]:
    """The escalation threshold on a grid over [0, 1] (see the module docstring, step 4):
    ``(threshold, feasible, replay at it)``. Ties go to the lower (cheaper) threshold.
    ``results[0]`` (threshold 0) is never escalating: the floor of ``gain_share``."""
    if len(scores) == 0:
        raise ScorerError("no validation prompt has every tier's answer: cannot fit a threshold")
    grid = np.round(np.arange(0.0, 1.0 + 1e-9, params.grid_step), 6)
    results = [cascade_replay(scores, correct, cost, float(t), max_calls, weights) for t in grid]
    if params.objective == "gain_share":
        floor, best_quality = results[0]["quality"], max(r["quality"] for r in results)
        bar = floor + params.gain_target * (best_quality - floor) - 1e-12
        ok = [r for r in results if r["quality"] >= bar]  # never empty: the best is in it
        best = min(ok, key=lambda r: (r["cost_per_task"], r["threshold"]))
    elif params.objective == "min_cost":
        ok = [r for r in results if r["quality_ratio_vs_frontier"] >= params.quality_target]
        best = (min(ok, key=lambda r: (r["cost_per_task"], r["threshold"])) if ok else
                max(results, key=lambda r: (r["quality"], -r["cost_per_task"], -r["threshold"])))
    else:
        ok = [r for r in results if r["cost_ratio_vs_frontier"] <= params.cost_budget]
        best = (max(ok, key=lambda r: (r["quality"], -r["cost_per_task"], -r["threshold"]))
                if ok else min(results, key=lambda r: (r["cost_per_task"], r["threshold"])))
    if not ok:
        logger.warning("scorer: no threshold meets the %s target; using the closest",
                       params.objective)
    return best["threshold"], bool(ok), best


def _tier_scores(rows: pd.DataFrame, scores: np.ndarray, prompt_ids: Sequence[str],
                 tier_models: Mapping[str, Mapping[str, str]]) -> np.ndarray:
    """(n_prompts, 3): the score of each tier's recorded answer (NaN where none)."""
    by_answer = {(r, m): s for r, m, s in zip(rows["row_id"], rows["model"], scores,
                                              strict=True)}
    source_of = dict(zip(rows["row_id"], rows["source"], strict=False))
    out = np.full((len(prompt_ids), len(TIERS)), np.nan)
    for i, row_id in enumerate(prompt_ids):
        models = tier_models.get(source_of.get(row_id, ""), {})
        for j, tier in enumerate(TIERS):
            out[i, j] = by_answer.get((row_id, models.get(tier)), np.nan)
    return out


def _replay_inputs(rows: pd.DataFrame, scores: np.ndarray, split_rows: pd.DataFrame,
                   tier_models: Mapping[str, Mapping[str, str]], config: RouterConfig
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, correctness, costs (each (m, 3)) and weights (m,) of the prompts of ``rows``
    with every tier's answer scored and every tier's outcome known."""
    prompts = split_rows[split_rows["row_id"].isin(set(rows["row_id"]))].reset_index(drop=True)
    if prompts.empty:
        empty = np.zeros((0, len(TIERS)))
        return empty, empty, empty, np.zeros(0)
    table = outcome_table(prompts, config)
    tier_scores = _tier_scores(rows, scores, prompts["row_id"].tolist(), tier_models)
    keep = ~np.isnan(tier_scores).any(axis=1) & ~np.isnan(table.correct).any(axis=1)
    weights = (prompts["weight"].to_numpy(dtype=float) if "weight" in prompts
               else np.ones(len(prompts)))
    return tier_scores[keep], table.correct[keep], table.cost[keep], weights[keep]


# --- the stage's core -----------------------------------------------------------------------

@dataclass(frozen=True)
class ScorerResult:
    """What :func:`train_scorer` fits: the head, the calibration map, the threshold, metrics."""

    head: LogisticHead
    calibration: dict[str, Any]
    threshold: float
    metrics: dict[str, Any]


def _slices(p_raw: np.ndarray, p: np.ndarray, frame: pd.DataFrame, column: str,
            bins: int) -> dict[str, Any]:
    out = {}
    for name in sorted(frame[column].dropna().unique()):
        mask = (frame[column] == name).to_numpy()
        y = frame.loc[mask, "correct"].to_numpy(dtype=bool)
        metrics = score_metrics(p[mask], y, bins)
        metrics["auroc_before_calibration"] = _finite(_auroc(p_raw[mask], y.astype(float)))
        metrics["ece_before_calibration"] = _ece(p_raw[mask], y.astype(float), bins)
        out[str(name)] = metrics
    return out


def train_scorer(rows: pd.DataFrame, features: np.ndarray, folds: Mapping[str, pd.DataFrame],
                 tier_models: Mapping[str, Mapping[str, str]], params: ScorerParams,
                 config: RouterConfig) -> ScorerResult:
    """Fit and report the scorer (module docstring, steps 2-5).

    ``rows``: :func:`build_rows` output; ``features``: (len(rows), d) aligned with it;
    ``folds``: the split folds (``row_id``, ``outcomes``, ``costs``, ``text``, ``weight``) for the
    outcome tables; ``tier_models``: source -> tier -> recorded model name.
    """
    fold = rows["fold"].to_numpy()
    is_tier = rows["tier"].notna().to_numpy()
    correct = rows["correct"].to_numpy(dtype=bool)
    train = np.flatnonzero(fold == "train")
    if len(train) > params.max_train_rows:
        train = np.sort(np.random.default_rng(params.seed).choice(
            train, size=params.max_train_rows, replace=False))
    if len(train) == 0:
        raise ScorerError("no scorer rows in the train fold")
    head = fit_head(features[train], correct[train], params.regularisation, params.seed)
    raw = head.predict(features)
    validation = (fold == "validation") & is_tier
    tiers = rows["tier"].to_numpy(dtype=object)
    calibration = fit_calibration(raw[validation], correct[validation], params.calibration,
                                  tiers[validation])
    calibrated = apply_calibration(raw, calibration, tiers)

    max_calls = config.cascade.max_calls
    fold_rows = {name: rows[fold == name] for name in FOLDS}
    replay_validation = _replay_inputs(fold_rows["validation"], calibrated[fold == "validation"],
                                       folds["validation"], tier_models, config)
    threshold, feasible, fitted = fit_threshold(*replay_validation[:3], params, max_calls,
                                                replay_validation[3])

    bins = params.ece_bins
    test = (fold == "test") & is_tier
    test_rows = rows[test]
    y_test = correct[test]
    scores_test, correct_test, cost_test, weights_test = _replay_inputs(
        fold_rows["test"], calibrated[fold == "test"], folds["test"], tier_models, config)
    before = score_metrics(raw[test], y_test, bins)
    after = score_metrics(calibrated[test], y_test, bins, bootstrap=params.bootstrap,
                          seed=params.seed)
    all_test = fold == "test"

    def replay_at(t: float) -> dict[str, Any]:
        return cascade_replay(scores_test, correct_test, cost_test, t, max_calls, weights_test)

    cascade_test: dict[str, Any] = {"prompts": len(scores_test)}
    if len(scores_test):
        oracle = correct_test.astype(float)  # a perfect scorer: 1 for right answers, 0 else
        cascade_test.update({
            "at_threshold": replay_at(threshold),
            "simple_only": replay_at(0.0),
            "always_escalate": replay_at(1.0 + 1e-9),
            "oracle_scorer": cascade_replay(oracle, correct_test, cost_test, 0.5, max_calls,
                                            weights_test)})
    metrics = {
        "auroc": after["auroc"], "ece": after["ece"],
        "auroc_before_calibration": before["auroc"], "ece_before_calibration": before["ece"],
        "threshold": threshold,
        "test": {"before_calibration": before, "after_calibration": after,
                 "by_tier": _slices(raw[test], calibrated[test], test_rows, "tier", bins),
                 "by_eval_name": _slices(raw[test], calibrated[test], test_rows, "category",
                                         bins),
                 "all_models": score_metrics(calibrated[all_test], correct[all_test], bins)},
        "validation": {"before_calibration": score_metrics(raw[validation],
                                                           correct[validation], bins),
                       "after_calibration": score_metrics(calibrated[validation],
                                                          correct[validation], bins)},
        "calibration": {k: v for k, v in calibration.items()
                        if k in ("method", "a", "b", "by_tier")},
        "cascade": {"objective": params.objective, "feasible": feasible,
                    "max_calls": max_calls, "validation_prompts": len(replay_validation[0]),
                    "validation": fitted, "test": cascade_test},
        "train_rows": len(train), "features": int(features.shape[1]),
    }
    logger.info("scorer: test AUROC %.3f (raw %.3f), ECE %.3f (raw %.3f) on %d tier answers; "
                "threshold %.2f (%s)", after["auroc"] or float("nan"),
                before["auroc"] or float("nan"), after["ece"], before["ece"], len(y_test),
                threshold, "feasible" if feasible else "closest")
    return ScorerResult(head, calibration, threshold, metrics)


# --- I/O ------------------------------------------------------------------------------------

def write_bundle(out: Path, encoder: TextEncoder, result: ScorerResult,
                 params: ScorerParams) -> dict[str, Any]:
    """Write the bundle :class:`router.scorer.EmbeddingScorer` loads; returns its meta."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    encoder.save(out / ENCODER_DIR)
    result.head.save(out / HEAD_FILE)
    digest = hashlib.sha256()
    for part in (result.head.mean, result.head.scale, result.head.coef):
        digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    digest.update(json.dumps([result.head.intercept, result.calibration, result.threshold,
                              params.encoder], sort_keys=True).encode())
    meta = {"format": BUNDLE_FORMAT, "version": f"scorer-{digest.hexdigest()[:8]}",
            "threshold": result.threshold, "max_length": params.max_length,
            "response_max_chars": params.response_max_chars,
            "calibration": result.calibration, "encoder": params.encoder,
            "objective": params.objective,
            "feasible": result.metrics["cascade"]["feasible"]}
    (out / SCORER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _tier_models(workloads: Sequence[Workload]) -> dict[str, dict[str, str]]:
    """source -> tier -> recorded model (a seed workload's records carry its name as source)."""
    return {workload.name: dict(workload.tier_models) for workload in workloads}


def main() -> None:
    """The DVC stage: split folds + seed answers -> models/scorer/, metrics/scorer.json."""
    from training.train import resolve_base_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        params = load_params().scorer
        config = load_config(params.router_config)
        folds = {name: pd.read_parquet(SPLIT_DIR / f"{name}.parquet") for name in FOLDS}
        workloads = [load_workload(name) for name in params.sources]
        rows, counts = build_rows(folds, workloads, params.extra_models)
        if rows.empty:
            raise ScorerError(f"no recorded answers of {params.sources} in the split folds")
        loaded = time.monotonic()
        encoder = TextEncoder(Path(resolve_base_model(params.encoder)), params.max_length)
        features = pair_features(encoder, rows["prompt"].tolist(), rows["response"].tolist(),
                                 rows["tier"].tolist(), params.response_max_chars)
        embedded = time.monotonic()
        result = train_scorer(rows, features, folds, _tier_models(workloads), params, config)
        meta = write_bundle(SCORER, encoder, result, params)
    except (ParamsError, ConfigError, ScorerError, WorkloadFormatError, OSError) as exc:
        logger.error("scorer: %s", exc)
        sys.exit(1)
    done = time.monotonic()
    metrics = {**result.metrics, "version": meta["version"], "data": counts,
               "seconds": {"rows": round(loaded - started, 1),
                           "features": round(embedded - loaded, 1),
                           "fit_and_write": round(done - embedded, 1),
                           "total": round(done - started, 1)}}
    METRICS_PATH.parent.mkdir(parents=True, exist_ok=True)
    METRICS_PATH.write_text(json.dumps(json_safe(metrics), indent=2) + "\n", encoding="utf-8")
    logger.info("scorer: %s written in %.1f s", meta["version"], done - started)


if __name__ == "__main__":
    main()
