"""Tier classifiers behind one protocol, chosen by a spec string through a registry.

A classifier answers, for each tier, the calibrated probability that **that tier's answer is
acceptable** (per-tier success, not a distribution over tiers: the three need not sum to 1), plus
what the decision rule needs besides (:class:`Predictions`): the tiers it has evidence for, the
expected output tokens per tier, the request's embedding (the semantic cache reuses it: one
encoder pass) and the neighbourhood that explains the choice.

Backends (``load_classifier(spec)``):

* ``fixed:TIER``: always that tier (baselines; tests that must not depend on a model): p = 1 for
  it, and only it is allowed, so the rule routes there at any price weight.
* a bundle directory (``path:DIR`` or bare): what training writes to ``models/calibrated``; its
  ``router_model.json`` names the backend:

  - ``static``: a static embedding model distilled from the backbone with model2vec
    (``static/``: ``model.safetensors`` token vectors + ``tokenizer.json``), mean-pooled over the
    last ``max_length`` tokens, with linear heads (``heads.npz``). ~0.2 ms a request on a CPU;
  - ``transformer``: a Hugging Face sequence-classification model (MiniLM or Qwen2.5 + LoRA,
    merged) whose three outputs are the heads; its embedding is the mean-pooled last hidden state.

* ``models:/tier-classifier@champion``: the bundle registered in MLflow.
* ``vllm:URL#DIR``: the transformer bundle served by vLLM's ``/classify`` (heads only: vLLM
  returns no embedding, so no neighbourhood prior; see :mod:`router.vllm_classifier`).

Heads (``meta.head``): ``per_tier`` -- one logistic output per tier, trained on the rows that
record that tier; ``softmax`` -- the ablation, a distribution over "the cheapest sufficient tier"
whose cumulative sum is P(tier t suffices). Either way each tier gets a head logit ``z_t``.

Calibration (``meta.combine``, fitted on validation): ``p_t = sigmoid(a_t z_t + b_t
logit(prior_t) + c_t)``, ``prior_t`` from the neighbourhood table (:mod:`router.neighbourhood`);
``meta.head_only`` is the same without the prior (a backend without embeddings).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from router.errors import RouterError
from router.gate import CheckStats, GateError, OperatingPoint
from router.neighbourhood import NEIGHBOURHOOD_FILE, NeighbourhoodError, NeighbourhoodTable
from router.registry import registered_artifact_dir
from router.tiers import TIERS, Tier

logger = logging.getLogger(__name__)

TierScores = dict[Tier, float]
MODEL_META = "router_model.json"
HEADS_FILE = "heads.npz"
STATIC_DIR = "static"
BUNDLE_FORMAT = 2
BACKENDS = ("static", "transformer")
HEADS = ("per_tier", "softmax")
DEFAULT_MAX_LENGTH = 128  # tokens kept from the end of the normalised text
# Output tokens assumed per tier where a bundle stores none (a short answer).
DEFAULT_OUTPUT_TOKENS = 64.0
_EPS = 1e-6


class ClassifierError(RouterError):
    """A classifier could not be loaded or could not score a request."""


@dataclass(frozen=True)
class Combine:
    """``p_t = sigmoid(head[t] * z_t + prior[t] * logit(prior_t) + bias[t])`` (TIERS order)."""

    head: tuple[float, ...] = (1.0,) * len(TIERS)
    prior: tuple[float, ...] = (0.0,) * len(TIERS)
    bias: tuple[float, ...] = (0.0,) * len(TIERS)

    def apply(self, z: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
        """``z`` (n, 3) head logits, ``prior`` (n, 3) probabilities or None -> p (n, 3)."""
        out = z * np.asarray(self.head) + np.asarray(self.bias)
        if prior is not None:
            out = out + logit(prior) * np.asarray(self.prior)
        return sigmoid(out)

    def as_dict(self) -> dict[str, list[float]]:
        return {"head": list(self.head), "prior": list(self.prior), "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Combine:
        try:
            values = {key: tuple(float(v) for v in data.get(key, default))
                      for key, default in (("head", cls.head), ("prior", cls.prior),
                                           ("bias", cls.bias))}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ClassifierError(f"{where}: bad combine weights: {exc}") from None
        if any(len(v) != len(TIERS) or not all(map(math.isfinite, v)) for v in values.values()):
            raise ClassifierError(f"{where}: combine weights need {len(TIERS)} finite numbers "
                                  f"each (tiers {list(TIERS)})")
        return cls(**values)


@dataclass(frozen=True)
class ClassifierMeta:
    """What training stored with the model: version, head and calibration, the fitted operating
    point, the drift reference."""

    version: str
    backend: str = "transformer"
    head: str = "per_tier"
    max_length: int = DEFAULT_MAX_LENGTH
    combine: Combine = field(default_factory=Combine)
    head_only: Combine = field(default_factory=Combine)
    operating_point: OperatingPoint | None = None
    # Expected output tokens per tier without a neighbourhood table (TIERS order).
    output_tokens: tuple[float, ...] = (DEFAULT_OUTPUT_TOKENS,) * len(TIERS)
    # What the model did on its training distribution (router.monitor's drift reference).
    reference: Mapping[str, Any] | None = None


@dataclass
class Predictions:
    """A classifier's answer for n texts. ``scores`` (n, 3): P(tier's answer acceptable);
    ``allowed`` (n, 3) bool; ``output_tokens`` (n, 3); ``embeddings`` (n, d) unit rows or None;
    ``neighbourhood``: one explanation dict per text (None without a table); ``check``: what
    the response scorer's check does on each text's neighbourhood (None without statistics:
    the gate's confidence band decides cascades, :mod:`router.gate`)."""

    scores: np.ndarray
    allowed: np.ndarray
    output_tokens: np.ndarray
    embeddings: np.ndarray | None = None
    neighbourhood: list[dict[str, Any] | None] | None = None
    check: CheckStats | None = None

    def check_of(self, i: int) -> CheckStats | None:
        return None if self.check is None else self.check.take(slice(i, i + 1))

    def __len__(self) -> int:
        return len(self.scores)

    def tier_scores(self, i: int) -> TierScores:
        return {tier: float(self.scores[i, j]) for j, tier in enumerate(TIERS)}

    def tier_allowed(self, i: int) -> dict[Tier, bool]:
        return {tier: bool(self.allowed[i, j]) for j, tier in enumerate(TIERS)}

    def tier_output_tokens(self, i: int) -> dict[Tier, float]:
        return {tier: float(self.output_tokens[i, j]) for j, tier in enumerate(TIERS)}

    def explanation(self, i: int) -> dict[str, Any] | None:
        return None if self.neighbourhood is None else self.neighbourhood[i]

    def slice(self, start: int, stop: int) -> Predictions:
        return Predictions(self.scores[start:stop], self.allowed[start:stop],
                           self.output_tokens[start:stop],
                           None if self.embeddings is None else self.embeddings[start:stop],
                           None if self.neighbourhood is None else self.neighbourhood[start:stop],
                           None if self.check is None else self.check.take(slice(start, stop)))

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        embeddings = ([p.embeddings for p in parts] if all(p.embeddings is not None
                                                           for p in parts) else None)
        hoods = ([h for p in parts for h in p.neighbourhood]  # type: ignore[union-attr]
                 if all(p.neighbourhood is not None for p in parts) else None)
        checks = ([p.check for p in parts] if all(p.check is not None for p in parts)
                  else None)
        return cls(np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.allowed for p in parts]),
                   np.concatenate([p.output_tokens for p in parts]),
                   None if embeddings is None else np.concatenate(embeddings), hoods,
                   None if checks is None else CheckStats.concat(checks))


class TierClassifier(Protocol):
    """Scores normalised texts (see the module docstring)."""

    meta: ClassifierMeta

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        """``texts``: n normalised requests -> :class:`Predictions` for them."""
        ...

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        """``texts`` -> n dicts tier -> P(acceptable)."""
        ...


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def head_logits(raw: np.ndarray, head: str) -> np.ndarray:
    """A backend's raw outputs (n, 3) -> per-tier head logits ``z`` (n, 3).

    ``per_tier``: the outputs themselves. ``softmax``: class logits over "the cheapest
    sufficient tier"; P(tier t suffices) = the cumulative softmax up to t, as a logit."""
    raw = np.asarray(raw, dtype=float)
    if head == "per_tier":
        return raw
    if head == "softmax":
        z = raw - raw.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return logit(np.cumsum(probs, axis=1))
    raise ClassifierError(f"unknown head {head!r}; known: {HEADS}")


class _Scoring:
    """``predict`` derived from ``predict_full``."""

    meta: ClassifierMeta

    def predict_full(self, texts: Sequence[str]) -> Predictions:  # pragma: no cover
        raise NotImplementedError

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        found = self.predict_full(texts)
        return [found.tier_scores(i) for i in range(len(found))]


class FixedTierClassifier(_Scoring):
    """Always ``tier``: p = 1 there and 0 elsewhere, and only that tier allowed."""

    def __init__(self, tier: Tier) -> None:
        if tier not in TIERS:
            raise ClassifierError(f"fixed classifier: {tier!r} is not a tier {TIERS}")
        self.tier = tier
        self.meta = ClassifierMeta(version=f"fixed:{tier}", backend="fixed", head="fixed")

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        n, j = len(texts), TIERS.index(self.tier)
        scores = np.zeros((n, len(TIERS)))
        scores[:, j] = 1.0
        allowed = np.zeros((n, len(TIERS)), dtype=bool)
        allowed[:, j] = True
        return Predictions(scores, allowed, np.tile(self.meta.output_tokens, (n, 1)))


class BundleClassifier(_Scoring):
    """A trained bundle: backend head logits + embeddings -> calibrated per-tier predictions."""

    def __init__(self, path: Path, meta: ClassifierMeta) -> None:
        self.path = path
        self.meta = meta
        table = path / NEIGHBOURHOOD_FILE
        try:
            self.neighbourhood = NeighbourhoodTable.load(table) if table.exists() else None
        except NeighbourhoodError as exc:
            raise ClassifierError(str(exc)) from None
        # One forward pass at a time: torch already uses every core for one batch.
        self._lock = threading.Lock()

    @property
    def embedding_dim(self) -> int:  # pragma: no cover - each backend
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``texts`` -> (raw head outputs (n, 3), unit embeddings (n, d))."""
        raise NotImplementedError  # pragma: no cover

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        n = len(texts)
        if n == 0:
            return Predictions(np.zeros((0, len(TIERS))), np.zeros((0, len(TIERS)), bool),
                               np.zeros((0, len(TIERS))), np.zeros((0, self.embedding_dim),
                                                                    dtype=np.float32), [])
        raw, embeddings = self.encode(texts)
        return self.finish(raw, embeddings)

    def finish(self, raw: np.ndarray, embeddings: np.ndarray | None) -> Predictions:
        """Head outputs (n, 3) and embeddings (n, d) or None -> calibrated predictions."""
        z = head_logits(raw, self.meta.head)
        n = len(z)
        if self.neighbourhood is None or embeddings is None:
            return Predictions(self.meta.head_only.apply(z, None),
                               np.ones((n, len(TIERS)), dtype=bool),
                               np.tile(self.meta.output_tokens, (n, 1)), embeddings)
        found = self.neighbourhood.lookup(embeddings)
        return Predictions(self.meta.combine.apply(z, found.prior), found.allowed,
                           found.output_tokens, embeddings,
                           [found.explain(self.neighbourhood, i) for i in range(n)],
                           found.check)


class StaticClassifier(BundleClassifier):
    """The ``static`` backend: model2vec token vectors, mean-pooled, and linear heads.

    Read with ``tokenizers`` + ``safetensors`` + numpy (model2vec is needed only to distil)."""

    def __init__(self, path: Path, meta: ClassifierMeta) -> None:
        super().__init__(path, meta)
        self.encoder = StaticEncoder(path / STATIC_DIR, meta.max_length)
        try:
            with np.load(path / HEADS_FILE, allow_pickle=False) as data:
                self.coef = data["coef"].astype(np.float32)
                self.intercept = data["intercept"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ClassifierError(f"{path / HEADS_FILE}: not a heads file (coef, intercept): "
                                  f"{exc}") from exc
        if self.coef.shape != (len(TIERS), self.encoder.dim) or self.intercept.shape != (
                len(TIERS),):
            raise ClassifierError(f"{path / HEADS_FILE}: coef must be ({len(TIERS)}, "
                                  f"{self.encoder.dim}) and intercept ({len(TIERS)},), got "
                                  f"{self.coef.shape} and {self.intercept.shape}")

    @property
    def embedding_dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.encoder.encode(texts)
        return embeddings @ self.coef.T + self.intercept, embeddings


class StaticEncoder:
    """A model2vec folder: ``tokenizer.json`` + ``model.safetensors`` (``embeddings``, (V, d)).

    A text's vector: the mean of its last ``max_length`` tokens' vectors (the end carries the
    question: :mod:`router.normalise`), L2-normalised; float32 (n, d)."""

    def __init__(self, path: Path, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            tensors = load_file(str(path / "model.safetensors"))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise ClassifierError(f"{path}: not a static embedding folder (tokenizer.json + "
                                  f"model.safetensors): {exc}") from exc
        if "embeddings" not in tensors or tensors["embeddings"].ndim != 2:
            raise ClassifierError(f"{path}/model.safetensors: no (vocab, dim) 'embeddings'")
        self.vectors = tensors["embeddings"].astype(np.float32)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = max_length
        self.dim = int(self.vectors.shape[1])
        self.unk = self.tokenizer.token_to_id("[UNK]")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, encoding in enumerate(self.tokenizer.encode_batch(list(texts),
                                                                add_special_tokens=False)):
            ids = [t for t in encoding.ids if t != self.unk][-self.max_length:]
            if ids:
                vector = self.vectors[ids].mean(axis=0)
                out[i] = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return out


class InProcessClassifier(BundleClassifier):
    """The ``transformer`` backend: a local Hugging Face sequence-classification directory whose
    labels are the three tier words, run with transformers/torch (CPU or GPU)."""

    def __init__(self, path: Path, meta: ClassifierMeta | None = None,
                 device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (path / "config.json").exists():
            raise ClassifierError(f"{path}: not a model directory (no config.json)")
        super().__init__(path, meta or read_meta(path))
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
        order = [labels[index] for index in range(len(labels))]
        # Column permutation: model label order -> TIERS order, so callers never reorder.
        self._to_tiers = [order.index(tier) for tier in TIERS]
        if self.tokenizer.pad_token is None:
            # Decoder backbones (Qwen2) ship without a pad token; the model must know it too.
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self._torch = torch

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def logits(self, texts: Sequence[str]):  # -> torch.Tensor (n, 3), columns in TIERS order
        """Raw outputs of the model (no embeddings): what vLLM's ``/classify`` returns too."""
        from router.normalise import encode_for_classifier

        encoded = encode_for_classifier(self.tokenizer, texts, self.meta.max_length)
        batch = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
        with self._lock, self._torch.inference_mode():
            return self.model(**batch).logits.float()[:, self._to_tiers]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs and the attention-mask mean of the last hidden state, L2-normalised,
        from one forward pass (DESIGN: a second pass for the cache would eat the router's
        whole overhead budget)."""
        from router.cache.encoder import mean_pool
        from router.normalise import encode_for_classifier

        encoded = encode_for_classifier(self.tokenizer, texts, self.meta.max_length)
        batch = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
        with self._lock, self._torch.inference_mode():
            output = self.model(**batch, output_hidden_states=True)
            raw = output.logits.float()[:, self._to_tiers].cpu().numpy()
            embeddings = mean_pool(output.hidden_states[-1], batch["attention_mask"])
        return raw, np.asarray(embeddings, dtype=np.float32)


def read_meta(path: Path) -> ClassifierMeta:
    """The bundle's ``router_model.json``, validated; raises :class:`ClassifierError` naming the
    file and the field. A directory without one is an untrained transformer (head logits used
    as they are, every tier allowed)."""
    meta_path = path / MODEL_META
    if not meta_path.exists():
        return ClassifierMeta(version=path.name)
    where = str(meta_path)
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{where}: unreadable: {exc}") from None
    if data.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
        raise ClassifierError(f"{where}: bundle format {data.get('format')!r}; this router "
                              f"reads format {BUNDLE_FORMAT} (retrain with `make repro`)")
    backend = data.get("backend", "transformer")
    head = data.get("head", "per_tier")
    if backend not in BACKENDS:
        raise ClassifierError(f"{where}: backend {backend!r} is not one of {BACKENDS}")
    if head not in HEADS:
        raise ClassifierError(f"{where}: head {head!r} is not one of {HEADS}")
    point = None
    if data.get("operating_point") is not None:
        try:
            point = OperatingPoint.from_dict(data["operating_point"],
                                             f"model:{data.get('version', path.name)}")
        except GateError as exc:
            raise ClassifierError(f"{where}: {exc}") from None
    try:
        tokens = tuple(float(t) for t in data.get("output_tokens",
                                                  (DEFAULT_OUTPUT_TOKENS,) * len(TIERS)))
        max_length = int(data.get("max_length", DEFAULT_MAX_LENGTH))
    except (TypeError, ValueError) as exc:
        raise ClassifierError(f"{where}: {exc}") from None
    if len(tokens) != len(TIERS) or any(t < 0 or not math.isfinite(t) for t in tokens):
        raise ClassifierError(f"{where}: output_tokens needs {len(TIERS)} numbers >= 0")
    reference = data.get("reference")
    if reference is not None:
        from router.monitor import DriftReferenceError, check_reference

        try:
            check_reference(reference)
        except DriftReferenceError as exc:
            raise ClassifierError(f"{where}: {exc}") from None
    return ClassifierMeta(
        version=str(data.get("version", path.name)), backend=backend, head=head,
        max_length=max_length, combine=Combine.from_dict(data.get("combine") or {}, where),
        head_only=Combine.from_dict(data.get("head_only") or {}, where),
        operating_point=point, output_tokens=tokens, reference=reference)


def load_bundle(path: Path) -> TierClassifier:
    """A trained bundle directory, whichever backend its ``router_model.json`` names."""
    if not path.is_dir():
        raise ClassifierError(f"{path}: not a directory")
    meta = read_meta(path)
    if meta.backend == "static":
        return StaticClassifier(path, meta)
    return InProcessClassifier(path, meta)


# The pyfunc artifact holding the classifier bundle (training/register.py logs it).
MLFLOW_ARTIFACT = "classifier"


def registered_model_dir(uri: str) -> Path:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and return its classifier bundle (the
    pyfunc artifact ``classifier``; see :mod:`router.registry`)."""
    return registered_artifact_dir(uri, MLFLOW_ARTIFACT, ClassifierError, "tier-classifier")


# Registry: spec prefix -> factory taking the rest of the spec. A spec without a known prefix is
# a local bundle directory.
CLASSIFIER_BACKENDS: dict[str, Callable[[str], TierClassifier]] = {
    "fixed": lambda rest: FixedTierClassifier(rest),  # type: ignore[arg-type]
    "path": lambda rest: load_bundle(Path(rest)),
    "models": lambda rest: load_bundle(registered_model_dir(f"models:{rest}")),
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
    return load_bundle(path)
