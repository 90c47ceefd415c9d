"""Where the stages read and write, relative to the repository root (dvc.yaml names the same).

One place for every file between stages, so a reader follows a data flow from here to dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

PIPELINE = Path("data/pipeline")
HARVEST_ROWS = PIPELINE / "harvest" / "rows.parquet"
HARVEST_QUARANTINE = PIPELINE / "harvest" / "quarantine.jsonl"
LABELLED = PIPELINE / "label" / "labelled.parquet"
SPLIT_DIR = PIPELINE / "split"
TRAIN = SPLIT_DIR / "train.parquet"
VALIDATION = SPLIT_DIR / "validation.parquet"
TEST = SPLIT_DIR / "test.parquet"
MODEL_DIR = Path("models/classifier")  # train: adapter/ and merged/
MERGED = MODEL_DIR / "merged"
STATIC = Path("models/static")  # distill: the model2vec folder
CALIBRATED = Path("models/calibrated")  # the deployable bundle
ABLATION = Path("models/ablation")  # calibrate: the other head variant, for evaluate's report
SCORER = Path("models/scorer")  # the response scorer bundle (router/scorer.py reads it)
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REGISTRATION = Path("registration.json")


def metrics_file(stage: str) -> Path:
    """``metrics/<stage>.json``."""
    return METRICS_DIR / f"{stage}.json"
