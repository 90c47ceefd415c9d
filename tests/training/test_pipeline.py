"""A tiny-settings `dvc repro` of the whole lifecycle, in a throwaway git + DVC repository:
harvest -> label -> split -> train -> distill -> scorer -> calibrate -> evaluate -> register.

Tiny: ~700 seed rows, the tiny random BERT classifier (one epoch, then distilled to 16-d static
vectors), few clusters and a short operating-point grid. Then: a second `dvc repro` runs no
stage; `dvc exp run -S train.lora_r=4` makes a second MLflow run; the comparison notebook runs
headless on the two runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.classifier import StaticClassifier, load_bundle
from tests.conftest import REPO

COPIED = ["router", "training", "workloads", "simulator", "configs", "data", "notebooks",
          "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def tiny_params(tiny_model: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["harvest"].update(bootstrap=["routerbench", "mmlu", "banking77"],
                             max_rows_per_source={"routerbench": 300, "mmlu": 300,
                                                  "banking77": 100})
    params["train"].update(base_model=str(tiny_model), max_train_rows=200, epochs=1,
                           max_length=32, eval_steps=5, batch_size=16)
    params["distill"].update(pca_dims=16)  # the tiny BERT is 32 wide
    params["calibrate"].update(clusters=[2, 4], head_c=[1.0], trust_grid=[0.8],
                               escalate_grid=[0.0, 0.3], escalation_grid=[0.0],
                               score_grid=[0.0, 0.5], price_weights=5, reference_rows=100)
    params["evaluate"].update(bootstrap=20)
    # The response scorer (no encoder: answer features only), RouterBench answers only (no
    # GSM8K harvested).
    params["scorer"].update(encoder="none", sources=["routerbench"], bootstrap=20)
    return params


@pytest.mark.timeout(900)  # ~140 s alone; a shared CPU can double it
def test_tiny_dvc_repro_end_to_end(tmp_path: Path, tiny_bert_dir: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name,
                            ignore=shutil.ignore_patterns("__pycache__", "pipeline"))
        else:
            shutil.copy2(source, repo / name)
    params = tiny_params(tiny_bert_dir)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    dvc = str(Path(sys.executable).parent / "dvc")
    _run(["git", "init", "-q"], repo, env)
    _run([dvc, "init", "-q"], repo, env)
    _run([dvc, "config", "core.analytics", "false"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "tiny"], repo, env)

    _run([dvc, "repro"], repo, env)
    registration = json.loads((repo / "registration.json").read_text())
    assert registration["promoted"] is True
    assert registration["reason"] == "no champion yet"
    metrics = {name: json.loads((repo / "metrics" / f"{name}.json").read_text())
               for name in ("harvest", "label", "split", "train", "distill", "scorer",
                            "calibrate", "classifier", "gate")}
    assert metrics["harvest"]["rows_by_source"].keys() == {"routerbench", "mmlu", "banking77"}
    assert set(metrics["label"]["targets"]) == {"simple", "medium", "critical"}
    assert metrics["train"]["head"] == "per_tier"
    assert metrics["distill"]["dims"] == 16
    for key in ("auroc", "ece", "auroc_before_calibration", "ece_before_calibration"):
        assert key in metrics["scorer"], key
    calibrate = metrics["calibrate"]
    assert calibrate["backend"] == "static" and set(calibrate["variants"]) == {
        "per_tier", "softmax"}
    classifier = metrics["classifier"]
    for key in ("heads", "mean_head_ece", "pooled", "cost_ratio_vs_frontier",
                "quality_ratio_vs_frontier", "escalation_rate", "slices",
                "min_high_stakes_reach_critical", "ablation"):
        assert key in classifier, key
    assert classifier["heads"]["simple"]["rows"] > 0 and classifier["mean_head_ece"] >= 0
    # RouteLLM's MMLU records no medium model: the medium head is judged on RouterBench only.
    assert classifier["heads"]["medium"]["rows"] < classifier["heads"]["critical"]["rows"]
    gate = metrics["gate"]
    assert gate["operating_point"] == calibrate["operating_point"]
    assert set(gate["by_source"]) == {"routerbench", "mmlu", "banking77"}
    assert 0 < gate["policy"]["cost_ratio_vs_frontier"] <= 1.0
    assert (repo / "plots" / "reliability.png").stat().st_size > 0
    # The served bundle: static, with its fitted operating point and the drift reference.
    bundle = load_bundle(repo / "models" / "calibrated")
    assert isinstance(bundle, StaticClassifier) and bundle.meta.head == calibrate["served"]
    assert bundle.meta.version == calibrate["version"] == classifier["model_version"]
    assert bundle.meta.operating_point is not None
    assert bundle.meta.operating_point.as_dict() == calibrate["operating_point"]
    assert bundle.meta.reference is not None and bundle.meta.reference["rows"] > 0
    assert len(bundle.predict(["user: What is 2 + 2?"])) == 1
    assert load_bundle(repo / "models" / "ablation").meta.head != bundle.meta.head
    assert registration["scorer"]["promoted"] is True
    assert (repo / "models" / "scorer" / "scorer_model.json").exists()
    import mlflow

    tracking = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    champion = mlflow.MlflowClient().get_model_version_by_alias("tier-classifier", "champion")
    assert str(champion.version) == registration["version"]
    from router.classifier import load_classifier
    from router.scorer import load_scorer

    assert load_classifier("models:/tier-classifier@champion").meta.version == \
        bundle.meta.version
    scorer_champion = load_scorer("models:/response-scorer@champion")
    assert scorer_champion.meta.version == metrics["scorer"]["version"]

    again = _run([dvc, "repro"], repo, env)
    assert "Data and pipelines are up to date" in again, again

    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "first run"], repo, env)
    _run([dvc, "exp", "run", "-S", "train.lora_r=4"], repo, env)

    import nbformat
    from nbclient import NotebookClient

    runs = mlflow.search_runs(experiment_names=["tier-classifier"])
    assert len(runs) == 2
    assert sorted(runs["params.train.lora_r"]) == sorted(["4", str(params["train"]["lora_r"])])

    notebook = nbformat.read(repo / "notebooks" / "compare_calibration_runs.ipynb", as_version=4)
    os.environ["TIER_ROUTER_TRACKING_URI"] = tracking
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(repo)}}).execute()
    finally:
        del os.environ["TIER_ROUTER_TRACKING_URI"]
    printed = "".join(output.get("text", "") for cell in notebook.cells
                      for output in cell.get("outputs", []))
    assert "compared 2 run(s)" in printed
