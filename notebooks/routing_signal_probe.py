"""How much does the prompt say about which tier will be right, beyond its category?

Analysis only (nothing imports it). Reads the observations `tier-router bench` saved
(``var/bench/<workload>.npz``, test fold) and the split folds, embeds the prompts with frozen
MiniLM, and prints AIQ (bench.approaches.aiq, same cost range) for per-tier success estimates
that differ in *what they know*, every one decided by the router's own rule
(:func:`router.gate.replay`: the tier maximising ``P(acceptable) - lambda * expected price``,
lambda swept, routing only, no gate escalations, no overrides):

* ``classifier``: the served classifier's per-tier P and allowed tiers, as observed (the
  bench's routing_only curve, without its gate).
* ``knn_labels``: a k-nearest-neighbour vote of the training rows' cheapest-sufficient-tier
  labels (frozen MiniLM, cosine), its cumulative sum read as P(tier suffices) -- the softmax
  ablation's reading, on a second model.
* ``knn_utility``: per-tier P(correct) estimated from the k nearest training rows' recorded
  outcomes -- same embeddings, the per-tier success targets instead of the labels.
* ``category_utility``: the category's training-row means (knows eval_name).
* ``category_knn_utility``: k nearest rows *within* the category, shrunk towards its mean
  (knows eval_name and the prompt): if the prompt carried signal beyond the category this would
  beat ``category_utility``.

Run (after ``make bench``; about 5 minutes on 2 cores, the embedding cached under var/probe)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python notebooks/routing_signal_probe.py routerbench
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.approaches import TOP, Observations, aiq, hybrid, single_tier, upper_hull
from router.cache.encoder import MiniLMEncoder
from router.gate import OperatingPoint
from router.tiers import TIERS

SPLIT = Path("data/pipeline/split")
CACHE = Path("var/probe")
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-2, 1e2, 80)])  # / mean frontier price


def embedded(fold: str, source: str, encoder: MiniLMEncoder) -> tuple[pd.DataFrame, np.ndarray]:
    rows = pd.read_parquet(SPLIT / f"{fold}.parquet")
    rows = rows[rows["source"] == source].reset_index(drop=True)
    path = CACHE / f"{source}.{fold}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        vectors = encoder.encode(rows["text"].tolist())
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return rows, vectors


def outcome_table(rows: pd.DataFrame) -> np.ndarray:
    """(m, 3) recorded correctness per tier, NaN where the tier was not recorded."""
    def tier_values(raw: str) -> list[float]:
        outcomes = json.loads(raw)
        return [float(outcomes[t]) if outcomes.get(t) is not None else np.nan for t in TIERS]
    return np.array([tier_values(o) for o in rows["outcomes"]])


def rule_aiq(obs: Observations, p: np.ndarray, allowed: np.ndarray | None = None) -> float:
    """AIQ of the router's rule on per-tier success estimates ``p`` (n, 3) over the lambda
    sweep, charged at the recorded calls. Lambda is in units of the mean expected frontier
    price, so every estimate sweeps the same range; ``allowed`` (n, 3): the tiers ``p``
    estimates (not NaN: a tier the workload never records, GSM8K's medium) if None."""
    scale = float(obs.prices[:, TOP].mean())
    p = np.asarray(p, dtype=float)
    if allowed is None:
        allowed = np.isfinite(p)
        p = np.nan_to_num(p)
    # No check statistics: the rule alone decides (with them, a row the rule would cascade
    # goes, routing only, to the cheaper tier it would have checked).
    probed = replace(obs, p=p, allowed=allowed,
                     **dict.fromkeys(("check_thresholds", "check_tpr", "check_fpr", "check_rwr",
                                      "check_rww", "checkable")))
    points = []
    for lam in LAMBDAS:
        point = OperatingPoint(price_weight=float(lam) / scale, trust=0.0, escalate=0.0,
                               score_threshold=0.0, source="probe")
        run = hybrid(probed, point, max_calls=1, cascade=False, overrides=False)
        points.append((run.cost.mean(), np.nanmean(run.correct)))
    return _aiq(obs, *np.array(points).T)


def _ends(obs: Observations) -> tuple[tuple[float, float], tuple[float, float]]:
    low, high = single_tier(obs, obs.tiers[0]), single_tier(obs, TOP)
    return ((float(low.cost.mean()), float(np.nanmean(low.correct))),
            (float(high.cost.mean()), float(np.nanmean(high.correct))))


def _aiq(obs: Observations, costs: np.ndarray, qualities: np.ndarray) -> float:
    low, high = _ends(obs)
    return aiq(upper_hull(costs, qualities, low, high), low[0], high[0])


def neighbours(query: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(query @ keys.T), axis=1)[:, :k]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", help="routerbench | mmlu | gsm8k (bench observations)")
    parser.add_argument("-k", type=int, default=30, help="neighbours")
    parser.add_argument("--shrink", type=float, default=50.0,
                        help="pseudo-rows of the category mean in category_knn_utility")
    args = parser.parse_args()

    obs = Observations.load(Path("var/bench") / f"{args.workload}.npz")
    encoder = MiniLMEncoder(max_length=128)
    train, keys = embedded("train", args.workload, encoder)
    test, queries = embedded("test", args.workload, encoder)
    position = {row_id: i for i, row_id in enumerate(test["row_id"])}
    queries = queries[[position[i] for i in obs.ids]]
    correct = outcome_table(train)
    recorded = np.isfinite(correct).any(axis=0)  # a tier the workload never records stays NaN
    prior = np.full(len(TIERS), np.nan)
    prior[recorded] = np.nanmean(correct[:, recorded], axis=0)
    correct = np.where(np.isnan(correct), prior, correct)
    labels = np.stack([(train["label"] == t).to_numpy(float) for t in TIERS], axis=1)

    nn = neighbours(queries, keys, args.k)
    votes = labels[nn].sum(axis=1) + 0.5 * labels.mean(axis=0)
    # P(cheapest sufficient tier <= t) = P(tier t suffices), as the softmax head reads it
    knn_suffices = np.cumsum(votes / votes.sum(axis=1, keepdims=True), axis=1)
    knn_correct = (correct[nn].sum(axis=1) + 2 * prior) / (args.k + 2)

    categories = np.asarray(obs.categories)
    train_categories = train["category"].to_numpy()
    by_category = np.tile(prior, (len(obs), 1))
    within = by_category.copy()
    for category in np.unique(categories):
        rows = np.flatnonzero(categories == category)
        cols = np.flatnonzero(train_categories == category)
        if not len(cols):
            continue
        mean = (correct[cols].sum(axis=0) + 2 * prior) / (len(cols) + 2)
        by_category[rows] = mean
        near = neighbours(queries[rows], keys[cols], min(args.k, len(cols)))
        within[rows] = ((correct[cols][near].sum(axis=1) + args.shrink * mean)
                        / (near.shape[1] + args.shrink))

    result = {
        "workload": args.workload, "rows": len(obs), "k": args.k,
        "classifier": rule_aiq(obs, obs.p, obs.allowed),
        "knn_labels": rule_aiq(obs, knn_suffices),
        "knn_utility": rule_aiq(obs, knn_correct),
        "category_utility": rule_aiq(obs, by_category),
        "category_knn_utility": rule_aiq(obs, within),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
