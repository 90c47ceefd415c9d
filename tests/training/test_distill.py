"""distill stage: the tiny BERT distilled with model2vec into a static folder the router loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from router.classifier import ClassifierError, StaticEncoder
from training import distill as stage
from training.distill import DistillError, distill
from training.params import DistillParams


def test_distilled_folder_loads_as_a_static_encoder(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "static"
    out.mkdir()
    (out / "stale.txt").write_text("a previous run's file")
    metrics = distill(tiny_bert_dir, out, DistillParams(pca_dims=16))
    assert not (out / "stale.txt").exists()  # the folder is replaced, not merged into
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= {
        p.name for p in out.iterdir()}
    encoder = StaticEncoder(out, max_length=32)
    assert encoder.dim == 16 == metrics["dims"]
    # One vector per token of the saved tokenizer (model2vec keeps most of MiniLM's 30,522).
    assert encoder.vectors.shape[0] == metrics["vocabulary"] == \
        encoder.tokenizer.get_vocab_size()
    assert 20_000 < metrics["vocabulary"] <= 30_522
    assert metrics["source"] == str(tiny_bert_dir) and metrics["seconds"] >= 0
    texts = ["user: hello there", "user: prove the theorem", "user: hello there"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_main_distils_the_trained_backbone_or_the_base(tiny_bert_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = {"train": {"base_model": str(tiny_bert_dir)}, "distill": {"pca_dims": 8}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:  # source "trained": no models/classifier/merged yet
        stage.main()
    assert exc.value.code == 1 and not Path("models/static").exists()

    shutil.copytree(tiny_bert_dir, "models/classifier/merged")
    stage.main()
    metrics = json.loads(Path("metrics/distill.json").read_text())
    assert set(metrics) == {"source", "vocabulary", "dims", "pca_dims", "sif_coefficient",
                            "seconds"}
    assert (metrics["source"], metrics["dims"]) == ("models/classifier/merged", 8)
    assert StaticEncoder(Path("models/static")).dim == 8

    shutil.rmtree("models/classifier")
    Path("params.yaml").write_text(yaml.safe_dump(
        {**params, "distill": {"pca_dims": 8, "source": "base"}}))
    stage.main()
    assert json.loads(Path("metrics/distill.json").read_text())["source"] == str(tiny_bert_dir)


def test_not_a_model_is_a_domain_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="cannot load the backbone"):
        distill(tmp_path / "empty", tmp_path / "out", DistillParams())
    assert not (tmp_path / "out").exists()
    with pytest.raises(ClassifierError, match="not a static embedding folder"):
        StaticEncoder(tmp_path / "empty")
