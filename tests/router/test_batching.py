"""Micro-batching across threads: same scores as one call each, fewer passes under load."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from router.batching import BatchingClassifier
from router.classifier import InProcessClassifier


def test_concurrent_requests_share_passes_and_get_their_own_rows(tiny_bert_dir: Path) -> None:
    inner = InProcessClassifier(tiny_bert_dir)
    batched = BatchingClassifier(inner, max_batch=16)
    texts = [f"user: question number {i} " + "word " * (i % 7) for i in range(48)]
    expected_scores, expected_vectors = inner.predict_with_embeddings(texts)
    results: dict[int, tuple] = {}
    start = threading.Barrier(len(texts))

    def ask(i: int) -> None:
        start.wait()
        results[i] = batched.predict_with_embeddings([texts[i]])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(len(texts)):
        scores, vectors = results[i]
        assert scores[0] == pytest.approx(expected_scores[i], abs=1e-5)
        assert np.allclose(vectors[0], expected_vectors[i], atol=1e-5)
    assert batched.batched_items == len(texts)
    assert batched.batches < len(texts)  # requests that queued together shared a pass
    assert batched.meta is inner.meta and batched.tokenizer is inner.tokenizer
    batched.close()


def test_an_error_reaches_every_waiting_request(tiny_bert_dir: Path) -> None:
    batched = BatchingClassifier(InProcessClassifier(tiny_bert_dir))
    with pytest.raises(ValueError, match="text input must be"):
        batched.predict([None])  # type: ignore[list-item]
    assert batched.predict(["user: still serving"])[0]["simple"] > 0
    batched.close()
