from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from router.classifier import (
    MODEL_META,
    ClassifierError,
    Combine,
    FixedTierClassifier,
    InProcessClassifier,
    StaticClassifier,
    head_logits,
    load_classifier,
    logit,
    sigmoid,
)
from router.neighbourhood import NEIGHBOURHOOD_FILE, NeighbourhoodTable
from router.normalise import normalise

TEXTS = [normalise("How do I reset my PIN?"),
         normalise("Question: " * 300 + "Prove that there are infinitely many primes.")]


def test_fixed_classifier_allows_only_its_tier() -> None:
    classifier = load_classifier("fixed:medium")
    assert isinstance(classifier, FixedTierClassifier)
    assert classifier.predict(TEXTS) == [{"simple": 0.0, "medium": 1.0, "critical": 0.0}] * 2
    found = classifier.predict_full(TEXTS)
    assert found.allowed.tolist() == [[False, True, False]] * 2
    assert classifier.meta.version == "fixed:medium"
    with pytest.raises(ClassifierError, match="not a tier"):
        load_classifier("fixed:cheap")


def test_softmax_head_logits_are_cumulative_success() -> None:
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2]: P(simple suffices) 1/4, P(medium) 1/2, critical 1
    z = head_logits(np.array([[0.0, 0.0, np.log(2.0)]]), "softmax")
    assert sigmoid(z)[0].tolist() == pytest.approx([0.25, 0.5, 1.0], abs=1e-5)
    assert head_logits(np.array([[1.0, -2.0, 3.0]]), "per_tier").tolist() == [[1.0, -2.0, 3.0]]


def test_combine_is_a_logistic_map_of_head_and_prior() -> None:
    combine = Combine(head=(2.0, 1.0, 0.0), prior=(0.0, 1.0, 1.0), bias=(0.5, 0.0, -1.0))
    z = np.array([[0.3, -0.2, 5.0]])
    prior = np.array([[0.5, 0.8, 0.9]])
    expected = [sigmoid(2.0 * 0.3 + 0.5), sigmoid(-0.2 + logit(0.8)),
                sigmoid(logit(0.9) - 1.0)]
    assert combine.apply(z, prior)[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_static_bundle_scores_with_its_neighbourhood(tiny_static_dir: Path) -> None:
    classifier = load_classifier(f"path:{tiny_static_dir}")
    assert isinstance(classifier, StaticClassifier)
    assert classifier.meta.operating_point is not None
    assert classifier.meta.operating_point.source == "model:tiny-static"
    found = classifier.predict_full(TEXTS)
    assert found.scores.shape == (2, 3) and found.embeddings.shape == (2, 16)
    assert np.linalg.norm(found.embeddings, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    # recompute by hand: mean of the last 64 token vectors, heads, the table's prior
    table = NeighbourhoodTable.load(tiny_static_dir / NEIGHBOURHOOD_FILE)
    with np.load(tiny_static_dir / "heads.npz") as heads:
        z = found.embeddings @ heads["coef"].T + heads["intercept"]
    cluster = np.argmax(found.embeddings @ table.centroids.T, axis=1)
    recorded = table.recorded[cluster]
    prior = (table.right[cluster] * recorded + 20.0 * table.global_right) / (recorded + 20.0)
    assert found.scores == pytest.approx(sigmoid(z + 0.5 * logit(prior)), rel=1e-5)
    assert found.allowed.tolist() == (recorded >= 10).tolist()
    assert found.output_tokens.tolist() == table.output_tokens[cluster].tolist()
    hood = found.explanation(0)
    assert hood["cluster"] == int(cluster[0])
    assert hood["tiers"]["simple"]["recorded"] == int(recorded[0, 0])
    # batching never changes a row's answer
    assert classifier.predict(TEXTS[:1])[0] == pytest.approx(classifier.predict(TEXTS)[0])


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_qwen_dir"])
def test_transformer_backend_gives_per_tier_probabilities(fixture: str,
                                                          request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    classifier = load_classifier(str(path))
    assert isinstance(classifier, InProcessClassifier)
    found = classifier.predict_full(TEXTS)
    assert found.scores.shape == (2, 3)
    assert ((found.scores > 0) & (found.scores < 1)).all()
    # untrained bundle: no table, the head logits as they are, every tier allowed
    raw = classifier.logits(TEXTS).numpy()
    assert found.scores == pytest.approx(sigmoid(raw), abs=1e-5)
    assert found.allowed.all() and found.neighbourhood is None
    assert found.embeddings.shape == (2, classifier.embedding_dim)
    assert classifier.predict(TEXTS[:1])[0] == pytest.approx(
        found.tier_scores(0), abs=1e-5)  # padding-free


@pytest.mark.parametrize(("meta", "words"), [
    ({"format": 1}, "format 1"),
    ({"backend": "onnx"}, "backend 'onnx'"),
    ({"head": "ordinal"}, "head 'ordinal'"),
    ({"combine": {"head": [1.0, 2.0]}}, "3 finite numbers"),
    ({"operating_point": {"trust": 0.9}}, "lacks"),
    ({"operating_point": {"price_weight": 1.0, "trust": 0.5, "escalate": 0.9,
                          "score_threshold": 0.5}}, "escalate <= trust"),
    ({"output_tokens": [1, 2]}, "output_tokens"),
])
def test_bad_metadata_is_a_clear_error(tiny_bert_dir: Path, tmp_path: Path, meta: dict,
                                       words: str) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, path)
    (path / MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match=words):
        load_classifier(str(path))


def test_a_static_bundle_with_heads_of_the_wrong_width_is_refused(tiny_static_dir: Path,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    shutil.copytree(tiny_static_dir, path)
    np.savez(path / "heads.npz", coef=np.zeros((3, 8)), intercept=np.zeros(3))
    with pytest.raises(ClassifierError, match=r"coef must be \(3, 16\)"):
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

