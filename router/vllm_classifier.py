"""The vLLM tier-classifier backend: vLLM's ``/classify`` on the merged model training exports.

``VLLMClassifier(url, path)``: ``url`` is the vLLM server, ``path`` the same exported folder
vLLM serves (``models/classifier/merged``, or a registered bundle). The folder gives the
tokenizer, the label order and ``router_model.json`` (head calibration, operating point),
so the two backends agree exactly:

* the texts are tokenized here with the in-process backend's own function
  (:func:`router.normalise.encode_for_classifier`: keep the end, special tokens kept) and sent
  as token ids, so vLLM sees the very same tokens;
* ``use_activation: false`` returns raw logits; the heads' calibration is applied here, as
  in-process. vLLM returns no embedding, so there is no neighbourhood prior: the bundle's
  ``head_only`` calibration applies and every tier is allowed (``router.classifier``).

Spec for :func:`router.classifier.load_classifier`: ``vllm:http://127.0.0.1:8000#/path/to/model``.
Any failure (connection, timeout, HTTP error, a reply of the wrong shape) raises
:class:`VLLMError`; :class:`router.breaker.CircuitBreakerClassifier` turns those into fallbacks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from router.classifier import (
    ClassifierError,
    ClassifierMeta,
    Predictions,
    TierScores,
    head_logits,
    read_meta,
)
from router.normalise import encode_for_classifier
from router.tiers import TIERS


class VLLMError(ClassifierError):
    """The vLLM server did not answer, or not in the shape of ``/classify``."""


class VLLMClassifier:
    """:class:`~router.classifier.TierClassifier` over a vLLM server; see the module docs."""

    def __init__(self, url: str, path: Path, *, timeout_s: float = 2.0,
                 model: str | None = None) -> None:
        from transformers import AutoTokenizer

        if not (path / "config.json").exists():
            raise ClassifierError(f"{path}: not a model directory (no config.json)")
        config = json.loads((path / "config.json").read_text())
        labels = {int(i): label for i, label in (config.get("id2label") or {}).items()}
        if sorted(labels.values()) != sorted(TIERS):
            raise ClassifierError(f"{path}: labels {sorted(labels.values())} are not the tiers")
        self._to_tiers = [[labels[i] for i in range(len(labels))].index(t) for t in TIERS]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"{path}: cannot load the tokenizer: {exc}") from exc
        self.meta: ClassifierMeta = read_meta(path)
        self.url = url.rstrip("/")
        # Served model name: vLLM's default is the path it was started with.
        self.model = model or str(path)
        self._http = httpx.Client(timeout=timeout_s)

    def logits(self, texts: Sequence[str]) -> list[list[float]]:
        """Raw logits (n, 3), columns in TIERS order."""
        if not texts:
            return []
        ids = encode_for_classifier(self.tokenizer, texts, self.meta.max_length)["input_ids"]
        try:
            reply = self._http.post(f"{self.url}/classify", json={
                "model": self.model, "input": [list(map(int, row)) for row in ids],
                "use_activation": False})
        except httpx.HTTPError as exc:
            raise VLLMError(f"vLLM {self.url}: {type(exc).__name__}: {exc}") from exc
        if reply.status_code != 200:
            raise VLLMError(f"vLLM {self.url}: HTTP {reply.status_code}: {reply.text[:300]}")
        try:
            data = sorted(reply.json()["data"], key=lambda row: row["index"])
            rows = [[float(row["probs"][j]) for j in self._to_tiers] for row in data]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise VLLMError(f"vLLM {self.url}: not a /classify reply: {exc}") from exc
        if len(rows) != len(texts) or not all(math.isfinite(v) for row in rows for v in row):
            raise VLLMError(f"vLLM {self.url}: {len(rows)} finite rows for {len(texts)} texts "
                            "expected")
        return rows

    def predict_full(self, texts: Sequence[str]) -> Predictions:
        n = len(texts)
        raw = np.array(self.logits(texts), dtype=float).reshape(n, len(TIERS))
        return Predictions(self.meta.head_only.apply(head_logits(raw, self.meta.head), None),
                           np.ones((n, len(TIERS)), dtype=bool),
                           np.tile(self.meta.output_tokens, (n, 1)))

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        found = self.predict_full(texts)
        return [found.tier_scores(i) for i in range(len(found))]

    def close(self) -> None:
        self._http.close()


def from_spec(rest: str, *, timeout_s: float = 2.0) -> VLLMClassifier:
    """``http://host:port#/path/to/model`` (what follows ``vllm:`` in a classifier spec)."""
    url, _, path = rest.partition("#")
    if not url.startswith(("http://", "https://")) or not path:
        raise ClassifierError(f"vllm:{rest}: expected vllm:http://host:port#/path/to/model")
    return VLLMClassifier(url, Path(path), timeout_s=timeout_s)
