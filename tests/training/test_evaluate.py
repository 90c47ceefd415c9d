"""evaluate: per-head calibration metrics on hand-built arrays, and a static bundle at its stored
operating point replayed on a fold (overrides, cascades, slices, baselines, plots)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.classifier import load_classifier
from router.config import RouterConfig
from router.overrides import DomainOverrides
from router.tiers import TIERS
from tests.conftest import OPERATING_POINT
from training.evaluate import evaluate_bundle, pooled_calibration, write_plots
from training.params import EvaluateParams
from training.scoring import head_metrics

PARAMS = EvaluateParams(bootstrap=50)
NAN = np.nan


def test_head_metrics_on_hand_built_arrays() -> None:
    """Six rows, the last labelled by a rule (not usable); medium unrecorded on rows 0-1."""
    p = np.array([[0.1, 0.5, 0.95], [0.4, 0.5, 0.95], [0.6, 0.8, 0.92],
                  [0.9, 0.2, 0.97], [0.3, 0.7, 0.96], [0.99, 0.99, 0.1]])
    targets = np.array([[0, NAN, 1], [0, NAN, 1], [1, 1, 1], [1, 0, 0], [1, 1, 1], [0, 1, 0]],
                       dtype=float)
    usable = np.array([True, True, True, True, True, False])
    out = head_metrics(p, targets, usable, bins=15, bootstrap=200, seed=0)
    simple, medium, critical = (out[t] for t in TIERS)
    # simple: every row in its own 1/15 bin, so ECE = mean |y - p| = (.1+.4+.4+.1+.7) / 5;
    # Brier (.01+.16+.16+.01+.49) / 5; AUROC: 5 of the 6 (positive, negative) pairs ordered.
    assert (simple["rows"], simple["rate"], simple["mean_p"]) == (5, 0.6, pytest.approx(0.46))
    assert simple["ece"] == pytest.approx(0.34)
    assert simple["brier"] == pytest.approx(0.166)
    assert simple["auroc"] == pytest.approx(5 / 6)
    # medium: rows 2-4 only; (.2 + .2 + .3) / 3, (.04 + .04 + .09) / 3, perfectly ordered.
    assert medium["rows"] == 3 and medium["rate"] == pytest.approx(2 / 3)
    assert medium["ece"] == pytest.approx(0.7 / 3)
    assert medium["brier"] == pytest.approx(0.17 / 3)
    assert medium["auroc"] == 1.0
    # critical: rows 0, 1, 3, 4 share the bin [14/15, 1): |3/4 - 0.9575| x 4/5, plus row 2's
    # |1 - 0.92| x 1/5; the one negative has the highest P: AUROC 0.
    assert critical["ece"] == pytest.approx(0.2075 * 0.8 + 0.08 * 0.2)
    assert critical["brier"] == pytest.approx(0.9539 / 5)
    assert critical["auroc"] == 0.0
    for entry in out.values():
        for name in ("ece", "brier", "auroc"):
            low, high = entry[f"{name}_ci95"]
            assert 0.0 <= low <= high <= 1.0, (name, low, high)
    # A tier no usable row records: only its count.
    targets[:, 1] = NAN
    assert head_metrics(p, targets, usable, bins=15, bootstrap=20, seed=0)["medium"] == {
        "rows": 0}


def test_pooled_calibration_counts_every_recorded_usable_cell() -> None:
    p = np.array([[0.9, 0.2, 0.5], [0.1, 0.1, 0.1]])
    targets = np.array([[1, 0, NAN], [1, 1, 1]], dtype=float)
    pooled = pooled_calibration(p, targets, np.array([True, False]), bins=15)
    # Two cells, [0.1, 0.9] and [0.8, 0.2], both right: top-label confidences 0.9 and 0.8 in
    # different bins; multi-class Brier (0.01 + 0.01 + 0.04 + 0.04) / 2.
    assert pooled == {"ece": pytest.approx(0.15), "brier": pytest.approx(0.05), "cells": 2}


def _rows(fold_rows: pd.DataFrame) -> pd.DataFrame:
    """The fixture fold with 50 rule-labelled rows, 10 legal rows an override pins to the
    frontier, and 10 rows tagged finance (no override keyword in them)."""
    rows = fold_rows.copy()
    rows.loc[:49, "label_source"] = "rule"
    legal = rows.index[50:60]
    rows.loc[legal, "text"] = [f"user: my lawyer asks about the statute, case {i}"
                               for i in range(10)]
    rows.loc[legal, "slice"] = json.dumps(["legal"])
    rows.loc[rows.index[60:70], "slice"] = json.dumps(["finance"])
    return rows


def test_bundle_metrics_policy_slices_and_plots(tiny_static_dir: Path, fold_rows: pd.DataFrame,
                                                router_config: RouterConfig,
                                                tmp_path: Path) -> None:
    rows = _rows(fold_rows)
    classifier = load_classifier(f"path:{tiny_static_dir}")
    metrics, gate, plot = evaluate_bundle(classifier, rows, router_config, PARAMS, None)
    assert (metrics["model_version"], metrics["head"]) == ("tiny-static", "per_tier")
    assert metrics["outcome_rows"] == 350 and metrics["rule_labelled_rows_excluded"] == 50
    targets = [json.loads(cell) for cell in rows["targets"].iloc[50:]]
    for tier in TIERS:  # the heads count only the usable rows that record the tier
        assert metrics["heads"][tier]["rows"] == sum(t[tier] is not None for t in targets)
    assert metrics["mean_head_ece"] == pytest.approx(
        np.mean([metrics["heads"][t]["ece"] for t in TIERS]))
    assert metrics["pooled"]["cells"] == sum(v is not None for t in targets for v in t.values())

    slices = metrics["slices"]
    assert set(slices) == {"critical", "finance", "legal"}
    assert slices["legal"]["rows"] == slices["legal"]["outcome_rows"] == 10
    assert (slices["legal"]["reach_critical"], slices["legal"]["override_rate"]) == (1.0, 1.0)
    assert slices["finance"]["override_rate"] == 0.0
    critical = np.array(["critical" in json.loads(s) for s in rows["slice"]])
    assert critical.sum() > 10  # the fixture's critical-label rows, less the 20 retagged
    assert slices["critical"]["rows"] == int(critical.sum())
    assert slices["critical"]["outcome_rows"] == int(critical[50:].sum())
    assert metrics["high_stakes_reach_critical"] == {
        "finance": slices["finance"]["reach_critical"], "legal": 1.0}
    assert metrics["min_high_stakes_reach_critical"] == min(
        slices["finance"]["reach_critical"], 1.0)

    point = gate["operating_point"]
    assert {k: point[k] for k in OPERATING_POINT} == OPERATING_POINT
    assert gate["threshold_source"] == "model:tiny-static"
    policy = gate["policy"]
    # The 10 legal rows and the fixture's own rows an override rule matches (as the service
    # would match them).
    rules = DomainOverrides(router_config.overrides)
    natural = sum(rules.match(text) is not None for text in fold_rows["text"].iloc[60:])
    natural += sum(rules.match(text) is not None for text in fold_rows["text"].iloc[:50])
    assert policy["rows"] == len(rows)
    assert policy["override_rate"] == pytest.approx((10 + natural) / 400)
    assert gate["without_overrides"]["override_rate"] == policy["override_rate"]
    assert metrics["cost_ratio_vs_frontier"] == policy["cost_ratio_vs_frontier"]
    assert 0 < policy["cost_ratio_vs_frontier"] <= 1.0
    assert set(gate["by_source"]) == {"routerbench"}
    assert gate["by_source"]["routerbench"]["rows"] == len(rows)
    assert gate["routing_only"]["escalation_rate"] <= policy["escalation_rate"]
    # Baselines: every row to one tier. Quality relative to the frontier on the rows that
    # record both, from the targets themselves.
    baselines = gate["baselines"]
    assert baselines["critical"]["cost_ratio_vs_frontier"] == 1.0
    assert baselines["critical"]["quality_ratio_vs_frontier"] == 1.0
    every = [json.loads(cell) for cell in rows["targets"]]
    for tier in ("simple", "medium"):
        both = [t for t in every if t[tier] is not None and t["critical"] is not None]
        assert baselines[tier]["quality_ratio_vs_frontier"] == pytest.approx(
            sum(t[tier] for t in both) / sum(t["critical"] for t in both))
        assert baselines[tier]["cost_ratio_vs_frontier"] < 0.2  # open models: far cheaper
    confusion = np.array(metrics["confusion_cheapest_sufficient_vs_kept"])
    assert confusion.shape == (3, 3)
    assert confusion.sum() == sum(all(v is not None for v in t.values()) for t in every)

    write_plots(plot, metrics["confusion_cheapest_sufficient_vs_kept"], tmp_path)
    for name in ("reliability.png", "confusion.png", "reliability.json"):
        assert (tmp_path / name).stat().st_size > 0
    points = json.loads((tmp_path / "reliability.json").read_text())
    assert {p["when"] for p in points} == set(TIERS)


def test_failed_checks_escalate_the_cascades(tiny_static_dir: Path, fold_rows: pd.DataFrame,
                                             router_config: RouterConfig) -> None:
    """The tiny bundle stores no check statistics: rows whose confidence lies between escalate
    (0.3) and trust (0.8) cascade, checked at score 0.5. Unscored answers pass; answers all
    scored 0 fail, and each cascade then escalates once more."""
    rows = _rows(fold_rows)
    classifier = load_classifier(f"path:{tiny_static_dir}")
    _, passing, _ = evaluate_bundle(classifier, rows, router_config, PARAMS, None)
    _, failing, _ = evaluate_bundle(classifier, rows, router_config, PARAMS,
                                    np.zeros((len(rows), 3)))
    cascades = passing["policy"]["cascade_rate"]
    assert cascades > 0 and failing["policy"]["cascade_rate"] == cascades
    assert failing["policy"]["escalation_rate"] == pytest.approx(
        passing["policy"]["escalation_rate"] + cascades)
    assert failing["policy"]["cost_ratio_vs_frontier"] > passing["policy"][
        "cost_ratio_vs_frontier"]
    # Routing only: no check is made, so the scores change nothing.
    assert failing["routing_only"] == passing["routing_only"]
    assert passing["routing_only"]["cascade_rate"] == 0.0


def test_a_bundle_without_an_operating_point_is_refused(tiny_static_dir: Path, tmp_path: Path,
                                                        fold_rows: pd.DataFrame,
                                                        router_config: RouterConfig) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_static_dir, bundle)
    meta = json.loads((bundle / "router_model.json").read_text())
    del meta["operating_point"]
    (bundle / "router_model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no stored operating point"):
        evaluate_bundle(load_classifier(str(bundle)), fold_rows.iloc[:20], router_config,
                        PARAMS, None)
