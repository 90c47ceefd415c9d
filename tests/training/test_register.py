"""Registration and promotion against a real MLflow store (sqlite + local artifacts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from router.classifier import MODEL_META, load_classifier
from tests.conftest import CONFIG_PATH
from training.evaluate import evaluate_model, write_plots
from training.params import CalibrateParams, Params, Tolerances
from training.register import compare, register

BETTER = {"ece": 0.02, "critical_recall": 0.9, "cost_ratio_vs_frontier": 0.2,
          "quality_ratio_vs_frontier": 0.97}


def test_compare_refuses_a_worse_challenger() -> None:
    tolerances, target = Tolerances(), CalibrateParams(quality_target=0.95)
    assert compare(BETTER, BETTER, tolerances, target)[0]
    promoted, reason = compare({**BETTER, "ece": 0.05}, BETTER, tolerances, target)
    assert not promoted
    assert reason.startswith("worse than the champion on ece (ece 0.0500 vs 0.0200")
    assert not compare({**BETTER, "quality_ratio_vs_frontier": 0.9}, BETTER, tolerances,
                       target)[0]
    assert not compare({**BETTER, "cost_ratio_vs_frontier": 0.3}, BETTER, tolerances, target)[0]
    assert compare({**BETTER, "ece": 0.024}, BETTER, tolerances, target)[0]  # within tolerance


def test_a_champion_overshooting_the_quality_target_sets_no_higher_bar() -> None:
    """min_cost: both meet the 95% target; the cheaper one wins even with less quality."""
    cheaper = {**BETTER, "cost_ratio_vs_frontier": 0.15, "quality_ratio_vs_frontier": 0.952}
    assert compare(cheaper, BETTER, Tolerances(), CalibrateParams(quality_target=0.95))[0]
    assert not compare(cheaper, BETTER, Tolerances(), CalibrateParams(quality_target=0.97))[0]
    # max_quality: the cost budget, not the champion's lower cost, is the bar.
    pricier = {**BETTER, "cost_ratio_vs_frontier": 0.24}
    assert compare(pricier, BETTER, Tolerances(),
                   CalibrateParams(objective="max_quality", cost_budget=0.25))[0]


def _bundle(tiny_bert_dir: Path, folder: Path, temperature: float) -> Path:
    shutil.copytree(tiny_bert_dir, folder)
    (folder / MODEL_META).write_text(json.dumps({
        "version": f"t{temperature}", "temperature": temperature,
        "thresholds": {"escalate": 0.5, "trust": 0.8}}))
    return folder


def _stage_files(bundle: Path, test: pd.DataFrame, params: Params, config) -> None:
    """What evaluate leaves for register: metrics/*.json and plots/*.png in the cwd."""
    from training.evaluate import load_bundle
    from training.scoring import model_logits

    scaling, thresholds = load_bundle(bundle)
    metrics, gate, plot = evaluate_model(model_logits(bundle, test["text"].tolist()),
                                         scaling, thresholds, test, config, params.evaluate)
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/classifier.json").write_text(json.dumps(metrics))
    Path("metrics/gate.json").write_text(json.dumps(gate))
    write_plots(plot, metrics["confusion"], Path("plots"))


def test_first_model_becomes_champion_and_a_worse_one_does_not(
        tiny_bert_dir: Path, tmp_path: Path, fold_rows: pd.DataFrame, router_config,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    params = Params.model_validate({
        "evaluate": {"bootstrap": 20}, "calibrate": {"router_config": str(CONFIG_PATH)},
        "register": {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "artifact_root": str(tmp_path / "mlruns" / "artifacts")}})
    test = fold_rows.iloc[:120].reset_index(drop=True)
    good = _bundle(tiny_bert_dir, tmp_path / "good", 1.0)
    _stage_files(good, test, params, router_config)
    first = register(params, good, test)
    assert (first["promoted"], first["reason"]) == (True, "no champion yet")

    # Same weights, absurdly sharpened probabilities and a different policy: worse somewhere.
    bad = _bundle(tiny_bert_dir, tmp_path / "bad", 0.02)
    _stage_files(bad, test, params, router_config)
    second = register(params, bad, test)
    assert second["promoted"] is False
    assert second["reason"].startswith("worse than the champion on ")
    assert second["champion_metrics_on_same_fold"]["ece"] == pytest.approx(
        first["challenger_metrics"]["ece"], abs=1e-6)

    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("tier-classifier", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tier-classifier", "challenger").version) == "2"
    assert client.get_model_version("tier-classifier", "2").tags["promotion"] == "refused"
    champion = load_classifier("models:/tier-classifier@champion")
    assert champion.meta.version == "t1.0"
    assert len(champion.predict(["user: hello"])) == 1
