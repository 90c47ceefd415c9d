from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from router.classifier import (
    MODEL_META,
    ClassifierError,
    FixedTierClassifier,
    InProcessClassifier,
    load_classifier,
)
from router.normalise import normalise
from router.tiers import TIERS

TEXTS = [normalise("How do I reset my PIN?"),
         normalise("Question: " * 300 + "Prove that there are infinitely many primes.")]


def test_fixed_classifier() -> None:
    classifier = load_classifier("fixed:medium")
    assert isinstance(classifier, FixedTierClassifier)
    assert classifier.predict(TEXTS) == [{"simple": 0.0, "medium": 1.0, "critical": 0.0}] * 2
    assert classifier.meta.version == "fixed:medium"
    with pytest.raises(ClassifierError, match="not a tier"):
        load_classifier("fixed:cheap")


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_qwen_dir"])
def test_in_process_classifier_scores_every_tier(fixture: str,
                                                 request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    classifier = load_classifier(str(path))
    assert isinstance(classifier, InProcessClassifier)
    scores = classifier.predict(TEXTS)
    assert len(scores) == 2
    for row in scores:
        assert set(row) == set(TIERS)
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-5)
    assert classifier.predict(TEXTS[:1])[0] == pytest.approx(scores[0], abs=1e-5)  # padding-free
    assert classifier.meta.version == path.name
    assert classifier.meta.thresholds is None


def test_model_metadata_sets_temperature_and_thresholds(tiny_bert_dir: Path,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, path)
    plain = load_classifier(str(path)).predict(TEXTS)
    (path / MODEL_META).write_text(json.dumps({
        "version": "v7", "temperature": 10.0,
        "thresholds": {"escalate": 0.5, "trust": 0.9}, "max_length": 64}))
    classifier = load_classifier(f"path:{path}")
    assert classifier.meta.version == "v7"
    assert classifier.meta.thresholds == {"escalate": 0.5, "trust": 0.9}
    hot = classifier.predict(TEXTS)
    # A high temperature flattens the distribution towards 1/3 each.
    for cold_row, hot_row in zip(plain, hot, strict=True):
        assert max(hot_row.values()) - min(hot_row.values()) < (
            max(cold_row.values()) - min(cold_row.values()))


def test_model_metadata_bias_shifts_logits(tiny_bert_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, path)
    plain = load_classifier(str(path)).predict(TEXTS)
    (path / MODEL_META).write_text(json.dumps({"version": "v8", "bias": [0.0, 0.0, 2.0]}))
    shifted = load_classifier(str(path)).predict(TEXTS)
    for before, after in zip(plain, shifted, strict=True):
        # softmax(z + b): critical's odds against each other tier grow by exactly e^2
        for tier in ("simple", "medium"):
            assert after["critical"] / after[tier] == pytest.approx(
                math.exp(2.0) * before["critical"] / before[tier], rel=1e-4)


@pytest.mark.parametrize(("meta", "words"), [
    ({"temperature": 0}, "temperature must be > 0"),
    ({"bias": [0.0, 1.0]}, "bias needs 3 finite numbers"),
    ({"bias": [0.0, "nan", 1.0]}, "bias needs 3 finite numbers"),
    ({"thresholds": {"trust": 0.9}}, "exactly 'escalate' and 'trust'"),
    ({"temperature": "warm"}, "unreadable"),
])
def test_bad_metadata_is_a_clear_error(tiny_bert_dir: Path, tmp_path: Path, meta: dict,
                                       words: str) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, path)
    (path / MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match=words):
        load_classifier(str(path))


def test_wrong_labels_and_missing_dirs(tiny_bert_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["id2label"] = {"0": "cheap", "1": "medium", "2": "critical"}
    config["label2id"] = {"cheap": 0, "medium": 1, "critical": 2}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ClassifierError, match="are not the tiers"):
        load_classifier(str(path))
    with pytest.raises(ClassifierError, match="nor a model directory"):
        load_classifier(str(tmp_path / "absent"))
    with pytest.raises(ClassifierError, match=r"no config\.json"):
        load_classifier(f"path:{tmp_path}")
