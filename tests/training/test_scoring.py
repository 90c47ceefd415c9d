"""training/scoring.py: the replay table charges a tier a row does not record as the tier above."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router.classifier import Predictions
from router.config import RouterConfig
from router.gate import OperatingPoint
from training.scoring import policy_table, replay_metrics, run_policy


def _rows() -> pd.DataFrame:
    """Two MMLU-like rows (no medium model recorded) and one RouterBench-like row."""
    rows = []
    for i, (targets, source) in enumerate([
            ({"simple": 0, "medium": None, "critical": 1}, "mmlu"),
            ({"simple": 1, "medium": None, "critical": 1}, "mmlu"),
            ({"simple": 0, "medium": 1, "critical": 0}, "routerbench")]):
        rows.append({"row_id": f"r{i}", "source": source, "text": f"user: question {i}",
                     "targets": json.dumps(targets), "prompt_tokens": "100",
                     "output_tokens": json.dumps({"simple": 10, "medium": None
                                                  if source == "mmlu" else 10, "critical": 10}),
                     "weight": 1.0})
    return pd.DataFrame(rows)


def test_asking_an_unrecorded_medium_is_answered_and_charged_by_critical(
        router_config: RouterConfig) -> None:
    table = policy_table(_rows(), router_config)
    # mean prices (USD per token): simple 5.5e-7, medium 7e-7, critical 1e-5 in / 3e-5 out
    critical_cost = 100 * 1e-5 + 10 * 3e-5
    assert table.executes[:, 1].tolist() == [2, 2, 1]
    assert table.cost[0, 1] == pytest.approx(critical_cost)  # never a medium price
    assert table.cost[2, 1] == pytest.approx(110 * 7e-7)
    assert table.correct[0, 1] == 1.0 and table.correct[2, 1] == 1.0  # GPT-4's / Yi's own
    # A rule that always picks medium: the MMLU rows pay GPT-4 and score GPT-4's outcomes.
    p = np.tile([0.1, 0.99, 0.2], (3, 1))
    found = Predictions(p, np.ones((3, 3), bool), np.full((3, 3), 10.0))
    prices = np.tile([1e-5, 2e-5, 1e-3], (3, 1))
    run = run_policy(table, found, prices, OperatingPoint(1.0, 0.5, 0.0, 0.5),
                     max_calls=2, overrides=False)
    assert run.final.tolist() == [2, 2, 1]
    metrics = replay_metrics(run, table)
    assert metrics["cost_per_task"] == pytest.approx((2 * critical_cost + 110 * 7e-7) / 3)
    assert metrics["quality"] == pytest.approx(1.0)  # 1, 1 (GPT-4) and 1 (Yi)
    assert metrics["frontier_quality"] == pytest.approx(2 / 3)
