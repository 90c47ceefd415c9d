"""train stage: LoRA fine-tuning on tiny random BERT and Qwen2 models, merged export, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from router.classifier import InProcessClassifier, load_classifier
from router.tiers import TIERS
from training import train
from training.params import TrainParams
from training.train import (
    TrainError,
    balanced_class_weights,
    lora_targets,
    sample_train_rows,
    train_classifier,
)

METRIC_KEYS = {"train_rows", "validation_rows", "epochs_run", "steps", "best_validation_loss",
               "validation_accuracy", "seconds", "seconds_per_step", "trainable_params",
               "base_model", "max_length"}
# Each tier gets its own words so a few steps can move the loss; a long prefix on some rows makes
# left truncation matter at max_length 32.
_WORDS = {"simple": ["hello", "thanks", "hi there", "good morning"],
          "medium": ["summarise this report", "write a short poem", "translate the paragraph",
                     "explain recursion"],
          "critical": ["diagnose chest pain", "draft the merger contract", "audit the tax filing",
                       "prove the theorem"]}


def _rows(n_per_tier: int) -> pd.DataFrame:
    rows = []
    for tier, words in _WORDS.items():
        for i in range(n_per_tier):
            prefix = "context " * 40 if i % 3 == 0 else ""
            rows.append({"text": f"{prefix}user: {words[i % len(words)]} please ({i})",
                         "label": tier, "weight": 1.0})
    return pd.DataFrame(rows)


# A large learning rate so the LoRA matrices move away from B = 0 in a few steps: the merge
# check below is then not trivially true.
TINY_PARAMS = TrainParams(max_length=32, epochs=1.0, batch_size=8, learning_rate=5e-2,
                          eval_steps=3, early_stopping_patience=1, seed=7)


def _peft_logits(base_dir: Path, adapter_dir: Path, classifier: InProcessClassifier,
                 texts: list[str]):
    """Logits (n, 3) of base + saved adapter, tokenized as the router tokenizes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from router.normalise import encode_for_classifier

    base = AutoModelForSequenceClassification.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tokenizer = classifier.tokenizer
    batch = tokenizer.pad(encode_for_classifier(tokenizer, texts, classifier.meta.max_length),
                          return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.float(), model


def _assert_merged_matches_adapter(base_dir: Path, out_dir: Path, texts: list[str]) -> None:
    import torch

    classifier = load_classifier(str(out_dir / "merged"))
    assert isinstance(classifier, InProcessClassifier)
    assert classifier._order == list(TIERS)
    assert classifier.model.config.id2label == dict(enumerate(TIERS))
    meta = json.loads((out_dir / "merged" / "router_model.json").read_text())
    assert meta["temperature"] == 1.0 and meta["max_length"] == TINY_PARAMS.max_length
    assert classifier.meta.version == meta["version"] and len(meta["version"]) == 16

    peft_logits, peft_model = _peft_logits(base_dir, out_dir / "adapter", classifier, texts)
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b), "LoRA did not train"
    torch.testing.assert_close(classifier.logits(texts), peft_logits, atol=1e-4, rtol=0)
    probs = classifier.predict(texts)
    expected = torch.softmax(peft_logits, dim=-1)
    for row, want in zip(probs, expected.tolist(), strict=True):
        assert [row[t] for t in TIERS] == pytest.approx(want, abs=1e-5)


def test_balanced_class_weights() -> None:
    labels = ["simple"] * 6 + ["medium"] * 3 + ["critical"]
    assert balanced_class_weights(labels) == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    # k counts the tiers present; an absent tier is neutral.
    assert balanced_class_weights(["simple"] * 3 + ["critical"]) == pytest.approx(
        [4 / 6, 1.0, 4 / 2])
    with pytest.raises(TrainError, match="not tiers"):
        balanced_class_weights(["simple", "hard"])


def test_max_train_rows_sampling_is_seeded() -> None:
    frame = _rows(10)
    first = sample_train_rows(frame, 12, seed=3)
    assert len(first) == 12
    assert list(first.index) == list(sample_train_rows(frame, 12, seed=3).index)
    assert list(first.index) != list(sample_train_rows(frame, 12, seed=4).index)
    assert sample_train_rows(frame, 100, seed=3) is frame


def test_lora_targets_by_model_type() -> None:
    assert lora_targets("bert") == (["query", "value"], ["classifier"])
    assert lora_targets("qwen2") == (["q_proj", "k_proj", "v_proj", "o_proj"], ["score"])
    with pytest.raises(TrainError, match="no LoRA recipe"):
        lora_targets("t5")


def test_bad_labels_are_a_domain_error(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["simple", "urgent"]})
    with pytest.raises(TrainError, match="urgent"):
        train_classifier(frame, frame, TINY_PARAMS, tmp_path, "unused")


def test_main_trains_tiny_bert(tiny_bert_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage end to end: params.yaml + split parquet -> adapter, merged, metrics."""
    monkeypatch.chdir(tmp_path)
    settings = TINY_PARAMS.model_dump() | {"base_model": str(tiny_bert_dir), "max_train_rows": 48}
    Path("params.yaml").write_text(yaml.safe_dump({"train": settings}))
    split = Path("data/pipeline/split")
    split.mkdir(parents=True)
    _rows(20).to_parquet(split / "train.parquet")
    validation = _rows(4)
    validation.to_parquet(split / "validation.parquet")

    assert train.main() == 0

    metrics = json.loads(Path("metrics/train.json").read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics["train_rows"] == 48 and metrics["validation_rows"] == 12
    assert metrics["steps"] >= 1 and metrics["seconds_per_step"] > 0
    assert metrics["best_validation_loss"] > 0 and 0 <= metrics["validation_accuracy"] <= 1
    assert metrics["base_model"] == str(tiny_bert_dir) and metrics["max_length"] == 32
    out_dir = Path("models/classifier")
    assert (out_dir / "adapter" / "adapter_config.json").exists()
    assert (out_dir / "adapter" / "tokenizer.json").exists()
    assert not list(tmp_path.rglob("checkpoint-*"))
    _assert_merged_matches_adapter(tiny_bert_dir, out_dir, list(validation["text"]))


def test_main_missing_split_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("train: {}\n")
    assert train.main() == 1


def test_qwen_backbone_trains_and_merges(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    """The production backbone's code path: Qwen2 LoRA on q/k/v/o, head "score"."""
    validation = _rows(3)
    metrics = train_classifier(_rows(12), validation, TINY_PARAMS, tmp_path, tiny_qwen_dir)
    assert metrics["steps"] >= 1 and metrics["train_rows"] == 36
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert "score" in config["modules_to_save"]
    _assert_merged_matches_adapter(tiny_qwen_dir, tmp_path, list(validation["text"]))
