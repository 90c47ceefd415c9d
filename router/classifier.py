"""Tier classifiers behind one protocol, chosen by a spec string through a registry.

* ``fixed:TIER``: always that tier with probability 1 (baselines; tests that must not depend on
  a random model).
* a local directory: any Hugging Face sequence-classification model whose labels are the three
  tier words (MiniLM + LoRA merged by training, a tiny test model, Qwen2.5-0.5B...), run
  in-process on the CPU or GPU. An optional ``router_model.json`` beside the weights carries what
  training fitted: ``{"version", "temperature", "bias", "thresholds": {"escalate", "trust"},
  "max_length"}``. Probabilities are ``softmax(logits / temperature + bias)`` (``bias``: one
  logit offset per tier in TIERS order, default zeros; bias-corrected temperature scaling).

The vLLM ``/classify`` backend joins this registry with the service.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router.errors import RouterError
from router.registry import registered_artifact_dir
from router.tiers import TIERS, Tier

logger = logging.getLogger(__name__)

TierScores = dict[Tier, float]
MODEL_META = "router_model.json"
DEFAULT_MAX_LENGTH = 128  # tokens kept from the end of the normalised text


class ClassifierError(RouterError):
    """A classifier could not be loaded or could not score a request."""


@dataclass(frozen=True)
class ClassifierMeta:
    """What training stored with the model: version, calibration, fitted thresholds."""

    version: str
    temperature: float = 1.0
    bias: tuple[float, ...] = (0.0,) * len(TIERS)  # logit offsets in TIERS order
    thresholds: Mapping[str, float] | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    # What the model did on its training distribution (router.monitor's drift reference).
    reference: Mapping[str, Any] | None = None


class TierClassifier(Protocol):
    """Scores normalised texts: one probability per tier for each text."""

    meta: ClassifierMeta

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        """``texts``: n normalised requests -> n dicts tier -> probability (each sums to 1)."""
        ...


class FixedTierClassifier:
    """Always ``tier``, with probability 1."""

    def __init__(self, tier: Tier) -> None:
        if tier not in TIERS:
            raise ClassifierError(f"fixed classifier: {tier!r} is not a tier {TIERS}")
        self.tier = tier
        self.meta = ClassifierMeta(version=f"fixed:{tier}")

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        return [{t: 1.0 if t == self.tier else 0.0 for t in TIERS} for _ in texts]


class InProcessClassifier:
    """A local Hugging Face sequence-classification directory, run with transformers/torch."""

    def __init__(self, path: Path, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / "config.json").exists():
            raise ClassifierError(f"{path}: not a model directory (no config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"{path}: cannot load the model: {exc}") from exc
        labels = {index: label for index, label in self.model.config.id2label.items()}
        if sorted(labels.values()) != sorted(TIERS):
            raise ClassifierError(f"{path}: labels {sorted(labels.values())} are not the tiers "
                                  f"{list(TIERS)}")
        self._order = [labels[index] for index in range(len(labels))]
        # Column permutation: model label order -> TIERS order, so callers never reorder.
        self._to_tiers = [self._order.index(tier) for tier in TIERS]
        if self.tokenizer.pad_token is None:
            # Decoder backbones (Qwen2) ship without a pad token; the model must know it too.
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.meta = read_meta(path)
        self._torch = torch
        # One forward pass at a time: torch already uses every core for one batch.
        self._lock = threading.Lock()

    def logits(self, texts: Sequence[str]):  # -> torch.Tensor (n, 3), columns in TIERS order
        from router.normalise import encode_for_classifier

        encoded = encode_for_classifier(self.tokenizer, texts, self.meta.max_length)
        batch = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
        with self._lock, self._torch.inference_mode():
            return self.model(**batch).logits.float()[:, self._to_tiers]

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        if not texts:
            return []
        bias = self._torch.tensor(self.meta.bias, device=self.device)
        probs = self._torch.softmax(self.logits(texts) / self.meta.temperature + bias,
                                    dim=-1).cpu()
        return [dict(zip(TIERS, row, strict=True)) for row in probs.tolist()]

    def predict_with_embeddings(self, texts: Sequence[str]):  # -> (list[TierScores], np.ndarray)
        """:meth:`predict` plus a sentence embedding per text, from the same forward pass.

        The embedding is the attention-mask mean of the last hidden state, L2-normalised: float32
        numpy (n, hidden_size). The semantic cache takes it, so the request path runs the encoder
        once (DESIGN: a second MiniLM pass would eat the router's whole overhead budget).
        """
        import numpy as np

        from router.cache.encoder import mean_pool
        from router.normalise import encode_for_classifier

        if not texts:
            return [], np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        encoded = encode_for_classifier(self.tokenizer, texts, self.meta.max_length)
        batch = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
        with self._lock, self._torch.inference_mode():
            output = self.model(**batch, output_hidden_states=True)
            logits = output.logits.float()[:, self._to_tiers]
            embeddings = mean_pool(output.hidden_states[-1], batch["attention_mask"])
        bias = self._torch.tensor(self.meta.bias, device=self.device)
        probs = self._torch.softmax(logits / self.meta.temperature + bias, dim=-1).cpu()
        return [dict(zip(TIERS, row, strict=True)) for row in probs.tolist()], embeddings


def read_meta(path: Path) -> ClassifierMeta:
    meta_path = path / MODEL_META
    if not meta_path.exists():
        return ClassifierMeta(version=path.name)
    try:
        data = json.loads(meta_path.read_text())
        meta = ClassifierMeta(version=str(data.get("version", path.name)),
                              temperature=float(data.get("temperature", 1.0)),
                              bias=tuple(float(b) for b in
                                         data.get("bias", (0.0,) * len(TIERS))),
                              thresholds=data.get("thresholds"),
                              max_length=int(data.get("max_length", DEFAULT_MAX_LENGTH)),
                              reference=data.get("reference"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ClassifierError(f"{meta_path}: unreadable: {exc}") from exc
    if meta.reference is not None:
        from router.monitor import DriftReferenceError, check_reference

        try:
            check_reference(meta.reference)
        except DriftReferenceError as exc:
            raise ClassifierError(f"{meta_path}: {exc}") from None
    if meta.temperature <= 0:
        raise ClassifierError(f"{meta_path}: temperature must be > 0, got {meta.temperature}")
    if len(meta.bias) != len(TIERS) or not all(math.isfinite(b) for b in meta.bias):
        raise ClassifierError(f"{meta_path}: bias needs {len(TIERS)} finite numbers (one per "
                              f"tier in the order {list(TIERS)}), got {list(meta.bias)}")
    if meta.thresholds is not None and set(meta.thresholds) != {"escalate", "trust"}:
        raise ClassifierError(f"{meta_path}: thresholds need exactly 'escalate' and 'trust'")
    return meta


# The pyfunc artifact holding the classifier bundle (training/register.py logs it).
MLFLOW_ARTIFACT = "classifier"


def registered_model_dir(uri: str) -> Path:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and return its classifier bundle (the
    pyfunc artifact ``classifier``; see :mod:`router.registry`)."""
    return registered_artifact_dir(uri, MLFLOW_ARTIFACT, ClassifierError, "tier-classifier")


# Registry: spec prefix -> factory taking the rest of the spec. A spec without a known prefix is
# a local model directory.
CLASSIFIER_BACKENDS: dict[str, Callable[[str], TierClassifier]] = {
    "fixed": lambda rest: FixedTierClassifier(rest),  # type: ignore[arg-type]
    "path": lambda rest: InProcessClassifier(Path(rest)),
    "models": lambda rest: InProcessClassifier(registered_model_dir(f"models:{rest}")),
    "vllm": lambda rest: _vllm(rest),
}


def _vllm(rest: str) -> TierClassifier:
    from router.vllm_classifier import from_spec

    return from_spec(rest)


def load_classifier(spec: str) -> TierClassifier:
    """``fixed:TIER``, ``path:DIR``, ``models:/NAME@ALIAS``, ``vllm:URL#DIR`` or a bare
    directory path."""
    prefix, _, rest = spec.partition(":")
    if rest and prefix in CLASSIFIER_BACKENDS:
        return CLASSIFIER_BACKENDS[prefix](rest)
    path = Path(spec)
    if not path.is_dir():
        raise ClassifierError(f"classifier {spec!r}: neither {', '.join(CLASSIFIER_BACKENDS)}:… "
                              f"nor a model directory")
    return InProcessClassifier(path)
