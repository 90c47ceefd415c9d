"""Micro-batching across threads: same scores as one call each, fewer passes under load."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from router.batching import BatchingClassifier
from router.classifier import InProcessClassifier, Predictions, load_classifier


def ask_at_once(batched: BatchingClassifier, texts: list[str]) -> dict[int, Predictions]:
    """Each text from its own thread, all released together: text index -> its predictions."""
    results: dict[int, Predictions] = {}
    start = threading.Barrier(len(texts))

    def ask(i: int) -> None:
        start.wait()
        results[i] = batched.predict_full([texts[i]])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_share_passes_and_get_their_own_rows(tiny_bert_dir: Path) -> None:
    inner = InProcessClassifier(tiny_bert_dir)
    batched = BatchingClassifier(inner, max_batch=16)
    texts = [f"user: question number {i} " + "word " * (i % 7) for i in range(48)]
    expected = inner.predict_full(texts)
    results = ask_at_once(batched, texts)
    for i in range(len(texts)):
        found = results[i]
        assert len(found) == 1  # its own row, not the batch's
        # abs 1e-6: the tiny model's scores for different texts differ by ~1e-5
        assert found.scores[0] == pytest.approx(expected.scores[i], abs=1e-6)
        assert np.allclose(found.embeddings[0], expected.embeddings[i], atol=1e-5)
        assert found.allowed[0].tolist() == expected.allowed[i].tolist()
        assert found.output_tokens[0].tolist() == expected.output_tokens[i].tolist()
    assert batched.batched_items == len(texts)
    assert batched.batches < len(texts)  # requests that queued together shared a pass
    assert batched.meta is inner.meta and batched.tokenizer is inner.tokenizer
    assert batched.embedding_dim == inner.embedding_dim  # the cache's shared pass still works
    for got, want in zip(batched.predict(texts[:2]), inner.predict(texts[:2]), strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    batched.close()


def test_a_batched_static_bundle_keeps_each_requests_neighbourhood(tiny_static_dir: Path) -> None:
    inner = load_classifier(str(tiny_static_dir))
    batched = BatchingClassifier(inner, max_batch=8)
    texts = [f"user: {word} my card" for word in ("block", "cancel", "replace", "order",
                                                    "freeze", "activate")]
    expected = inner.predict_full(texts)
    # the texts fall in different clusters, so a row handed to the wrong request would show
    assert len({expected.explanation(i)["cluster"] for i in range(len(texts))}) > 1
    results = ask_at_once(batched, texts)
    for i, text in enumerate(texts):
        assert results[i].explanation(0) == expected.explanation(i), text
        assert results[i].tier_allowed(0) == expected.tier_allowed(i)
        assert results[i].tier_output_tokens(0) == expected.tier_output_tokens(i)
    batched.close()


def test_an_error_reaches_every_waiting_request(tiny_bert_dir: Path) -> None:
    batched = BatchingClassifier(InProcessClassifier(tiny_bert_dir))
    with pytest.raises(ValueError, match="text input must be"):
        batched.predict([None])  # type: ignore[list-item]
    assert batched.predict(["user: still serving"])[0]["simple"] > 0
    batched.close()
