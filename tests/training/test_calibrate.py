"""calibrate: the static heads, the neighbourhood table and the per-tier combination, the
operating point fitted on a policy replay (hand-built tables), the answers checked, the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from router.classifier import Predictions, StaticClassifier, load_bundle, logit, sigmoid
from router.config import RouterConfig
from router.pricing import tier_prices
from router.tiers import TIERS
from tests.conftest import CONFIG_PATH
from training import calibrate as stage
from training.calibrate import (
    CalibrateError,
    answer_scores,
    check_table,
    curve_area,
    fit_combine,
    fit_heads,
    fit_point,
    price_weight_grid,
)
from training.params import CalibrateParams
from training.scoring import PolicyTable, targets_matrix


def test_price_weight_grid_is_zero_then_geometric_up_to_a_million() -> None:
    assert price_weight_grid(5) == pytest.approx([0.0, 1.0, 100.0, 1e4, 1e6])
    assert len(price_weight_grid(49)) == 49 and price_weight_grid(49)[-1] == pytest.approx(1e6)


# ------------------------------------------------------------------ heads and combination

def _head_rows(n: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Embeddings (n, 4) where dimension j carries tier j's success, and rows whose targets
    follow it; every third row records no medium outcome (RouteLLM's shape)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 4))
    targets = [{tier: int(rng.random() < sigmoid(2.0 * x[i, j])) for j, tier in enumerate(TIERS)}
               for i in range(n)]
    for i in range(0, n, 3):
        targets[i]["medium"] = None
    labels = [next((t for t in TIERS if row[t]), "simple") for row in targets]
    return x, pd.DataFrame({"targets": [json.dumps(t) for t in targets], "label": labels,
                            "label_source": "outcomes"})


def test_per_tier_heads_train_each_tier_on_the_rows_that_record_it() -> None:
    from sklearn.linear_model import LogisticRegression

    x, rows = _head_rows(600)
    heads = fit_heads(x, rows, "per_tier", 1.0, rule_weight=1.0, seed=0)
    assert (heads.kind, heads.coef.shape, heads.intercept.shape) == ("per_tier", (3, 4), (3,))
    # The medium head is the plain logistic fit on the 400 rows recording medium, and nothing
    # else: the 200 unrecorded rows (their medium cell null) leave no trace in it.
    recorded = np.arange(600) % 3 != 0
    y = np.array([json.loads(t)["medium"] for t in rows["targets"][recorded]], dtype=int)
    reference = LogisticRegression(C=1.0, max_iter=3000).fit(x[recorded], y)
    assert heads.coef[1] == pytest.approx(reference.coef_[0], abs=1e-3)
    assert heads.intercept[1] == pytest.approx(reference.intercept_[0], abs=1e-3)
    # Each head learned its own dimension (true slope 2 on dimension j, 0 elsewhere).
    assert [int(np.argmax(np.abs(heads.coef[j]))) for j in range(3)] == [0, 1, 2]
    assert heads.raw(x[:2]) == pytest.approx(x[:2] @ heads.coef.T + heads.intercept, abs=1e-4)


def test_softmax_heads_and_the_head_errors() -> None:
    from sklearn.linear_model import LogisticRegression

    x, rows = _head_rows(300)
    heads = fit_heads(x, rows, "softmax", 1.0, rule_weight=1.0, seed=0)
    reference = LogisticRegression(C=1.0, max_iter=3000).fit(
        x, [TIERS.index(t) for t in rows["label"]])
    softmax = np.exp(heads.raw(x)) / np.exp(heads.raw(x)).sum(axis=1, keepdims=True)
    assert heads.kind == "softmax"
    assert softmax == pytest.approx(reference.predict_proba(x), abs=1e-3)
    # Only two tiers ever the cheapest sufficient one (a fold with no medium label): the
    # binary fit's odds for those two, and medium never predicted.
    only_two = rows.assign(label=np.where(x[:, 2] > 0, "critical", "simple"))
    heads = fit_heads(x, only_two, "softmax", 1.0, rule_weight=1.0, seed=0)
    assert heads.intercept[1] == -30.0 and not heads.coef[1].any()
    binary = LogisticRegression(C=1.0, max_iter=3000).fit(x, only_two["label"] == "critical")
    p = np.exp(heads.raw(x)) / np.exp(heads.raw(x)).sum(axis=1, keepdims=True)
    assert p[:, 2] == pytest.approx(binary.predict_proba(x)[:, 1], abs=1e-3)
    assert p[:, 1].max() < 1e-9
    all_right = rows.assign(targets=[json.dumps({**json.loads(t), "medium": 1})
                                     for t in rows["targets"]])
    with pytest.raises(CalibrateError, match=r"medium head .* all acceptable"):
        fit_heads(x, all_right, "per_tier", 1.0, rule_weight=1.0, seed=0)
    # rule_weight 0: rule-labelled rows are left out of the fit altogether.
    ruled = rows.assign(label_source=["rule" if i % 2 else "outcomes" for i in range(300)])
    dropped = fit_heads(x, ruled, "per_tier", 1.0, rule_weight=0.0, seed=0)
    kept = fit_heads(x[::2], rows.iloc[::2], "per_tier", 1.0, rule_weight=1.0, seed=0)
    assert dropped.coef == pytest.approx(kept.coef, abs=1e-4)


def test_combination_recovers_known_weights_and_skips_thin_tiers() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    z = rng.normal(0.0, 1.5, (n, 3))
    prior = rng.uniform(0.05, 0.95, (n, 3))
    truth = sigmoid(np.array([2.0, 0.5, 1.0]) * z + np.array([0.5, 1.0, 0.0]) * logit(prior)
                    + np.array([-1.0, 0.3, 0.0]))
    targets = (rng.random((n, 3)) < truth).astype(float)
    targets[10:, 2] = np.nan  # critical: 10 recorded rows, too few to calibrate on
    combine = fit_combine(z, prior, targets)
    assert combine.head[:2] == pytest.approx((2.0, 0.5), abs=0.1)
    assert combine.prior[:2] == pytest.approx((0.5, 1.0), abs=0.1)
    assert combine.bias[:2] == pytest.approx((-1.0, 0.3), abs=0.1)
    assert (combine.head[2], combine.prior[2], combine.bias[2]) == (1.0, 0.0, 0.0)
    head_only = fit_combine(z, None, targets)
    assert head_only.prior == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------ the operating point

# Three kinds of request (P(acceptable) the classifier gives each tier; the recorded targets):
# easy (any tier right), middling (medium and critical right), hard (only critical right).
KINDS = {"easy": ([0.9, 0.9, 0.95], [1, 1, 1]), "middling": ([0.3, 0.8, 0.9], [0, 1, 1]),
         "hard": ([0.2, 0.3, 0.9], [0, 0, 1])}
COUNTS = {"easy": 10, "middling": 5, "hard": 5}
CHARGED = [1.0, 2.0, 10.0]  # what a call to each tier costs in the replay (frontier-only: 10)


def _hand_table() -> tuple[PolicyTable, Predictions]:
    p, correct = [], []
    for kind, count in COUNTS.items():
        p += [KINDS[kind][0]] * count
        correct += [KINDS[kind][1]] * count
    n = len(p)
    table = PolicyTable(
        correct=np.array(correct, dtype=float), cost=np.tile(CHARGED, (n, 1)),
        executes=np.tile(np.arange(3), (n, 1)), prompt_tokens=np.full(n, 1000.0),
        output_tokens=np.full((n, 3), 100.0), forced=np.full(n, -1),
        scores=np.full((n, 3), np.nan), weights=np.ones(n),
        sources=np.array(["routerbench"] * n, dtype=object))
    predictions = Predictions(np.array(p), np.ones((n, 3), dtype=bool), np.full((n, 3), 100.0))
    return table, predictions


def _lambda_bounds(config: RouterConfig) -> dict[str, float]:
    """Where the rule's choices change, from the config's mean prices for 1,000 prompt and 100
    output tokens (p_s - lambda price_s = p_e - lambda price_e solved for lambda)."""
    prices = tier_prices(config)
    price = {t: 1000 * prices[t][0] + 100 * prices[t][1] for t in TIERS}
    return {
        "easy_leaves_critical": (0.95 - 0.9) / (price["critical"] - price["simple"]),
        "middling_leaves_critical": (0.9 - 0.8) / (price["critical"] - price["medium"]),
        "hard_leaves_critical": (0.9 - 0.3) / (price["critical"] - price["medium"]),
        "hard_goes_simple": (0.3 - 0.2) / (price["medium"] - price["simple"]),
        "middling_goes_simple": (0.8 - 0.3) / (price["medium"] - price["simple"]),
    }


def _params(**changes) -> CalibrateParams:
    return CalibrateParams(**{"price_weights": 13, "trust_grid": [0.8], "escalate_grid": [0.0],
                              "escalation_grid": [0.0], "score_grid": [0.0], **changes})


@pytest.mark.parametrize(("changes", "cost", "quality", "interval"), [
    # Every row right only with easy -> simple, middling -> medium, hard -> critical:
    # cost (10 x 1 + 5 x 2 + 5 x 10) / 20 = 3.5 of the frontier's 10.
    ({"quality_target": 1.0}, 0.35, 1.0,
     ("middling_leaves_critical", "hard_leaves_critical")),
    # 75% suffices: hard rows may go to simple (wrong either way below critical): 1.25 / 10.
    ({"quality_target": 0.75}, 0.125, 0.75, ("hard_goes_simple", "middling_goes_simple")),
    # max_quality: the best quality within the budget, then the cheaper.
    ({"objective": "max_quality", "cost_budget": 0.36}, 0.35, 1.0,
     ("middling_leaves_critical", "hard_leaves_critical")),
    ({"objective": "max_quality", "cost_budget": 0.3}, 0.125, 0.75,
     ("hard_goes_simple", "middling_goes_simple")),
])
def test_fit_point_picks_the_cheapest_feasible_point(
        router_config: RouterConfig, changes: dict, cost: float, quality: float,
        interval: tuple[str, str]) -> None:
    table, predictions = _hand_table()
    bounds = _lambda_bounds(router_config)
    fit, index = fit_point(table, [(0.0, predictions)], router_config, _params(**changes))
    assert index == 0 and fit.feasible
    assert fit.validation["cost_ratio_vs_frontier"] == pytest.approx(cost)
    assert fit.validation["quality_ratio_vs_frontier"] == pytest.approx(quality)
    assert fit.validation["escalation_rate"] == 0.0
    low, high = (bounds[name] for name in interval)
    assert low < fit.point.price_weight < high
    assert (fit.point.trust, fit.point.escalate, fit.point.score_threshold) == (0.8, 0.0, 0.0)
    assert fit.point.source == "fit"
    # The curve: the 13 grid weights, then 25 refined ones around the chosen weight.
    assert len(fit.curve) == 13 + 25
    assert [c["price_weight"] for c in fit.curve[:13]] == pytest.approx(
        list(price_weight_grid(13)))
    assert 0.0 < fit.area <= 1.0


def test_an_unreachable_target_keeps_the_closest_point(router_config: RouterConfig) -> None:
    table, predictions = _hand_table()
    fit, _ = fit_point(table, [(0.0, predictions)], router_config,
                       _params(quality_target=1.5))
    assert not fit.feasible
    # The best quality (1.0), and the cheapest way to it on the grid.
    assert fit.validation["quality_ratio_vs_frontier"] == pytest.approx(1.0)
    assert fit.validation["cost_ratio_vs_frontier"] == pytest.approx(0.35)
    assert len(fit.curve) == 13  # nothing refined around an infeasible point


def test_the_escalation_limit_rules_points_out(router_config: RouterConfig) -> None:
    """trust 0.95, escalate 0.85: a middling row routed to medium (0.8) or a hard row routed
    below critical escalates, a quarter of the rows each. Within 5% escalations only the
    frontier-only points are left; within 30% the middling rows may escalate to critical."""
    table, predictions = _hand_table()
    knobs = {"quality_target": 1.0, "trust_grid": [0.95], "escalate_grid": [0.85]}
    strict, _ = fit_point(table, [(0.0, predictions)], router_config,
                          _params(max_escalation=0.05, **knobs))
    assert strict.feasible and strict.validation["cost_ratio_vs_frontier"] == pytest.approx(1.0)
    assert strict.validation["escalation_rate"] == 0.0
    loose, _ = fit_point(table, [(0.0, predictions)], router_config,
                         _params(max_escalation=0.3, **knobs))
    assert loose.feasible and (loose.point.trust, loose.point.escalate) == (0.95, 0.85)
    # easy -> simple; middling and hard -> critical: (10 x 1 + 10 x 10) / 20 = 5.5.
    assert loose.validation["cost_ratio_vs_frontier"] == pytest.approx(0.55)
    assert loose.validation["quality_ratio_vs_frontier"] == pytest.approx(1.0)
    assert loose.validation["escalation_rate"] <= 0.3


def test_curve_area_is_the_mean_quality_over_the_cost_range() -> None:
    table, _ = _hand_table()  # cheapest single tier: 1 / 10 of the frontier's cost
    curve = [{"cost_ratio": 0.2, "quality_ratio": 0.8}, {"cost_ratio": 0.5, "quality_ratio": 0.9},
             {"cost_ratio": float("nan"), "quality_ratio": 0.99}]
    # 0.8 flat on [0.1, 0.2], then linear to 0.9 at 0.5 and to (1, 1):
    # (0.1 x 0.8 + 0.3 x 0.85 + 0.5 x 0.95) / 0.9 = 0.81 / 0.9.
    assert curve_area(curve, table) == pytest.approx(0.9, abs=2e-3)


# ------------------------------------------------------------------ answers and checks

def test_answer_scores_score_each_tiers_own_answer(tiny_scorer_dir: Path,
                                                   router_config: RouterConfig,
                                                   fold_rows: pd.DataFrame, mmlu) -> None:
    from router.scorer import load_scorer
    from workloads.answers import record_answer

    record = mmlu.records[0]
    rows = pd.concat([fold_rows.iloc[:2], pd.DataFrame([
        {"row_id": record.id, "source": "mmlu", "text": "user: an mmlu question"},
        {"row_id": "log:1", "source": "log", "text": "user: logged"}])], ignore_index=True)
    scores = answer_scores(rows, router_config, tiny_scorer_dir)
    assert scores.shape == (4, 3)
    assert np.isfinite(scores[:2]).all()  # RouterBench: three models of their own
    # MMLU: medium aliases GPT-4, whose answer the critical column already scores.
    assert np.isfinite(scores[2, [0, 2]]).all() and np.isnan(scores[2, 1])
    assert np.isnan(scores[3]).all()  # a logged row: no answer text known
    # The simulator's answer (here MMLU's synthetic letter) to the row's classifier text.
    served = router_config.deployments("critical")[0].served_model
    answer, kind = record_answer(record, mmlu.own_outcome(record, "critical"), served)
    assert kind == "synthetic"
    expected = load_scorer(f"path:{tiny_scorer_dir}").score(["user: an mmlu question"],
                                                            [answer], ["critical"])
    assert scores[2, 2] == pytest.approx(float(expected[0]), abs=1e-6)
    assert answer_scores(rows, router_config, None) is None
    assert answer_scores(rows, router_config, tiny_scorer_dir / "absent") is None


def test_check_table_holds_statistics_at_each_threshold(fold_rows: pd.DataFrame) -> None:
    from router.neighbourhood import fit_table

    rng = np.random.default_rng(0)
    embeddings = rng.normal(0, 1, (len(fold_rows), 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    table = fit_table(embeddings, targets_matrix(fold_rows), np.full((len(fold_rows), 3), 5.0),
                      3, shrinkage=5.0, min_recorded=10, seed=0)
    # No scorer, or only threshold 0 (never fails: no check): the table as it was.
    assert check_table(table, embeddings, fold_rows, None, [0.3, 0.6], ["routerbench"]) is table
    scores = rng.uniform(0, 1, (len(fold_rows), 3))
    assert check_table(table, embeddings, fold_rows, scores, [0.0], ["routerbench"]) is table
    checked = check_table(table, embeddings, fold_rows, scores, [0.0, 0.3, 0.6],
                          ["routerbench"])
    assert checked.has_checks and list(checked.check_thresholds) == [0.3, 0.6]
    assert checked.tpr.shape == checked.fpr.shape == (2, 3, 3)
    # Every recorded answer of the 400 is scored: right + wrong rows are the recorded cells.
    assert (checked.right_rows + checked.wrong_rows).sum() == np.isfinite(
        targets_matrix(fold_rows)).sum()
    # A higher threshold passes fewer answers: lower true- and false-positive rates; uniform
    # random scores pass about 1 - t of either kind.
    assert (checked.global_tpr[1] <= checked.global_tpr[0]).all()
    assert (checked.global_fpr[1] <= checked.global_fpr[0]).all()
    assert checked.global_tpr[0] == pytest.approx([0.7] * 3, abs=0.1)
    assert checked.global_fpr[1] == pytest.approx([0.4] * 3, abs=0.15)
    # Only rows of the scorer's sources count: none here, nothing is checkable.
    none = check_table(table, embeddings, fold_rows, scores, [0.3], ["gsm8k"])
    assert none.right_rows.sum() == none.wrong_rows.sum() == 0


# ------------------------------------------------------------------ the stage

TINY = {"heads": ["per_tier", "softmax"], "head_c": [1.0], "clusters": [2, 4],
        "trust_grid": [0.8], "escalate_grid": [0.0, 0.2], "escalation_grid": [0.0, 0.05],
        "score_grid": [0.0, 0.5],
        "price_weights": 5, "reference_rows": 60, "router_config": str(CONFIG_PATH)}


def test_main_writes_the_served_bundle_the_ablation_and_metrics(
        tiny_static_dir: Path, tiny_scorer_dir: Path, fold_rows: pd.DataFrame,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"calibrate": TINY,
                                                   "train": {"max_length": 32}}))
    split = Path("data/pipeline/split")
    split.mkdir(parents=True)
    rows = fold_rows.assign(fold=["validation" if i % 3 == 0 else "train"
                                  for i in range(len(fold_rows))])
    for fold in ("train", "validation"):
        rows[rows["fold"] == fold].reset_index(drop=True).to_parquet(split / f"{fold}.parquet")
    shutil.copytree(tiny_static_dir / "static", "models/static")
    Path("models/classifier/merged").mkdir(parents=True)
    Path("models/classifier/merged/router_model.json").write_text(json.dumps(
        {"format": 2, "version": "abc123", "backend": "transformer", "head": "per_tier",
         "max_length": 32}))
    shutil.copytree(tiny_scorer_dir, "models/scorer")

    stage.main()

    report = json.loads(Path("metrics/calibrate.json").read_text())
    assert report["backend"] == "static" and report["fitted_with_scorer"] == "tiny-scorer"
    assert set(report["clusters"]["validation_log_loss"]) == {"2", "4"}
    assert report["clusters"]["chosen"] in (2, 4)
    assert set(report["variants"]) == {"per_tier", "softmax"}
    served, other = report["served"], ({"per_tier", "softmax"} - {report["served"]}).pop()
    # The serving rule: the objective (min_cost: the cost ratio at the stored point) first,
    # within 2% of the best feasible variant's; then the larger mean workload curve area.
    v = report["variants"]
    cost = {h: v[h]["validation"]["cost_ratio_vs_frontier"] for h in v}
    if v[served]["feasible"] == v[other]["feasible"]:
        assert cost[served] <= cost[other] * 1.02 + 1e-12
        if cost[other] <= cost[served] * 1.02:  # both within the slack: the curves decide
            assert v[served]["validation_curve_area"] >= v[other]["validation_curve_area"]
    else:
        assert v[served]["feasible"]
    for variant in report["variants"].values():
        point = variant["operating_point"]
        assert point["trust"] == 0.8 and point["escalate"] in (0.0, 0.2)
        assert point["score_threshold"] in (0.0, 0.5)
        assert point["escalation_weight"] in (0.0, 0.05)
        assert variant["validation"]["rows"] == int((rows["fold"] == "validation").sum())

    bundle = load_bundle(Path("models/calibrated"))
    assert isinstance(bundle, StaticClassifier)
    meta = bundle.meta
    assert (meta.backend, meta.head, meta.max_length) == ("static", served, 32)
    assert meta.version.startswith("abc123-sta") and meta.version == report["version"]
    assert meta.operating_point is not None
    assert meta.operating_point.as_dict() == report["operating_point"]
    assert meta.operating_point.source == f"model:{meta.version}"
    assert meta.reference is not None and meta.reference["rows"] == 60
    stored = json.loads(Path("models/calibrated/router_model.json").read_text())
    assert stored["calibration"]["objective"] == "min_cost"
    assert stored["calibration"]["fitted_with_scorer"] == "tiny-scorer"
    assert len(bundle.neighbourhood) == report["clusters"]["chosen"]
    found = bundle.predict_full(list(fold_rows["text"].iloc[:5]))
    assert found.scores.shape == (5, 3) and ((found.scores > 0) & (found.scores < 1)).all()
    assert found.neighbourhood is not None and found.allowed[:, 2].all()

    ablation = load_bundle(Path("models/ablation"))
    assert ablation.meta.head == other and ablation.meta.reference is None
    assert ablation.meta.version != meta.version


def test_main_refuses_too_few_outcome_rows(fold_rows: pd.DataFrame, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"calibrate": TINY}))
    split = Path("data/pipeline/split")
    split.mkdir(parents=True)
    fold_rows.to_parquet(split / "train.parquet")
    # 60 validation rows, 20 of them labelled by the rule: 40 outcome rows < 50.
    fold_rows.iloc[:60].assign(label_source=["rule"] * 20 + ["outcomes"] * 40).to_parquet(
        split / "validation.parquet")
    with pytest.raises(SystemExit) as exc:
        stage.main()
    assert exc.value.code == 1 and not Path("models/calibrated").exists()
