"""Registration and promotion against a real MLflow store (sqlite + local artifacts): the
comparison on the heads' ECE, high-stakes reach-critical, cost and quality; a champion this
code cannot load is replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from router.classifier import load_classifier
from tests.conftest import CONFIG_PATH
from training.evaluate import evaluate_bundle, write_plots
from training.params import CalibrateParams, Params, Tolerances
from training.register import COMPARED, compare, register
from training.scoring import dumps

BETTER = {"mean_head_ece": 0.02, "min_high_stakes_reach_critical": 0.9,
          "cost_ratio_vs_frontier": 0.2, "quality_ratio_vs_frontier": 0.97}
TARGET = CalibrateParams(quality_target=0.95)


def test_compared_metrics() -> None:
    assert COMPARED == ("mean_head_ece", "min_high_stakes_reach_critical",
                        "cost_ratio_vs_frontier", "quality_ratio_vs_frontier")


def test_compare_refuses_a_worse_challenger() -> None:
    tolerances = Tolerances()
    promoted, reason = compare(BETTER, BETTER, tolerances, TARGET)
    # min_cost: the quality bar is the champion's 0.97 or the target 0.95, the lower.
    assert promoted and reason == (
        "no worse than the champion (mean_head_ece 0.0200 vs 0.0200, "
        "min_high_stakes_reach_critical 0.9000 vs 0.9000, cost_ratio_vs_frontier 0.2000 vs "
        "0.2000, quality_ratio_vs_frontier 0.9700 vs 0.9500)")
    promoted, reason = compare({**BETTER, "mean_head_ece": 0.05}, BETTER, tolerances, TARGET)
    assert not promoted
    assert reason.startswith("worse than the champion on mean_head_ece (mean_head_ece 0.0500 "
                             "vs 0.0200")
    # Tolerances (params.yaml's defaults): ECE 0.005, reach-critical 0.01, cost 0.02,
    # quality 0.005 -- just inside passes, just outside does not.
    for key, inside, outside in (("mean_head_ece", 0.024, 0.026),
                                 ("min_high_stakes_reach_critical", 0.895, 0.885),
                                 ("cost_ratio_vs_frontier", 0.215, 0.225),
                                 ("quality_ratio_vs_frontier", 0.946, 0.944)):
        assert compare({**BETTER, key: inside}, BETTER, tolerances, TARGET)[0], key
        promoted, reason = compare({**BETTER, key: outside}, BETTER, tolerances, TARGET)
        assert not promoted and reason.startswith(f"worse than the champion on {key} ("), key
    looser = Tolerances(reach_critical=0.05)
    assert compare({**BETTER, "min_high_stakes_reach_critical": 0.885}, BETTER, looser,
                   TARGET)[0]
    # Two failures are both named.
    promoted, reason = compare({**BETTER, "mean_head_ece": 0.1, "cost_ratio_vs_frontier": 0.5},
                               BETTER, tolerances, TARGET)
    assert reason.startswith("worse than the champion on mean_head_ece, cost_ratio_vs_frontier")


def test_a_fold_without_high_stakes_rows_skips_reach_critical() -> None:
    lower = {**BETTER, "min_high_stakes_reach_critical": 0.1}
    for champion, challenger in (({**BETTER, "min_high_stakes_reach_critical": None}, lower),
                                 (BETTER, {**BETTER, "min_high_stakes_reach_critical": None})):
        promoted, reason = compare(challenger, champion, Tolerances(), TARGET)
        assert promoted and "reach_critical" not in reason


def test_a_champion_overshooting_the_quality_target_sets_no_higher_bar() -> None:
    """min_cost: both meet the 95% target; the cheaper one wins even with less quality."""
    cheaper = {**BETTER, "cost_ratio_vs_frontier": 0.15, "quality_ratio_vs_frontier": 0.952}
    assert compare(cheaper, BETTER, Tolerances(), CalibrateParams(quality_target=0.95))[0]
    assert not compare(cheaper, BETTER, Tolerances(), CalibrateParams(quality_target=0.97))[0]
    # max_quality: the cost budget, not the champion's lower cost, is the bar.
    pricier = {**BETTER, "cost_ratio_vs_frontier": 0.24}
    assert compare(pricier, BETTER, Tolerances(),
                   CalibrateParams(objective="max_quality", cost_budget=0.25))[0]
    assert not compare(pricier, BETTER, Tolerances(),
                       CalibrateParams(objective="max_quality", cost_budget=0.2))[0]


def _bundle(tiny_static_dir: Path, folder: Path, version: str, **meta_changes) -> Path:
    shutil.copytree(tiny_static_dir, folder)
    meta = json.loads((folder / "router_model.json").read_text())
    (folder / "router_model.json").write_text(json.dumps({**meta, "version": version,
                                                          **meta_changes}))
    return folder


def _stage_files(bundle: Path, test: pd.DataFrame, params: Params, config) -> dict:
    """What evaluate leaves for register: metrics/*.json and plots/*.png in the cwd."""
    metrics, gate, plot = evaluate_bundle(load_classifier(str(bundle)), test, config,
                                          params.evaluate, None)
    _write_metrics(metrics, gate)
    write_plots(plot, metrics["confusion_cheapest_sufficient_vs_kept"], Path("plots"))
    return metrics


def _write_metrics(metrics: dict, gate: dict) -> None:
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/classifier.json").write_text(dumps(metrics))
    Path("metrics/gate.json").write_text(dumps(gate))


def test_promotion_replaces_an_unloadable_champion_and_refuses_a_worse_one(
        tiny_static_dir: Path, tmp_path: Path, fold_rows: pd.DataFrame, router_config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    params = Params.model_validate({
        "evaluate": {"bootstrap": 20}, "calibrate": {"router_config": str(CONFIG_PATH)},
        "register": {"tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                     "artifact_root": str(tmp_path / "mlruns" / "artifacts")}})
    test = fold_rows.iloc[:120].reset_index(drop=True)
    test.loc[:9, "slice"] = json.dumps(["legal"])  # a high-stakes slice to compare on

    # 1. A bundle of an older format: registered (nothing to beat), unloadable afterwards.
    old = _bundle(tiny_static_dir, tmp_path / "old", "old-format", format=1)
    good = _bundle(tiny_static_dir, tmp_path / "good", "good")
    _write_metrics(*evaluate_bundle(load_classifier(str(good)), test, router_config,
                                    params.evaluate, None)[:2])
    Path("plots").mkdir()
    first = register(params, old, test)
    assert (first["promoted"], first["reason"]) == (True, "no champion yet")
    assert first["champion_metrics_on_same_fold"] is None

    # 2. The current format: the old champion cannot be re-scored, so it is replaced.
    good_metrics = _stage_files(good, test, params, router_config)
    second = register(params, good, test)
    assert second["promoted"] is True
    assert second["reason"].startswith("the champion cannot be re-scored by this code: ")
    assert "bundle format 1" in second["reason"]
    assert second["previous_champion"] == "1"
    assert second["challenger_metrics"] == {k: good_metrics[k] for k in COMPARED}
    assert second["challenger_metrics"]["min_high_stakes_reach_critical"] is not None

    # 3. Same weights, heads sharpened 8x: over-confident, so worse calibrated.
    sharp = _bundle(tiny_static_dir, tmp_path / "sharp", "sharp",
                    combine={"head": [8.0, 8.0, 8.0], "prior": [0.5, 0.5, 0.5],
                             "bias": [0.0, 0.0, 0.0]})
    sharp_metrics = _stage_files(sharp, test, params, router_config)
    assert sharp_metrics["mean_head_ece"] > good_metrics["mean_head_ece"] + 0.005
    third = register(params, sharp, test)
    assert third["promoted"] is False
    assert third["reason"].startswith("worse than the champion on mean_head_ece")
    # The champion was re-scored on the challenger's fold: its own metrics, reproduced.
    rescored = third["champion_metrics_on_same_fold"]
    assert set(rescored) == set(COMPARED)
    for key in COMPARED:
        assert rescored[key] == pytest.approx(good_metrics[key], abs=1e-9), key

    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("tier-classifier", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("tier-classifier", "challenger").version) == "3"
    tags = client.get_model_version("tier-classifier", "3").tags
    assert tags["promotion"] == "refused" and tags["model_version"] == "sharp"
    assert client.get_model_version("tier-classifier", "2").tags["promotion"] == "promoted"
    champion = load_classifier("models:/tier-classifier@champion")
    assert champion.meta.version == "good" and champion.meta.operating_point is not None
    assert len(champion.predict(["user: hello"])) == 1
