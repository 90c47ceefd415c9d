"""The neighbourhood table (router/neighbourhood.py): fit, lookup, shrinkage, evidence, I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.neighbourhood import NeighbourhoodError, NeighbourhoodTable, fit_table
from router.pricing import estimate_tokens, expected_prices


def _two_groups() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 rows near e1 where simple is right 3 times in 4, 40 near e2 recording no medium."""
    rng = np.random.default_rng(1)
    a = np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.01, (40, 3))
    b = np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.01, (40, 3))
    x = np.vstack([a, b])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    correct = np.vstack([np.tile([1.0, 1.0, 1.0], (30, 1)), np.tile([0.0, 1.0, 1.0], (10, 1)),
                         np.tile([0.0, np.nan, 1.0], (40, 1))])
    tokens = np.vstack([np.tile([10.0, 10.0, 20.0], (40, 1)),
                        np.tile([100.0, np.nan, 300.0], (40, 1))])
    return x, correct, tokens


def test_fit_and_lookup_by_hand(tmp_path: Path) -> None:
    x, correct, tokens = _two_groups()
    table = fit_table(x, correct, tokens, 2, shrinkage=8.0, min_recorded=5, seed=0)
    found = table.lookup(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    first, second = found.cluster
    assert table.rows[first] == 40 and table.recorded[second].tolist() == [40, 0, 40]
    # global simple rate: 30 right of 80 recorded -> 0.375; cluster 1: 30 of 40
    assert found.prior[0, 0] == pytest.approx((0.75 * 40 + 8 * 0.375) / (40 + 8))
    assert found.prior[1, 0] == pytest.approx((0.0 * 40 + 8 * 0.375) / (40 + 8))
    # no medium recorded near e2: the rule may not choose medium there
    assert found.allowed.tolist() == [[True, True, True], [True, False, True]]
    # output tokens shrunk to the global mean by 5 pseudo-rows; medium unseen there -> global
    assert found.output_tokens[1, 2] == pytest.approx((300 * 40 + 5 * 160.0) / 45)
    assert found.output_tokens[1, 1] == pytest.approx(10.0)
    hood = found.explain(table, 1)
    assert hood["tiers"]["medium"] == {"recorded": 0, "right": None}
    table.save(tmp_path / "t.npz")
    again = NeighbourhoodTable.load(tmp_path / "t.npz")
    assert again.lookup(x).prior == pytest.approx(table.lookup(x).prior)


def test_bad_tables_and_embeddings_are_clear_errors(tmp_path: Path) -> None:
    x, correct, tokens = _two_groups()
    table = fit_table(x, correct, tokens, 2, shrinkage=8.0, min_recorded=5, seed=0)
    with pytest.raises(NeighbourhoodError, match="do not fit"):
        table.lookup(np.zeros((1, 7)))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(NeighbourhoodError, match="not a neighbourhood table"):
        NeighbourhoodTable.load(tmp_path / "bad.npz")


def test_expected_prices() -> None:
    assert estimate_tokens(0) == 0.0 and estimate_tokens(1) == 1.0
    assert estimate_tokens(401) == 101.0  # ceil(401 / 4)
    prices = np.array([[1e-6, 2e-6, 1e-5], [2e-6, 4e-6, 3e-5]])
    out = expected_prices(np.array([100.0]), np.array([[10.0, 20.0, 30.0]]), prices)
    assert out[0].tolist() == pytest.approx([100e-6 + 20e-6, 200e-6 + 80e-6, 1e-3 + 9e-4])


def test_a_cluster_is_checkable_only_where_checked_answers_are_the_bulk() -> None:
    """Cluster near e1: 12 checked (scored) rows among 60; near e2: 40 checked of 40. Only the
    second is checkable (12 >= min_recorded 10, but 12 < half of 60)."""
    rng = np.random.default_rng(2)
    a = np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.01, (60, 3))
    b = np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.01, (40, 3))
    x = np.vstack([a, b])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    correct = np.tile([1.0, np.nan, 1.0], (100, 1))
    correct[::3, 0] = 0.0
    table = fit_table(x, correct, np.full((100, 3), 10.0), 2, shrinkage=5.0, min_recorded=10,
                      seed=0)
    checked = np.zeros(100, dtype=bool)
    checked[:12] = True
    checked[60:] = True
    scores = np.where(np.isfinite(correct), 0.8, np.nan)
    table = table.with_checks(table.clusters_of(x), scores, correct, [0.5], checked)
    found = table.lookup(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert found.check is not None
    assert found.check.checkable.tolist() == [False, True]
    # every scored answer scores 0.8 >= 0.5: all pass, right or wrong (tpr = fpr = 1)
    assert found.check.tpr[1, 0, 0] == pytest.approx(1.0)
    assert found.check.fpr[1, 0, 0] == pytest.approx(1.0)
