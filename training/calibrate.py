"""calibrate: the per-tier heads' calibration, the neighbourhood prior and the one operating
point, fitted together and written as the deployable bundle.

Backend (``calibrate.backend``): ``static`` (default) -- the distilled model2vec embeddings
(``models/static``) with linear heads fitted here on the train fold; ``transformer`` -- the
fine-tuned backbone's own three outputs (``models/classifier/merged``).

1. **Heads.** Static: for each variant in ``calibrate.heads`` -- ``per_tier`` (one logistic
   regression per tier on the train rows that record it: a RouteLLM row, which records no medium
   model, trains the simple and critical heads only; support rows, labelled by the stated rule,
   count as acceptable at every tier with weight ``rule_weight``) and ``softmax`` (the ablation:
   a multinomial regression on the cheapest sufficient tier, rows no tier got right labelled
   simple) -- the L2 strength from ``head_c`` with the lowest validation log loss.
2. **Neighbourhood prior** (:mod:`router.neighbourhood`): k-means over the train embeddings, per
   cluster and tier the share right, the rows recorded and the mean output tokens; k from
   ``clusters`` by the prior's own validation log loss.
3. **Combination** per tier on the validation fold's outcome-labelled rows (rule-labelled rows
   never calibrate): ``p = sigmoid(a z + b logit(prior) + c)``; and ``head_only`` (no prior) for
   a backend without embeddings (vLLM).
4. **Operating point**, on a validation replay of the *whole* policy (:func:`router.gate.replay`
   via :mod:`training.scoring`): overrides, the rule with expected prices, the gate and the
   cascade with the response scorer's scores of each tier's recorded answer. Every combination
   of ``price_weight`` (0 and a geometric grid over [1, 1e6] quality per USD), ``trust``,
   ``escalate`` and ``score_threshold`` is replayed; ``min_cost`` keeps the cheapest whose
   quality >= ``quality_target`` x frontier-only quality, ``max_quality`` the best within
   ``cost_budget`` x frontier-only cost, both with escalations <= ``max_escalation``. Infeasible
   targets fall back to the closest point and say so.
5. **Variant choice.** Each head variant gets its own point; the served one is chosen by the
   same rule (the objective at its point, then its workloads' curves); both are reported.
6. **Drift reference** (:mod:`router.monitor`): the served model at its point on a weighted
   sample of ``reference_rows`` train rows.

Output: ``models/calibrated/`` -- the bundle :func:`router.classifier.load_bundle` reads
(``router_model.json`` with version, backend, head, combine, head_only, operating_point,
output_tokens, reference; ``neighbourhood.npz``; static: ``static/`` + ``heads.npz``;
transformer: the merged model files) -- ``models/ablation/`` (the other static head variant, for
evaluate's report) and ``metrics/calibrate.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.classifier import (
    BUNDLE_FORMAT,
    HEADS_FILE,
    MODEL_META,
    STATIC_DIR,
    Combine,
    InProcessClassifier,
    Predictions,
    StaticEncoder,
    head_logits,
    logit,
    read_meta,
)
from router.config import RouterConfig, load_config
from router.gate import OperatingPoint
from router.monitor import reference_distribution
from router.neighbourhood import NEIGHBOURHOOD_FILE, NeighbourhoodTable, fit_table
from router.tiers import TIERS
from training.params import CalibrateParams, ParamsError, load_params
from training.paths import (
    ABLATION,
    CALIBRATED,
    MERGED,
    SCORER,
    STATIC,
    TRAIN,
    VALIDATION,
    metrics_file,
)
from training.scoring import (
    CALIBRATION_SOURCES,
    PolicyTable,
    decision_prices,
    dumps,
    masked_log_loss,
    policy_table,
    replay_metrics,
    run_policy,
    sub_run,
    targets_matrix,
)

logger = logging.getLogger(__name__)

METRICS = metrics_file("calibrate")


class CalibrateError(ValueError):
    """Data the stage cannot fit on (too few outcome rows, a missing model...)."""


def price_weight_grid(points: int) -> np.ndarray:
    """0 and ``points - 1`` geometric steps over [1, 1e6] quality per USD: at 1e6 a tenth of a
    cent must buy a whole point of P(acceptable), at 1 a dollar buys one."""
    return np.concatenate([[0.0], np.geomspace(1.0, 1e6, points - 1)])


# ------------------------------------------------------------------ heads

@dataclass(frozen=True)
class Heads:
    """Linear heads on embeddings: raw outputs ``X @ coef.T + intercept`` (n, 3)."""

    kind: str  # per_tier | softmax
    coef: np.ndarray  # (3, d)
    intercept: np.ndarray  # (3,)
    c: float

    def raw(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef.T + self.intercept


def _rule_weights(rows: pd.DataFrame, rule_weight: float) -> np.ndarray:
    return np.where(rows["label_source"].to_numpy() == "rule", rule_weight, 1.0)


def fit_heads(x: np.ndarray, rows: pd.DataFrame, kind: str, c: float, rule_weight: float,
              seed: int) -> Heads:
    """Fit ``kind`` heads on embeddings ``x`` (n, d) of ``rows`` (label + targets columns)."""
    from sklearn.linear_model import LogisticRegression

    weights = _rule_weights(rows, rule_weight)
    coef = np.zeros((len(TIERS), x.shape[1]))
    intercept = np.zeros(len(TIERS))
    if kind == "per_tier":
        targets = targets_matrix(rows)
        for j, tier in enumerate(TIERS):
            known = np.isfinite(targets[:, j]) & (weights > 0)
            y = targets[known, j].astype(int)
            if len(np.unique(y)) < 2:
                raise CalibrateError(f"the {tier} head has {known.sum()} train rows, all "
                                     f"{'acceptable' if y.all() else 'not'}: nothing to learn")
            model = LogisticRegression(C=c, max_iter=3000, random_state=seed)
            model.fit(x[known], y, sample_weight=weights[known])
            coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
    else:
        labelled = rows["label"].isin(TIERS).to_numpy() & (weights > 0)
        labels = np.array([TIERS.index(t) for t in rows["label"][labelled]])
        model = LogisticRegression(C=c, max_iter=3000, random_state=seed)
        model.fit(x[labelled], labels, sample_weight=weights[labelled])
        present = list(model.classes_)
        if len(present) == 2:  # binary: one row, the logit of classes_[1] against classes_[0]
            coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
        else:
            for k, j in enumerate(present):
                coef[j], intercept[j] = model.coef_[k], model.intercept_[k]
        for j in set(range(len(TIERS))) - set(present):  # a class never seen: never predicted
            intercept[j] = -30.0
    return Heads(kind, coef.astype(np.float32), intercept.astype(np.float32), c)


def choose_heads(x_train: np.ndarray, train: pd.DataFrame, x_val: np.ndarray,
                 validation: pd.DataFrame, kind: str, params: CalibrateParams,
                 seed: int) -> tuple[Heads, dict[str, float]]:
    """The ``kind`` heads with the ``head_c`` of lowest validation log loss (outcome rows)."""
    usable = validation["label_source"].isin(CALIBRATION_SOURCES).to_numpy()
    targets = targets_matrix(validation)[usable]
    losses, best = {}, None
    for c in params.head_c:
        heads = fit_heads(x_train, train, kind, c, params.rule_weight, seed)
        from router.classifier import sigmoid

        loss = masked_log_loss(sigmoid(head_logits(heads.raw(x_val[usable]), kind)), targets)
        losses[str(c)] = loss
        if best is None or loss < best[0]:
            best = (loss, heads)
    assert best is not None
    return best[1], losses


# ------------------------------------------------------------------ neighbourhood + combine

def choose_table(e_train: np.ndarray, train: pd.DataFrame, e_val: np.ndarray,
                 validation: pd.DataFrame, params: CalibrateParams, seed: int
                 ) -> tuple[NeighbourhoodTable, dict[str, float]]:
    """The cluster count in ``params.clusters`` whose prior has the lowest validation log
    loss on outcome rows."""
    targets = targets_matrix(train)
    _, output_tokens = _row_tokens(train)
    usable = validation["label_source"].isin(CALIBRATION_SOURCES).to_numpy()
    val_targets = targets_matrix(validation)[usable]
    losses, best = {}, None
    for k in params.clusters:
        table = fit_table(e_train, targets, output_tokens, k, shrinkage=params.shrinkage,
                          min_recorded=params.min_recorded, seed=seed,
                          weights=_rule_weights(train, params.rule_weight))
        loss = masked_log_loss(table.lookup(e_val[usable]).prior, val_targets)
        losses[str(k)] = loss
        if best is None or loss < best[0]:
            best = (loss, table)
    assert best is not None
    return best[1], losses


def _row_tokens(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from training.scoring import _tokens

    return _tokens(rows)


def fit_combine(z: np.ndarray, prior: np.ndarray | None, targets: np.ndarray) -> Combine:
    """Per tier, logistic regression of the target on ``z`` (n, 3) head logits and, when given,
    ``logit(prior)`` (n, 3); rows where the tier's target is unknown are skipped."""
    from sklearn.linear_model import LogisticRegression

    head, weight, bias = [1.0] * len(TIERS), [0.0] * len(TIERS), [0.0] * len(TIERS)
    for j in range(len(TIERS)):
        known = np.isfinite(targets[:, j])
        y = targets[known, j].astype(int)
        if known.sum() < 20 or len(np.unique(y)) < 2:
            continue  # too little to calibrate on: the head's own logit stands
        features = z[known, j:j + 1] if prior is None else np.column_stack(
            [z[known, j], logit(prior[known, j])])
        model = LogisticRegression(C=1e3, max_iter=2000).fit(features, y)
        head[j] = float(model.coef_[0, 0])
        if prior is not None:
            weight[j] = float(model.coef_[0, 1])
        bias[j] = float(model.intercept_[0])
    return Combine(tuple(head), tuple(weight), tuple(bias))


# ------------------------------------------------------------------ the operating point

@dataclass(frozen=True)
class PointFit:
    point: OperatingPoint
    feasible: bool
    validation: dict[str, Any]  # replay at the point
    curve: list[dict[str, float]]  # price weight alone varied, other knobs at the point's
    area: float  # mean over the workloads of their curve areas (fit_point, step 2)


OUTCOME_SOURCES = ("routerbench", "mmlu", "gsm8k", "mt_bench")  # workloads with outcomes
# Knobs whose stored point is this much (relative) worse on the objective than the best knobs'
# still compete on their curves: 2% of cost is within validation noise, 10% is not.
OBJECTIVE_SLACK = 0.02


def fit_point(table: PolicyTable, candidates: Sequence[tuple[float, Predictions]],
              config: RouterConfig, params: CalibrateParams) -> tuple[PointFit, int]:
    """The whole policy replayed over the grid (module docstring, step 4), in two steps:

    1. for every setting of the knobs other than the price weight (score threshold, trust,
       escalate, escalation weight), the price weight the objective picks on that setting's
       curve (the cheapest point reaching the quality target within the escalation budget, or
       the best within the cost budget);
    2. among the settings whose point is within ``OBJECTIVE_SLACK`` of the best one's on the
       objective, the one with the best trade-off *curves*: the largest mean, over the
       validation fold's workloads, of the area under each workload's curve with the price
       weight varied alone (each workload counts once, as the benchmark judges them).

    ``candidates``: per score threshold, the validation predictions whose check statistics
    were computed at it. Returns the fit and the index of the candidate it chose."""
    max_calls = config.cascade.max_calls
    weights = price_weight_grid(params.price_weights)
    sources = [s for s in OUTCOME_SOURCES if (table.sources == s).sum() >= 20] or [None]
    curves: dict[tuple[int, float, float, float],
                 list[tuple[OperatingPoint, dict[str, Any]]]] = {}
    scores_by_knobs: dict[tuple[int, float, float, float], float] = {}
    for index, (score, predictions) in enumerate(candidates):
        prices = decision_prices(table, predictions, config)
        for trust, escalate, mu in ((t, e, m) for t in params.trust_grid
                                    for e in params.escalate_grid
                                    for m in params.escalation_grid if e <= t):
            runs = []
            per_source: dict[Any, list[dict[str, Any]]] = {s: [] for s in sources}
            for weight in weights:
                point = OperatingPoint(float(weight), trust, escalate, score, "fit", mu)
                run = run_policy(table, predictions, prices, point, max_calls=max_calls)
                runs.append((point, replay_metrics(run, table)))
                for source in sources:
                    mask = (np.ones(len(table), dtype=bool) if source is None
                            else table.sources == source)
                    m = replay_metrics(sub_run(run, mask), table.subset(mask))
                    per_source[source].append({"cost_ratio": m["cost_ratio_vs_frontier"],
                                               "quality_ratio":
                                                   m["quality_ratio_vs_frontier"]})
            key = (index, trust, escalate, mu)
            curves[key] = runs
            scores_by_knobs[key] = float(np.mean([
                curve_area(per_source[s], table if s is None
                           else table.subset(table.sources == s)) for s in sources]))

    def ok_escalation(m: dict[str, Any]) -> bool:
        return m["escalation_rate"] <= params.max_escalation + 1e-12

    def feasible(m: dict[str, Any]) -> bool:
        if not ok_escalation(m):
            return False
        if params.objective == "min_cost":
            return m["quality_ratio_vs_frontier"] >= params.quality_target
        return m["cost_ratio_vs_frontier"] <= params.cost_budget

    def pick(runs: list[tuple[OperatingPoint, dict[str, Any]]]
             ) -> tuple[OperatingPoint, dict[str, Any]] | None:
        ok = [r for r in runs if feasible(r[1])]
        if not ok:
            return None
        if params.objective == "min_cost":
            return min(ok, key=lambda r: (r[1]["cost_ratio_vs_frontier"],
                                          -r[1]["quality_ratio_vs_frontier"]))
        return max(ok, key=lambda r: (r[1]["quality_ratio_vs_frontier"],
                                      -r[1]["cost_ratio_vs_frontier"]))

    ranked = sorted(curves, key=lambda k: -scores_by_knobs[k])
    picks = {k: pick(curves[k]) for k in ranked}
    objective_of = {k: (found[1]["cost_ratio_vs_frontier"] if params.objective == "min_cost"
                        else -found[1]["quality_ratio_vs_frontier"])
                    for k, found in picks.items() if found is not None}
    key = None
    if objective_of:
        # The stored point serves the objective first: knobs whose best feasible point is
        # within OBJECTIVE_SLACK of the best; among them, the best curves.
        best_value = min(objective_of.values())
        slack = OBJECTIVE_SLACK * abs(best_value)
        key = next(k for k in ranked if k in objective_of
                   and objective_of[k] <= best_value + slack)
    feasible_found = key is not None
    if key is None:
        key = ranked[0]
        pool = [r for r in curves[key] if ok_escalation(r[1])] or curves[key]
        best = max(pool, key=lambda r: (r[1]["quality_ratio_vs_frontier"],
                                        -r[1]["cost_ratio_vs_frontier"]))
        logger.warning("calibrate: no operating point meets the %s target within %.0f%% "
                       "escalations; keeping the closest", params.objective,
                       100 * params.max_escalation)
    else:
        best = pick(curves[key])  # type: ignore[assignment]
    point, at = best
    index = key[0]
    predictions = candidates[index][1]
    runs = list(curves[key])
    if point.price_weight > 0 and feasible_found:  # refine between the grid neighbours
        prices = decision_prices(table, predictions, config)
        step = weights[2] / weights[1]  # the grid's geometric ratio
        for weight in np.geomspace(point.price_weight / step, point.price_weight * step, 25):
            candidate = replace(point, price_weight=float(weight))
            metrics = replay_metrics(run_policy(table, predictions, prices, candidate,
                                                max_calls=max_calls), table)
            runs.append((candidate, metrics))
        point, at = pick(runs) or (point, at)
    curve = [{"price_weight": float(p.price_weight), "cost_ratio": m["cost_ratio_vs_frontier"],
              "quality_ratio": m["quality_ratio_vs_frontier"],
              "escalation_rate": m["escalation_rate"]} for p, m in runs]
    logger.info("calibrate: knobs (score %.2f, trust %.2f, escalate %.2f, escalation weight "
                "%.2f) give the best mean workload curve area %.4f (next best %.4f)",
                candidates[index][0], key[1], key[2], key[3], scores_by_knobs[key],
                scores_by_knobs[ranked[1]] if len(ranked) > 1 else float("nan"))
    return (PointFit(replace(point, source="fit"), feasible_found, at, curve,
                     scores_by_knobs[key]), index)


def curve_area(curve: list[dict[str, float]], table: PolicyTable) -> float:
    """Mean quality ratio over cost ratios [cheapest single tier, 1] of the curve's points
    (linear interpolation, no hull), with the frontier-only point (1, 1) appended."""
    cheapest = float(np.nanmin(np.nanmean(table.cost, axis=0)) /
                     np.nanmean(table.cost[:, -1]))
    points = sorted({(p["cost_ratio"], p["quality_ratio"]) for p in curve
                     if np.isfinite(p["cost_ratio"]) and np.isfinite(p["quality_ratio"])}
                    | {(1.0, 1.0)})
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    grid = np.linspace(cheapest, 1.0, 256)
    return float(np.trapezoid(np.interp(grid, xs, ys), grid) / (1.0 - cheapest)) \
        if cheapest < 1.0 else float(ys[-1])


# ------------------------------------------------------------------ answers to check

def answer_scores(rows: pd.DataFrame, config: RouterConfig, scorer_dir: Path | None
                  ) -> np.ndarray | None:
    """(n, 3): the response scorer's P(acceptable) of the answer each tier gives each row --
    the recorded answer, MMLU's synthetic letter or the generic answer to an intent query, as
    the simulator (the providers' stand-in) returns them (:mod:`workloads.answers`). NaN where
    no answer text is known (logged rows). None without a scorer bundle."""
    from router.scorer import load_scorer
    from workloads import BUILTIN, load_workload
    from workloads.answers import record_answer

    if scorer_dir is None or not scorer_dir.exists():
        return None
    scorer = load_scorer(f"path:{scorer_dir}")
    records = {}
    for name in sorted(set(rows["source"]) & set(BUILTIN)):
        workload = load_workload(name)
        for record in workload.records:
            records[record.id] = (workload, record)
    prompts, answers, tiers, where = [], [], [], []
    for i, (row_id, text) in enumerate(zip(rows["row_id"], rows["text"], strict=True)):
        found = records.get(row_id)
        if found is None:
            continue
        workload, record = found
        for j, tier in enumerate(TIERS):
            if workload.tier_models and not workload.records_tier(tier):
                continue  # answered by the tier above: its score is that tier's
            served = config.deployments(tier)[0].served_model
            outcome = workload.own_outcome(record, tier) if workload.tier_models else None
            answer, _ = record_answer(record, outcome, served)
            prompts.append(text)
            answers.append(answer)
            tiers.append(tier)
            where.append((i, j))
    out = np.full((len(rows), len(TIERS)), np.nan)
    if prompts:
        logger.info("calibrate: scoring %d answers with %s", len(prompts), scorer.meta.version)
        values = scorer.score(prompts, answers, tiers)
        for (i, j), value in zip(where, values, strict=True):
            out[i, j] = value
    return out


# ------------------------------------------------------------------ the stage's core

@dataclass
class Variant:
    """One head variant, fitted: what goes into its bundle and its report."""

    head: str
    heads: Heads | None  # static backend
    table: NeighbourhoodTable
    combine: Combine
    head_only: Combine
    fit: PointFit
    report: dict[str, Any]


def _predictions(raw: np.ndarray, embeddings: np.ndarray, head: str, table: NeighbourhoodTable,
                 combine: Combine) -> Predictions:
    found = table.lookup(embeddings)
    return Predictions(combine.apply(head_logits(raw, head), found.prior), found.allowed,
                       found.output_tokens, embeddings, check=found.check)


def check_table(table: NeighbourhoodTable, e_train: np.ndarray, train: pd.DataFrame,
                scores: np.ndarray | None, thresholds: Sequence[float],
                checked_sources: Sequence[str]) -> NeighbourhoodTable:
    """``table`` with check statistics at each score threshold (the decision picks one per
    request), from the train fold's answers (``scores`` (n, 3), their scorer scores; None: no
    scorer, ``table`` unchanged). Only rows of the sources the scorer trains on count
    (elsewhere its check does not apply)."""
    offered = [float(t) for t in thresholds if t > 0]  # 0 never fails: not a check
    if scores is None or not offered:
        return table
    checked = train["source"].isin(list(checked_sources)).to_numpy()
    return table.with_checks(table.clusters_of(e_train), scores, targets_matrix(train),
                             offered, checked)


def fit_variant(head: str, raw_val: np.ndarray, e_val: np.ndarray, validation: pd.DataFrame,
                table: NeighbourhoodTable, heads: Heads | None, val_table: PolicyTable,
                params: CalibrateParams, config: RouterConfig) -> Variant:
    """Combination and operating point of one head variant (steps 3-4). ``table``: the
    neighbourhood table, with check statistics when a scorer exists (without, the gate's
    confidence band decides cascades, over ``score_grid``)."""
    usable = validation["label_source"].isin(CALIBRATION_SOURCES).to_numpy()
    targets = targets_matrix(validation)
    z = head_logits(raw_val, head)
    prior = table.lookup(e_val).prior
    combine = fit_combine(z[usable], prior[usable], targets[usable])
    head_only = fit_combine(z[usable], None, targets[usable])
    predictions = _predictions(raw_val, e_val, head, table, combine)
    # With check statistics the first check's threshold is chosen per request; the point's
    # own threshold (band cascades, later checks) is then the grid's middle offered value.
    offered = [t for t in params.score_grid if t > 0] or [0.5]
    candidates = ([(float(np.median(offered)), predictions)] if table.has_checks
                  else [(float(t), predictions) for t in params.score_grid])
    fit, _ = fit_point(val_table, candidates, config, params)
    chosen = table
    checkable = (0.0 if predictions.check is None
                 else float(np.mean(predictions.check.checkable)))
    report = {
        "head": head, "c": None if heads is None else heads.c,
        "validation_checkable_share": checkable,
        "validation_log_loss": {
            "head": masked_log_loss(head_only.apply(z, None)[usable], targets[usable]),
            "head_and_prior": masked_log_loss(predictions.scores[usable], targets[usable])},
        "combine": combine.as_dict(), "operating_point": fit.point.as_dict(),
        "feasible": fit.feasible, "validation": fit.validation,
        "validation_curve_area": fit.area, "validation_curve": fit.curve,
    }
    logger.info("calibrate: %s heads: point %s (%s); validation cost %.3f, quality %.3f of "
                "frontier, escalation %.3f; curve area %.4f", head, fit.point.as_dict(),
                "feasible" if fit.feasible else "closest",
                fit.validation["cost_ratio_vs_frontier"],
                fit.validation["quality_ratio_vs_frontier"], fit.validation["escalation_rate"],
                fit.area)
    return Variant(head, heads, chosen, combine, head_only, fit, report)


def choose_variant(variants: Sequence[Variant], params: CalibrateParams) -> Variant:
    """The head variant to serve, by fit_point's rule: the objective at the stored point first
    (within ``OBJECTIVE_SLACK``; infeasible variants only when none is feasible), then the
    workloads' curves."""
    def objective(v: Variant) -> float:
        m = v.fit.validation
        return (m["cost_ratio_vs_frontier"] if params.objective == "min_cost"
                else -m["quality_ratio_vs_frontier"])

    pool = [v for v in variants if v.fit.feasible] or list(variants)
    best = min(objective(v) for v in pool)
    near = [v for v in pool if objective(v) <= best + OBJECTIVE_SLACK * abs(best)]
    return max(near, key=lambda v: v.fit.area)


def write_bundle(variant: Variant, out: Path, params: CalibrateParams, *, backend: str,
                 source: Path, max_length: int, base_version: str,
                 drift_reference: dict[str, Any] | None, scorer_version: str | None
                 ) -> dict[str, Any]:
    """The deployable bundle (module docstring); returns its ``router_model.json``. The version
    names the weights and every fitted value, so a refit is a new version."""
    if out.exists():
        shutil.rmtree(out)
    if backend == "static":
        out.mkdir(parents=True)
        shutil.copytree(source, out / STATIC_DIR)
        assert variant.heads is not None
        np.savez(out / HEADS_FILE, coef=variant.heads.coef, intercept=variant.heads.intercept)
    else:
        shutil.copytree(source, out)
    variant.table.save(out / NEIGHBOURHOOD_FILE)
    fitted = {"head": variant.head, "combine": variant.combine.as_dict(),
              "head_only": variant.head_only.as_dict(),
              "operating_point": variant.fit.point.as_dict(),
              "output_tokens": [float(t) for t in variant.table.global_output_tokens]}
    digest = hashlib.sha256(json.dumps(fitted, sort_keys=True).encode())
    for name in ((HEADS_FILE,) if backend == "static" else ()) + (NEIGHBOURHOOD_FILE,):
        digest.update((out / name).read_bytes())
    version = f"{base_version}-{backend[:3]}{digest.hexdigest()[:8]}"
    meta = {"format": BUNDLE_FORMAT, "version": version, "backend": backend,
            "max_length": max_length, **fitted,
            "calibration": {"objective": params.objective, "feasible": variant.fit.feasible,
                            "quality_target": params.quality_target,
                            "cost_budget": params.cost_budget,
                            "max_escalation": params.max_escalation,
                            "fitted_with_scorer": scorer_version}}
    if drift_reference is not None:
        meta["reference"] = drift_reference
    (out / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def reference(predictions: Predictions, table: PolicyTable, point: OperatingPoint,
              config: RouterConfig) -> dict[str, Any]:
    """The drift reference of the served model at its point on a train sample."""
    prices = decision_prices(table, predictions, config)
    run = run_policy(table, predictions, prices, point, max_calls=config.cascade.max_calls)
    gate_escalated = run.decisions.action == 2  # ESCALATE, before the cascade
    return reference_distribution(run.decisions.confidence, run.decisions.chosen,
                                  table.weights, gate_escalated, table.forced >= 0,
                                  source=f"train fold, {len(table)} rows sampled, weighted")


def _static_inputs(rows: pd.DataFrame, encoder: StaticEncoder) -> np.ndarray:
    started = time.perf_counter()
    out = encoder.encode(rows["text"].tolist())
    logger.info("calibrate: embedded %d rows in %.1f s", len(rows), time.perf_counter() - started)
    return out


def _transformer_inputs(model: InProcessClassifier, rows: pd.DataFrame,
                        batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    texts = rows["text"].tolist()
    raws, embeddings = [], []
    for start in range(0, len(texts), batch):
        raw, emb = model.encode(texts[start:start + batch])
        raws.append(raw)
        embeddings.append(emb)
        if (start // batch) % 10 == 0:
            logger.info("calibrate: forward pass %d / %d rows", start + len(raw), len(texts))
    return np.concatenate(raws), np.concatenate(embeddings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params()
        settings = params.calibrate
        config = load_config(settings.router_config)
        train = pd.read_parquet(TRAIN)
        validation = pd.read_parquet(VALIDATION)
        if validation["label_source"].isin(CALIBRATION_SOURCES).sum() < 50:
            raise CalibrateError("fewer than 50 outcome-labelled validation rows: too few to "
                                 "calibrate on (add outcome data or lower split.validation)")
        scorer_version = (read_scorer_version(SCORER) if (SCORER / "scorer_model.json").exists()
                          else None)
        val_scores = answer_scores(validation, config, SCORER)
        val_table = policy_table(validation, config, val_scores)
        seed = params.train.seed
        variants: list[Variant] = []
        report: dict[str, Any] = {"backend": settings.backend}
        merged_meta = read_meta(MERGED)
        if settings.backend == "static":
            encoder = StaticEncoder(STATIC, params.train.max_length)
            e_train, e_val = _static_inputs(train, encoder), _static_inputs(validation, encoder)
            raw_train = None
            source, max_length = STATIC, params.train.max_length
        else:
            model = InProcessClassifier(MERGED)
            raw_train, e_train = _transformer_inputs(model, train)
            raw_val, e_val = _transformer_inputs(model, validation)
            source, max_length = MERGED, merged_meta.max_length
        table, losses = choose_table(e_train, train, e_val, validation, settings, seed)
        report["clusters"] = {"chosen": len(table), "validation_log_loss": losses}
        # The check's rates from the train fold's answers: the point is fitted on validation,
        # and rates counted there would be fitted to the very rows that judge them.
        table = check_table(table, e_train, train, answer_scores(train, config, SCORER),
                            settings.score_grid, params.scorer.sources)
        if settings.backend == "static":
            for head in settings.heads:
                heads, c_losses = choose_heads(e_train, train, e_val, validation, head,
                                               settings, seed)
                variant = fit_variant(head, heads.raw(e_val), e_val, validation, table, heads,
                                      val_table, settings, config)
                variant.report["c_validation_log_loss"] = c_losses
                variants.append(variant)
        else:
            variants.append(fit_variant(merged_meta.head, raw_val, e_val, validation, table,
                                        None, val_table, settings, config))
        served = choose_variant(variants, settings)
        report["variants"] = {v.head: v.report for v in variants}
        report["served"] = served.head
        sample = train.sample(min(settings.reference_rows, len(train)),
                              random_state=settings.reference_seed)
        in_sample = train.index.get_indexer(sample.index)
        if served.heads is not None:
            raw_sample = served.heads.raw(e_train[in_sample])
        else:
            assert raw_train is not None
            raw_sample = raw_train[in_sample]
        drift = reference(_predictions(raw_sample, e_train[in_sample], served.head,
                                       served.table, served.combine),
                          policy_table(sample, config), served.fit.point, config)
        meta = write_bundle(served, CALIBRATED, settings, backend=settings.backend,
                            source=source, max_length=max_length,
                            base_version=merged_meta.version, drift_reference=drift,
                            scorer_version=scorer_version)
        for other in variants:
            if other is not served:
                write_bundle(other, ABLATION, settings, backend=settings.backend,
                             source=source, max_length=max_length,
                             base_version=merged_meta.version, drift_reference=None,
                             scorer_version=scorer_version)
        if len(variants) == 1:  # a DVC output must exist: an empty ablation, said so
            shutil.rmtree(ABLATION, ignore_errors=True)
            ABLATION.mkdir(parents=True)
            (ABLATION / "NONE.txt").write_text("one head variant fitted: no ablation\n")
    except (ParamsError, CalibrateError, OSError) as exc:
        logger.error("calibrate: %s", exc)
        sys.exit(1)
    report.update({"version": meta["version"], "operating_point": meta["operating_point"],
                   "fitted_with_scorer": scorer_version})
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(dumps(report))
    logger.info("calibrate: served %s heads, %s", served.head, meta["version"])


def read_scorer_version(bundle: Path) -> str | None:
    try:
        return str(json.loads((bundle / "scorer_model.json").read_text()).get("version"))
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    main()
