"""How much does the prompt say about which tier will be right, beyond its category?

Analysis only (nothing imports it). Reads the observations `tier-router bench` saved
(``var/bench/<workload>.npz``, test fold) and the split folds, embeds the prompts with frozen
MiniLM, and prints AIQ (bench.approaches.aiq, same cost range) for routing rules that differ in
*what they know* and *how they decide*:

* ``classifier_gate``: the champion classifier's probabilities through the gate sweep (the
  bench's routing_only curve).
* ``knn_labels_gate``: the same gate on a k-nearest-neighbour vote of the training rows'
  cheapest-sufficient-tier labels (frozen MiniLM, cosine) -- a second model, same labels.
* ``knn_utility``: per-tier P(correct) estimated from the k nearest training rows' recorded
  outcomes, then the tier maximising ``P(correct) - lambda * cost`` swept over lambda -- same
  embeddings, a cost-aware decision rule instead of the labels.
* ``category_utility``: the same rule on the category's training-row means (knows eval_name).
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

from bench.approaches import TOP, Observations, aiq, single_tier, upper_hull
from bench.run import BenchSettings, HybridKnobs, _sweeps
from router.cache.encoder import MiniLMEncoder
from router.tiers import TIERS

SPLIT = Path("data/pipeline/split")
CACHE = Path("var/probe")
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-2, 1e2, 80)])  # x mean frontier cost


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


def utility_aiq(obs: Observations, p_correct: np.ndarray) -> float:
    """AIQ of 'argmax_j P(correct_j) - lambda * cost_j' over the lambda sweep. Cost per row
    and tier is what that call cost (input tokens dominate it, so a router can estimate it)."""
    r = np.arange(len(obs))
    scale = float(obs.cost[:, TOP].mean())
    points = []
    for lam in LAMBDAS:
        j = obs.mapped(np.argmax(p_correct - lam * obs.cost / scale, axis=1))
        points.append((obs.cost[r, j].mean(), np.nanmean(obs.correct[r, j])))
    return _aiq(obs, *np.array(points).T)


def _ends(obs: Observations) -> tuple[tuple[float, float], tuple[float, float]]:
    low, high = single_tier(obs, obs.tiers[0]), single_tier(obs, TOP)
    return ((float(low.cost.mean()), float(np.nanmean(low.correct))),
            (float(high.cost.mean()), float(np.nanmean(high.correct))))


def _aiq(obs: Observations, costs: np.ndarray, qualities: np.ndarray) -> float:
    low, high = _ends(obs)
    return aiq(upper_hull(costs, qualities, low, high), low[0], high[0])


def gate_aiq(obs: Observations) -> float:
    settings = BenchSettings(0.5, 0.9, 0.8, 2)
    singles = {j: single_tier(obs, j) for j in obs.tiers}
    sweep = _sweeps(obs, settings, HybridKnobs(0.5, 0.9, 0.8, 2), singles, [], None,
                    only=("routing_only",))["routing_only"]
    low, high = _ends(obs)
    return aiq(sweep.curve(low, high), low[0], high[0])


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
    prior = np.nanmean(correct, axis=0)
    correct = np.where(np.isnan(correct), prior, correct)
    labels = np.stack([(train["label"] == t).to_numpy(float) for t in TIERS], axis=1)

    nn = neighbours(queries, keys, args.k)
    votes = labels[nn].sum(axis=1) + 0.5 * labels.mean(axis=0)
    knn_probs = votes / votes.sum(axis=1, keepdims=True)
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
        "classifier_gate": gate_aiq(obs),
        "knn_labels_gate": gate_aiq(replace(obs, probs=knn_probs)),
        "knn_utility": utility_aiq(obs, knn_correct),
        "category_utility": utility_aiq(obs, by_category),
        "category_knn_utility": utility_aiq(obs, within),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
