"""train stage: LoRA fine-tuning on tiny random BERT and Qwen2 models, the per-tier heads' masked
binary cross-entropy and the softmax ablation, merged export, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from router.classifier import InProcessClassifier, load_classifier
from router.tiers import TIERS
from training import train
from training.params import TrainParams
from training.train import (
    MASKED,
    TrainError,
    balanced_class_weights,
    lora_targets,
    sample_train_rows,
    target_vectors,
    train_classifier,
)

METRIC_KEYS = {"train_rows", "validation_rows", "epochs_run", "steps", "best_validation_loss",
               "validation_accuracy", "seconds", "seconds_per_step", "trainable_params",
               "base_model", "max_length", "head"}
# Each tier gets its own words so a few steps can move the loss; a long prefix on some rows makes
# left truncation matter at max_length 32.
_WORDS = {"simple": ["hello", "thanks", "hi there", "good morning"],
          "medium": ["summarise this report", "write a short poem", "translate the paragraph",
                     "explain recursion"],
          "critical": ["diagnose chest pain", "draft the merger contract", "audit the tax filing",
                       "prove the theorem"]}


def _targets(tier: str, medium_recorded: bool = True) -> str:
    """The cheapest sufficient tier's targets: it and the tiers above 1, those below 0; medium
    null where the row records no medium model (RouteLLM)."""
    values = {t: int(TIERS.index(t) >= TIERS.index(tier)) for t in TIERS}
    if not medium_recorded:
        values["medium"] = None
    return json.dumps(values)


def _rows(n_per_tier: int) -> pd.DataFrame:
    rows = []
    for tier, words in _WORDS.items():
        for i in range(n_per_tier):
            prefix = "context " * 40 if i % 3 == 0 else ""
            rows.append({"text": f"{prefix}user: {words[i % len(words)]} please ({i})",
                         "label": tier, "targets": _targets(tier, medium_recorded=i % 4 != 1),
                         "weight": 1.0})
    return pd.DataFrame(rows)


# A large learning rate so the LoRA matrices move away from B = 0 in a few steps: the merge
# check below is then not trivially true.
TINY_PARAMS = TrainParams(max_length=32, epochs=1.0, batch_size=8, learning_rate=5e-2,
                          eval_steps=3, early_stopping_patience=1, seed=7)
SOFTMAX_PARAMS = TINY_PARAMS.model_copy(update={"head": "softmax"})


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


def _assert_merged_matches_adapter(base_dir: Path, out_dir: Path, texts: list[str],
                                   head: str) -> None:
    import torch

    classifier = load_classifier(str(out_dir / "merged"))
    assert isinstance(classifier, InProcessClassifier)
    assert classifier._to_tiers == [0, 1, 2]
    assert classifier.model.config.id2label == dict(enumerate(TIERS))
    meta = json.loads((out_dir / "merged" / "router_model.json").read_text())
    assert meta == {"format": 2, "version": meta["version"], "backend": "transformer",
                    "head": head, "max_length": TINY_PARAMS.max_length}
    assert classifier.meta.version == meta["version"] and len(meta["version"]) == 16
    assert (classifier.meta.backend, classifier.meta.head) == ("transformer", head)
    if head == "per_tier":  # independent logistic outputs, as other loaders should read them
        assert classifier.model.config.problem_type == "multi_label_classification"

    peft_logits, peft_model = _peft_logits(base_dir, out_dir / "adapter", classifier, texts)
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b), "LoRA did not train"
    torch.testing.assert_close(classifier.logits(texts), peft_logits, atol=1e-4, rtol=0)
    # Uncalibrated (calibrate fits the combination): per-tier P(acceptable) is the sigmoid of
    # each output; the softmax ablation's is P(the cheapest sufficient tier <= t), a cumsum.
    expected = (torch.sigmoid(peft_logits) if head == "per_tier"
                else torch.cumsum(torch.softmax(peft_logits, dim=-1), dim=-1))
    for row, want in zip(classifier.predict(texts), expected.tolist(), strict=True):
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


def test_target_vectors_mask_what_a_row_does_not_record() -> None:
    cells = ['{"simple": 1, "medium": null, "critical": 0}',
             {"simple": 0, "medium": 1, "critical": 1}, '{"critical": 1}']
    assert target_vectors(cells, "train") == [[1.0, MASKED, 0.0], [0.0, 1.0, 1.0],
                                              [MASKED, MASKED, 1.0]]
    with pytest.raises(TrainError, match="validation: row 1"):
        target_vectors(['{"simple": 1}', "[1, 2]"], "validation")


def _trainer(head: str, class_weights: list[float] | None, tmp_path: Path):
    import torch
    from transformers import TrainingArguments

    return train._weighted_trainer(class_weights, head, model=torch.nn.Linear(1, 3),
                                   args=TrainingArguments(output_dir=str(tmp_path),
                                                          report_to=[]))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_per_tier_loss_is_bce_over_the_recorded_cells_only(tmp_path: Path) -> None:
    """A row that does not record medium adds nothing to the medium head's loss or gradient."""
    import torch

    trainer = _trainer("per_tier", None, tmp_path)
    logits = torch.tensor([[2.0, 5.0, -1.0], [0.5, -0.5, 3.0]], requires_grad=True)
    labels = torch.tensor([[1.0, MASKED, 0.0], [0.0, 1.0, 1.0]])
    loss = trainer.compute_loss(lambda **_: {"logits": logits}, {"labels": labels})
    # BCE with logits: -log sigmoid(x) = softplus(-x) for target 1, softplus(x) for target 0;
    # the mean over the 5 recorded cells, not the 6.
    expected = (_softplus(-2.0) + _softplus(-1.0)
                + _softplus(0.5) + _softplus(0.5) + _softplus(-3.0)) / 5
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert float(logits.grad[0, 1]) == 0.0
    assert (logits.grad.abs() > 0).sum() == 5
    # The masked logit's value is irrelevant; the same cell recorded as a 0 counts.
    moved = torch.tensor([[2.0, -40.0, -1.0], [0.5, -0.5, 3.0]])
    assert float(trainer.compute_loss(lambda **_: {"logits": moved}, {"labels": labels})) == \
        pytest.approx(expected, abs=1e-6)
    recorded = labels.clone()
    recorded[0, 1] = 0.0
    assert float(trainer.compute_loss(lambda **_: {"logits": logits}, {"labels": recorded})) \
        == pytest.approx((5 * expected + _softplus(5.0)) / 6, abs=1e-6)


def test_softmax_loss_is_class_weighted_cross_entropy(tmp_path: Path) -> None:
    import torch

    trainer = _trainer("softmax", [1.0, 2.0, 1.0], tmp_path)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss = trainer.compute_loss(lambda **_: {"logits": logits},
                                {"labels": torch.tensor([0, 1])})
    # -log softmax: log((e + 2) / e) for row 0 (weight 1), log 3 for row 1 (weight 2).
    expected = (math.log((math.e + 2) / math.e) + 2 * math.log(3)) / 3
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_bad_labels_and_targets_are_domain_errors(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["simple", "urgent"]})
    with pytest.raises(TrainError, match="urgent"):
        train_classifier(frame, frame, SOFTMAX_PARAMS, tmp_path, "unused")
    # The per-tier heads read targets, not the label.
    with pytest.raises(TrainError, match=r"missing columns \['targets'\]"):
        train_classifier(frame, frame, TINY_PARAMS, tmp_path, "unused")
    unrecorded = pd.DataFrame({"text": ["a", "b"],
                               "targets": [json.dumps(dict.fromkeys(TIERS))] * 2})
    with pytest.raises(TrainError, match="train: no labelled rows"):
        train_classifier(unrecorded, unrecorded, TINY_PARAMS, tmp_path, "unused")


def test_main_trains_tiny_bert(tiny_bert_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage end to end (per-tier heads, the default): params.yaml + split parquet ->
    adapter, merged, metrics."""
    monkeypatch.chdir(tmp_path)
    settings = TINY_PARAMS.model_dump() | {"base_model": str(tiny_bert_dir), "max_train_rows": 48}
    Path("params.yaml").write_text(yaml.safe_dump({"train": settings}))
    split = Path("data/pipeline/split")
    split.mkdir(parents=True)
    nothing = {"text": "user: nothing recorded", "label": "simple",
               "targets": json.dumps(dict.fromkeys(TIERS)), "weight": 1.0}
    train_rows = pd.concat([_rows(20), pd.DataFrame([nothing])], ignore_index=True)
    train_rows.to_parquet(split / "train.parquet")
    validation = _rows(4)
    pd.concat([validation, pd.DataFrame([nothing])], ignore_index=True).to_parquet(
        split / "validation.parquet")

    assert train.main() == 0

    metrics = json.loads(Path("metrics/train.json").read_text())
    assert set(metrics) == METRIC_KEYS
    # 61 rows, the one recording no tier dropped, 48 sampled; validation 13 - 1.
    assert metrics["train_rows"] == 48 and metrics["validation_rows"] == 12
    assert metrics["head"] == "per_tier"
    assert metrics["steps"] >= 1 and metrics["seconds_per_step"] > 0
    assert metrics["best_validation_loss"] > 0 and 0 <= metrics["validation_accuracy"] <= 1
    assert metrics["base_model"] == str(tiny_bert_dir) and metrics["max_length"] == 32
    out_dir = Path("models/classifier")
    assert (out_dir / "adapter" / "adapter_config.json").exists()
    assert (out_dir / "adapter" / "tokenizer.json").exists()
    assert not list(tmp_path.rglob("checkpoint-*"))
    _assert_merged_matches_adapter(tiny_bert_dir, out_dir, list(validation["text"]), "per_tier")


def test_main_missing_split_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("train: {}\n")
    assert train.main() == 1


def test_qwen_backbone_trains_and_merges(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    """The production backbone's code path: Qwen2 LoRA on q/k/v/o, head "score" -- here with
    the softmax ablation's head (cross-entropy on the label)."""
    validation = _rows(3)
    metrics = train_classifier(_rows(12), validation, SOFTMAX_PARAMS, tmp_path, tiny_qwen_dir)
    assert metrics["steps"] >= 1 and metrics["train_rows"] == 36
    assert metrics["head"] == "softmax"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert "score" in config["modules_to_save"]
    _assert_merged_matches_adapter(tiny_qwen_dir, tmp_path, list(validation["text"]), "softmax")
