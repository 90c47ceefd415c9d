"""register: log the run to MLflow, register the bundle, promote only a challenger no worse.

MLflow store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` (the plain
file store is in maintenance mode). The run carries params.yaml, the metrics, the plots and the
model bundle (``models/calibrated``: the classifier, its calibration, neighbourhood table and
stored operating point, with data and code versions as tags), registered as ``tier-classifier``
with alias ``challenger``.

Promotion to ``champion``: the current champion -- its own bundle at its own stored operating
point -- is re-scored on the *challenger's* test fold with the same answer checks (the response
scorer's scores of each tier's answer, so both are judged on the same rows and answers), and the
challenger is promoted only if it is no worse on the heads' mean ECE and on the high-stakes
slices' reach-critical, and not worse on cost/quality, within the tolerances in params.yaml. A
champion this code cannot load (an older bundle format) is replaced, and the reason says so. The
decision and its reason are logged as model-version tags and in ``registration.json``, the
stage's only DVC output (never ``mlruns/`` itself: DVC deletes a stage's outputs on rerun).

The response scorer (``models/scorer/``, when the scorer stage wrote one) is logged in the same
run as the pyfunc model ``scorer`` and registered as ``response-scorer`` with alias
``challenger``; it becomes ``champion`` when none exists, or when on the test fold's tier-model
answers (the rows its own metrics were measured on) its AUROC is no lower and its ECE no higher
than the re-scored champion's, within ``register.scorer_tolerances``. Its outcome sits under
``"scorer"`` in ``registration.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from router.classifier import (
    MLFLOW_ARTIFACT,
    MODEL_META,
    ClassifierError,
    load_bundle,
    registered_model_dir,
)
from router.config import load_config
from router.scorer import MLFLOW_ARTIFACT as SCORER_ARTIFACT
from router.scorer import SCORER_META, load_scorer
from training.evaluate import evaluate_bundle, fold_answer_scores
from training.params import CalibrateParams, Params, ScorerTolerances, Tolerances, load_params
from training.paths import (
    CALIBRATED,
    METRICS_DIR,
    PLOTS_DIR,
    REGISTRATION,
    SCORER,
    TEST,
    metrics_file,
)

logger = logging.getLogger(__name__)



def compare(challenger: dict[str, Any], champion: dict[str, Any], tolerances: Tolerances,
            calibration: CalibrateParams) -> tuple[bool, str]:
    """Whether the challenger is no worse than the champion on the same test fold, and why.

    The heads' mean ECE and the high-stakes slices' lowest reach-critical must be no worse
    (within tolerance; a fold without high-stakes rows skips that check). Cost and quality are
    judged against the objective the point was fitted for: under ``min_cost`` the quality bar
    is the champion's quality *or* the quality target, whichever is lower (a champion that
    overshoots the target at a higher cost sets no higher bar), and cost must be no worse; under
    ``max_quality`` the roles swap.
    """
    cost_bar = champion["cost_ratio_vs_frontier"]
    quality_bar = champion["quality_ratio_vs_frontier"]
    if calibration.objective == "min_cost":
        quality_bar = min(quality_bar, calibration.quality_target)
    else:
        cost_bar = max(cost_bar, calibration.cost_budget)
    checks = [
        ("mean_head_ece", challenger["mean_head_ece"] <= champion["mean_head_ece"]
         + tolerances.ece, champion["mean_head_ece"]),
    ]
    if champion.get("min_high_stakes_reach_critical") is not None and challenger.get(
            "min_high_stakes_reach_critical") is not None:
        checks.append(("min_high_stakes_reach_critical",
                       challenger["min_high_stakes_reach_critical"]
                       >= champion["min_high_stakes_reach_critical"] - tolerances.reach_critical,
                       champion["min_high_stakes_reach_critical"]))
    checks += [
        ("cost_ratio_vs_frontier",
         challenger["cost_ratio_vs_frontier"] <= cost_bar + tolerances.cost_ratio, cost_bar),
        ("quality_ratio_vs_frontier",
         challenger["quality_ratio_vs_frontier"] >= quality_bar - tolerances.quality_ratio,
         quality_bar),
    ]
    verdicts = ", ".join(f"{name} {challenger[name]:.4f} vs {bar:.4f}" for name, _, bar in checks)
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        return False, f"worse than the champion on {', '.join(failed)} ({verdicts})"
    return True, f"no worse than the champion ({verdicts})"


def compare_scorer(challenger: dict[str, Any], champion: dict[str, Any],
                   tolerances: ScorerTolerances) -> tuple[bool, str]:
    """Whether the challenger scorer is no worse than the champion on the same rows, and why:
    AUROC no lower and ECE no higher, within ``tolerances``."""
    checks = [("auroc", challenger["auroc"] >= champion["auroc"] - tolerances.auroc),
              ("ece", challenger["ece"] <= champion["ece"] + tolerances.ece)]
    verdicts = ", ".join(f"{name} {challenger[name]:.4f} vs {champion[name]:.4f}"
                         for name, _ in checks)
    failed = [name for name, ok in checks if not ok]
    if failed:
        return False, f"worse than the champion on {', '.join(failed)} ({verdicts})"
    return True, f"no worse than the champion ({verdicts})"


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts as ``{"a.b.c": value}`` (MLflow param and metric names)."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


def _code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class TierClassifierModel:
    """MLflow pyfunc: DataFrame with a ``text`` column -> P(tier's answer acceptable) per tier
    and row."""

    def load_context(self, context: Any) -> None:
        self.classifier = load_bundle(Path(context.artifacts[MLFLOW_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None
                ) -> pd.DataFrame:
        return pd.DataFrame(self.classifier.predict(model_input["text"].tolist()))


def _pyfunc_class() -> type:
    import mlflow.pyfunc

    return type("TierClassifierPyfunc", (TierClassifierModel, mlflow.pyfunc.PythonModel), {})


class ResponseScorerModel:
    """MLflow pyfunc: DataFrame with ``prompt``, ``response`` (and optionally ``tier``, the tier
    that answered) -> ``score`` = P(correct)."""

    def load_context(self, context: Any) -> None:
        self.scorer = load_scorer(f"path:{context.artifacts[SCORER_ARTIFACT]}")

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None
                ) -> pd.DataFrame:
        tiers = model_input["tier"].tolist() if "tier" in model_input else None
        return pd.DataFrame({"score": self.scorer.score(model_input["prompt"].tolist(),
                                                        model_input["response"].tolist(),
                                                        tiers)})


def _scorer_pyfunc_class() -> type:
    import mlflow.pyfunc

    return type("ResponseScorerPyfunc", (ResponseScorerModel, mlflow.pyfunc.PythonModel), {})


def scorer_test_rows(params: Params, test: pd.DataFrame) -> pd.DataFrame:
    """The rows the scorer stage reported on: the test fold's tier-model answers."""
    from training.scorer import build_rows
    from workloads import load_workload

    rows, _ = build_rows({"test": test}, [load_workload(name) for name in params.scorer.sources],
                         params.scorer.extra_models)
    return rows[rows["tier"].notna()].reset_index(drop=True)


def rescore_scorer(uri: str, rows: pd.DataFrame, params: Params) -> dict[str, Any]:
    """A registered scorer's AUROC and ECE on ``rows`` (prompt, response, tier, correct)."""
    import numpy as np

    from training.scorer import score_metrics

    scorer = load_scorer(uri)
    scores = np.asarray(scorer.score(rows["prompt"].tolist(), rows["response"].tolist(),
                                     rows["tier"].tolist()))
    metrics = score_metrics(scores, rows["correct"].to_numpy(dtype=bool), params.scorer.ece_bins)
    return {"auroc": metrics["auroc"], "ece": metrics["ece"], "version": scorer.meta.version}


def _log_scorer(bundle: Path) -> dict[str, Any]:
    """Inside the active run: the scorer bundle as pyfunc ``scorer`` and its metrics."""
    import mlflow
    from mlflow.models import infer_signature

    metrics = json.loads(metrics_file("scorer").read_text())
    mlflow.log_metrics({f"scorer.{k}": float(v) for k, v in _leaves(metrics).items()
                        if _numeric(v) and not k.startswith("data.")})
    example_in = pd.DataFrame({"prompt": ["user: What is 2 + 2?"], "response": ["4"]})
    example_out = pd.DataFrame({"score": [0.9]})
    mlflow.pyfunc.log_model(name="scorer", python_model=_scorer_pyfunc_class()(),
                            artifacts={SCORER_ARTIFACT: str(bundle)},
                            signature=infer_signature(example_in, example_out))
    return metrics


def register_scorer(params: Params, run_id: str, metrics: dict[str, Any], meta: dict[str, Any],
                    test: pd.DataFrame) -> dict[str, Any]:
    """Register the run's ``scorer`` model as challenger; promote it if no worse."""
    import mlflow
    from mlflow import MlflowClient

    settings = params.registry
    name = settings.scorer_model_name
    client = MlflowClient()
    tags = {"model_version": meta.get("version", "?"), "threshold": str(meta.get("threshold")),
            "code_version": _code_version(), "data.test": _file_digest(TEST)}
    version = mlflow.register_model(f"runs:/{run_id}/scorer", name, tags=tags).version
    client.set_registered_model_alias(name, "challenger", version)
    challenger = {"auroc": metrics["auroc"], "ece": metrics["ece"]}
    champion_version = None
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # no champion alias yet
        champion_version = client.get_model_version_by_alias(name, "champion").version
    champion = None
    if champion_version is None:
        promote, reason = True, "no champion yet"
    elif None in challenger.values():
        promote, reason = False, "the challenger has no test AUROC/ECE (one class only)"
    else:
        champion = rescore_scorer(f"models:/{name}/{champion_version}",
                                  scorer_test_rows(params, test), params)
        if champion["auroc"] is None:
            promote, reason = True, "the champion has no AUROC on this fold"
        else:
            promote, reason = compare_scorer(challenger, champion, settings.scorer_tolerances)
    if promote:
        client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "promotion", "promoted" if promote else "refused")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    logger.info("register: %s v%s %s: %s", name, version,
                "promoted to champion" if promote else "stays challenger", reason)
    return {"model_name": name, "version": str(version), "bundle_version": meta.get("version"),
            "threshold": meta.get("threshold"), "promoted": promote, "reason": reason,
            "previous_champion": None if champion_version is None else str(champion_version),
            "challenger_metrics": challenger, "champion_metrics_on_same_fold": champion}


def setup_mlflow(tracking_uri: str, artifact_root: str, experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    root = Path(artifact_root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(experiment, artifact_location=root.as_uri())


def register(params: Params, bundle: Path, test: pd.DataFrame,
             scorer_bundle: Path | None = None) -> dict[str, Any]:
    """Log, register as challenger, compare with the champion, maybe promote.

    ``scorer_bundle``: the response scorer's bundle (its metrics in ``metrics/scorer.json``),
    logged in the same run and registered beside the classifier; None: classifier only.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    settings = params.registry
    experiment_id = setup_mlflow(settings.tracking_uri, settings.artifact_root,
                                 settings.experiment)
    client = MlflowClient()
    metrics = json.loads(metrics_file("classifier").read_text())
    gate = json.loads(metrics_file("gate").read_text())
    meta = json.loads((bundle / MODEL_META).read_text())
    tags = {"model_version": meta.get("version", "?"), "code_version": _code_version(),
            "data.test": _file_digest(TEST),
            "data.train": _file_digest(TEST.with_name("train.parquet")),
            "base_model": params.train.base_model}
    with mlflow.start_run(experiment_id=experiment_id, run_name=meta.get("version")) as run:
        mlflow.log_params({k: v if isinstance(v, str) else json.dumps(v) for k, v in
                           _leaves(params.model_dump(by_alias=True, mode="json")).items()})
        mlflow.log_metrics({k: float(v) for k, v in _leaves({**metrics, "gate": gate}).items()
                            if _numeric(v)})
        mlflow.set_tags(tags)
        for path in sorted(METRICS_DIR.glob("*.json")) + sorted(PLOTS_DIR.glob("*.png")):
            mlflow.log_artifact(str(path), artifact_path=path.parent.name)
        example_in = pd.DataFrame({"text": ["user: How do I reset my PIN?"]})
        example_out = pd.DataFrame([{"simple": 0.93, "medium": 0.95, "critical": 0.97}])
        # A signature, no input_example: an example would pickle the model (92 MB, not 3.5 KB).
        mlflow.pyfunc.log_model(name="model", python_model=_pyfunc_class()(),
                                artifacts={MLFLOW_ARTIFACT: str(bundle)},
                                signature=infer_signature(example_in, example_out))
        scorer_metrics = _log_scorer(scorer_bundle) if scorer_bundle is not None else None
        run_id = run.info.run_id
    version = mlflow.register_model(f"runs:/{run_id}/model", settings.model_name,
                                    tags=tags).version
    client.set_registered_model_alias(settings.model_name, "challenger", version)

    challenger = {k: metrics.get(k) for k in COMPARED}
    champion_version = None
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # no champion alias yet
        champion_version = client.get_model_version_by_alias(settings.model_name,
                                                             "champion").version
    if champion_version is None:
        promote, reason, champion = True, "no champion yet", None
    else:
        try:
            champion = rescore(settings.model_name, champion_version, test, params)
        except ClassifierError as exc:
            champion = None
            promote, reason = True, f"the champion cannot be re-scored by this code: {exc}"
        else:
            promote, reason = compare(challenger, champion, settings.tolerances,
                                      params.calibrate)
    if promote:
        client.set_registered_model_alias(settings.model_name, "champion", version)
    client.set_model_version_tag(settings.model_name, version, "promotion",
                                 "promoted" if promote else "refused")
    client.set_model_version_tag(settings.model_name, version, "promotion_reason", reason)
    logger.info("register: %s v%s %s: %s", settings.model_name, version,
                "promoted to champion" if promote else "stays challenger", reason)
    result = {"model_name": settings.model_name, "version": str(version), "run_id": run_id,
              "promoted": promote, "reason": reason,
              "previous_champion": None if champion_version is None else str(champion_version),
              "challenger_metrics": challenger, "champion_metrics_on_same_fold": champion,
              "tracking_uri": settings.tracking_uri}
    if scorer_bundle is not None and scorer_metrics is not None:
        scorer_meta = json.loads((scorer_bundle / SCORER_META).read_text())
        result["scorer"] = register_scorer(params, run_id, scorer_metrics, scorer_meta, test)
    return result


COMPARED = ("mean_head_ece", "min_high_stakes_reach_critical", "cost_ratio_vs_frontier",
            "quality_ratio_vs_frontier")


def rescore(model_name: str, version: str, test: pd.DataFrame, params: Params
            ) -> dict[str, Any]:
    """A registered version's metrics on ``test`` (the challenger's test fold), at its own
    stored operating point, with this run's answer checks."""
    config = load_config(params.calibrate.router_config)
    classifier = load_bundle(registered_model_dir(f"models:/{model_name}/{version}"))
    metrics, _, _ = evaluate_bundle(classifier, test, config, params.evaluate,
                                    fold_answer_scores(test, config))
    return {k: metrics.get(k) for k in COMPARED}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    result = register(params, CALIBRATED, pd.read_parquet(TEST),
                      SCORER if (SCORER / SCORER_META).exists() else None)
    REGISTRATION.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
