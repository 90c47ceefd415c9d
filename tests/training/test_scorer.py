"""The scorer stage's core on tiny data: rows and folds, head, calibration, report, bundles of each
encoder kind, the encoder study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.scorer import (
    ENCODER_DIR,
    SCORER_META,
    EmbeddingScorer,
    NoEncoder,
    StaticTextEncoder,
    TextEncoder,
    apply_calibration,
    load_scorer,
    pair_features,
    sigmoid,
)
from router.tiers import TIERS
from tests.router.test_scorer import tiny_static_folder
from training.params import Params, ScorerParams
from training.scorer import (
    ScorerError,
    build_rows,
    compare_encoders,
    fit_calibration,
    fit_head,
    json_safe,
    make_encoder,
    score_metrics,
    train_scorer,
    write_bundle,
)
from workloads import Workload

FOLD_OF_INDEX = ("train", "train", "validation", "test")  # record i -> FOLD_OF_INDEX[i % 4]


def _folds(fold_rows: pd.DataFrame, n: int) -> dict[str, pd.DataFrame]:
    """The first ``n`` fixture rows dealt into the three folds, as the split stage writes them."""
    rows = fold_rows.iloc[:n].copy()
    rows["fold"] = [FOLD_OF_INDEX[i % 4] for i in range(len(rows))]
    return {fold: rows[rows["fold"] == fold].reset_index(drop=True)
            for fold in ("train", "validation", "test")}


def test_rows_take_their_prompts_fold_and_never_leak_test_prompts(
        fold_rows: pd.DataFrame, routerbench: Workload) -> None:
    folds = _folds(fold_rows, 40)
    rows, counts = build_rows(folds, [routerbench])
    fold_of = {r: f for f, frame in folds.items() for r in frame["row_id"]}
    assert set(rows["fold"]) == {"train", "validation", "test"}
    assert (rows["row_id"].map(fold_of) == rows["fold"]).all()
    train_prompts = set(rows.loc[rows["fold"] == "train", "prompt"])
    test_prompts = set(rows.loc[rows["fold"] == "test", "prompt"])
    assert not train_prompts & test_prompts
    assert not set(rows.loc[rows["fold"] == "train", "row_id"]) & set(folds["test"]["row_id"])
    # The prompt text is the split's (what the classifier sees), not re-derived.
    text_of = dict(zip(fold_rows["row_id"], fold_rows["text"], strict=True))
    assert (rows["prompt"] == rows["row_id"].map(text_of)).all()
    assert counts["records_not_in_split"] == len(routerbench.records) - 40
    # By default the three tier models' answers, each carrying its tier.
    assert rows.groupby("row_id")["model"].nunique().max() == 3
    assert set(rows.loc[rows["model"] == "gpt-4-1106-preview", "tier"]) == {"critical"}
    assert rows["tier"].notna().all()
    # Extra models join without a tier; "all" takes RouterBench's 11.
    few, _ = build_rows(folds, [routerbench], ["claude-v2"])
    assert few.groupby("row_id")["model"].nunique().max() == 4
    assert few.loc[few["model"] == "claude-v2", "tier"].isna().all()
    every, _ = build_rows(folds, [routerbench], "all")
    assert every.groupby("row_id")["model"].nunique().max() == 11


def test_a_prompt_in_two_folds_is_refused(fold_rows: pd.DataFrame,
                                          routerbench: Workload) -> None:
    folds = _folds(fold_rows, 8)
    folds["test"] = pd.concat([folds["test"], folds["train"].iloc[:1]], ignore_index=True)
    with pytest.raises(ScorerError, match="is in both train and test"):
        build_rows(folds, [routerbench])


def test_head_and_calibration_on_synthetic_scores() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = rng.random(600) < sigmoid(2.0 * x[:, 0])
    head = fit_head(x, y, regularisation=1.0, seed=0)
    assert score_metrics(head.predict(x), y, 15)["auroc"] > 0.8
    with pytest.raises(ScorerError, match="all right"):
        fit_head(x, np.ones(600, dtype=bool), 1.0, 0)

    # Overconfident raw scores: calibration must bring the ECE down.
    truth = sigmoid(rng.normal(size=2000))
    y = rng.random(2000) < truth
    raw = sigmoid(4.0 * np.log(truth / (1 - truth)))
    before = score_metrics(raw, y, 15)["ece"]
    from router.scorer import apply_calibration

    for method in ("platt", "isotonic"):
        calibration = fit_calibration(raw, y, method)
        assert calibration["method"] == method
        assert score_metrics(apply_calibration(raw, calibration), y, 15)["ece"] < before / 2
    assert fit_calibration(raw[:5], y[:5], "platt") == {"method": "none"}
    # Per tier: a tier whose raw scores run 0.3 too high gets its own map.
    tiers = np.where(np.arange(2000) % 2 == 0, "simple", "critical")
    shifted = np.where(tiers == "simple", np.clip(truth + 0.3, 0.01, 0.99), truth)
    calibration = fit_calibration(shifted, y, "platt", tiers)
    assert set(calibration["by_tier"]) == {"simple", "critical"}
    pooled = apply_calibration(shifted, calibration)
    per_tier = apply_calibration(shifted, calibration, tiers.tolist())
    simple = tiers == "simple"
    assert score_metrics(per_tier[simple], y[simple], 15)["ece"] < \
        score_metrics(pooled[simple], y[simple], 15)["ece"]


def _features(encoder, rows: pd.DataFrame, params: ScorerParams) -> np.ndarray:
    return pair_features(encoder, rows["prompt"].tolist(), rows["response"].tolist(),
                         rows["tier"].tolist(), params.response_max_chars)


def test_train_scorer_end_to_end_and_the_router_loads_the_bundle(
        fold_rows: pd.DataFrame, routerbench: Workload, tiny_bert_dir: Path,
        tmp_path: Path) -> None:
    folds = _folds(fold_rows, 120)
    rows, _ = build_rows(folds, [routerbench])
    params = ScorerParams(encoder=str(tiny_bert_dir), max_length=32, response_max_chars=256,
                          bootstrap=10)
    encoder = TextEncoder(tiny_bert_dir, params.max_length)
    features = _features(encoder, rows, params)
    result = train_scorer(rows, features, params)
    metrics = json_safe(result.metrics)
    json.dumps(metrics, allow_nan=False)
    assert "threshold" not in metrics and "cascade" not in metrics  # calibrate fits it now
    assert result.calibration["method"] == "platt"
    assert metrics["test"]["after_calibration"]["rows"] == 30 * 3  # tier answers of test prompts
    assert set(metrics["test"]["by_tier"]) == set(TIERS)
    assert set(metrics["test"]["by_source"]) == {"routerbench"}
    assert set(metrics["test"]["by_eval_name"]) == set(rows.loc[rows["fold"] == "test",
                                                                "category"])
    for entry in metrics["test"]["by_tier"].values():
        for stage in ("before_calibration", "after_calibration"):
            assert {"auroc", "ece", "brier"} <= set(entry[stage])
            low, high = entry[stage]["brier_ci95"]
            assert low <= entry[stage]["brier"] <= high
    assert metrics["train_rows"] == (rows["fold"] == "train").sum()

    meta = write_bundle(tmp_path / "scorer", encoder, result, params)
    assert "threshold" not in meta and meta["encoder_kind"] == "transformer"
    scorer = load_scorer(str(tmp_path / "scorer"))
    assert isinstance(scorer, EmbeddingScorer)
    assert scorer.meta.version == meta["version"]
    assert scorer.meta.threshold is None  # the operating point's score_threshold applies
    test = rows[rows["fold"] == "test"].iloc[:6]
    expected = apply_calibration(result.head.predict(features[test.index.to_numpy()]),
                                 result.calibration, test["tier"].tolist())
    assert scorer.score(test["prompt"].tolist(), test["response"].tolist(),
                        test["tier"].tolist()) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kind", ["static", "none"])
def test_static_and_encoderless_bundles_round_trip(
        kind: str, fold_rows: pd.DataFrame, routerbench: Workload, tmp_path: Path) -> None:
    folds = _folds(fold_rows, 80)
    rows, _ = build_rows(folds, [routerbench])
    static = tiny_static_folder(tmp_path / "models" / "static")
    params = ScorerParams(encoder=kind, static_model=str(static), max_length=32,
                          response_max_chars=256, bootstrap=10)
    encoder = make_encoder(kind, params)
    assert isinstance(encoder, StaticTextEncoder if kind == "static" else NoEncoder)
    features = _features(encoder, rows, params)
    assert features.shape == (len(rows), 2 * encoder.dim + 22)
    result = train_scorer(rows, features, params)
    meta = write_bundle(tmp_path / "scorer", encoder, result, params)
    assert meta["encoder_kind"] == kind
    written = json.loads((tmp_path / "scorer" / SCORER_META).read_text())
    assert written["format"] == 2 and written["encoder_kind"] == kind
    # A static bundle carries its folder; an encoder-less one has no encoder/ at all.
    assert (tmp_path / "scorer" / ENCODER_DIR).exists() == (kind == "static")

    scorer = load_scorer(str(tmp_path / "scorer"))
    assert scorer.meta.encoder_kind == kind
    test = rows[rows["fold"] == "test"]
    expected = apply_calibration(result.head.predict(features[test.index.to_numpy()]),
                                 result.calibration, test["tier"].tolist())
    assert scorer.score(test["prompt"].tolist(), test["response"].tolist(),
                        test["tier"].tolist()) == pytest.approx(expected, abs=1e-6)


def test_make_encoder_refuses_a_missing_static_folder(tmp_path: Path) -> None:
    params = ScorerParams(encoder="static", static_model=str(tmp_path / "nowhere"))
    with pytest.raises(ScorerError, match=r"scorer encoder 'static'.*not a static embedding"):
        make_encoder("static", params)


def test_compare_encoders_reports_each_choice(fold_rows: pd.DataFrame, routerbench: Workload,
                                              tmp_path: Path) -> None:
    folds = _folds(fold_rows, 120)
    rows, _ = build_rows(folds, [routerbench])
    params = ScorerParams(max_length=32, response_max_chars=256, bootstrap=10)
    static = StaticTextEncoder(tiny_static_folder(tmp_path / "static"), 32)
    features = {"none": _features(NoEncoder(), rows, params),
                "static": _features(static, rows, params)}
    report = compare_encoders(rows, features, params, regularisations=[0.1],
                              ms_per_check={"none": 0.1, "static": 0.3})
    assert set(report["choices"]) == {"none", "static"}
    best = report["best_by_validation_auroc"]
    assert report["choices"][best]["validation_auroc_minus_best"] == 0.0
    for choice, entry in report["choices"].items():
        assert entry["regularisation"] in (params.regularisation, 0.1)
        assert entry["validation"]["auroc"] == max(entry["validation_auroc_by_c"].values())
        assert entry["validation_auroc_minus_best"] <= 0.0
        assert set(entry["test"]["by_tier"]) == set(TIERS)
        assert set(entry["validation"]["by_source"]) == {"routerbench"}
        assert set(entry["test"]["by_source_tier"]) == {f"routerbench/{t}" for t in TIERS}
        assert entry["test_auroc_minus_best_ci95"][0] <= entry["test_auroc_minus_best_ci95"][1]
        assert entry["features"] == features[choice].shape[1]
    assert report["choices"]["static"]["ms_per_check"] == 0.3


def test_register_logs_and_promotes_the_scorer(
        fold_rows: pd.DataFrame, tiny_scorer_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from training.register import (
        _log_scorer,
        register_scorer,
        rescore_scorer,
        scorer_test_rows,
        setup_mlflow,
    )

    monkeypatch.chdir(tmp_path)
    params = Params.model_validate({
        "scorer": {"sources": ["routerbench"]},
        "register": {"tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                     "artifact_root": str(tmp_path / "mlruns" / "artifacts")}})
    test = fold_rows.iloc[:20].reset_index(drop=True)
    rows = scorer_test_rows(params, test)
    assert len(rows) == 20 * 3
    good = rescore_scorer(f"path:{tiny_scorer_dir}", rows, params)
    Path("metrics").mkdir()
    Path("metrics/scorer.json").write_text(json.dumps({**good, "threshold": 0.42}))
    experiment = setup_mlflow(params.registry.tracking_uri, params.registry.artifact_root,
                              params.registry.experiment)
    meta = json.loads((tiny_scorer_dir / "scorer_model.json").read_text())
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = _log_scorer(tiny_scorer_dir)
    first = register_scorer(params, run.info.run_id, logged, meta, test)
    assert (first["promoted"], first["reason"]) == (True, "no champion yet")
    champion = load_scorer("models:/response-scorer@champion")
    assert champion.meta.threshold == pytest.approx(0.42)
    assert champion.score(rows["prompt"].tolist()[:3], rows["response"].tolist()[:3]) == \
        pytest.approx(load_scorer(str(tiny_scorer_dir)).score(
            rows["prompt"].tolist()[:3], rows["response"].tolist()[:3]), abs=1e-6)

    # A challenger claiming a much worse ECE on the same rows is refused.
    Path("metrics/scorer.json").write_text(json.dumps({**good, "ece": good["ece"] + 0.2}))
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = _log_scorer(tiny_scorer_dir)
    second = register_scorer(params, run.info.run_id, logged, meta, test)
    assert second["promoted"] is False
    assert second["reason"].startswith("worse than the champion on ece")
    assert second["champion_metrics_on_same_fold"]["ece"] == pytest.approx(good["ece"])
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("response-scorer", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("response-scorer", "challenger").version) == "2"
