"""Adaptive micro-batching of classifier passes across concurrent requests.

One forward pass at a time is what a CPU (or one GPU stream) does best, and each request's
pass alone leaves most of it idle: under load, requests queue behind each other's passes. The
:class:`BatchingClassifier` runs one worker thread; a request hands its text over and waits.
The worker takes the first waiting request and every other request *already* waiting (up to
``max_batch``), runs one pass for all of them and hands each its row. Nobody waits for a batch to
fill: alone, a request runs at once (no added latency); under load, the requests that arrived
during one pass form the next batch. Same results as calling the classifier directly (the
batch is padded, and padding is masked).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from router.classifier import TierScores

logger = logging.getLogger(__name__)


class BatchingClassifier:
    """Wraps a classifier with ``predict_with_embeddings``; same calls, batched across threads.
    ``batches`` / ``batched_texts`` count the passes run and the texts they held."""

    def __init__(self, classifier: Any, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.inner = classifier
        self.meta = classifier.meta
        self.max_batch = max_batch
        self.batches = self.batched_texts = 0
        self._closed = False
        self._queue: queue.SimpleQueue[tuple[list[str], Future] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="classifier-batcher",
                                        daemon=True)
        self._worker.start()

    def __getattr__(self, name: str) -> Any:  # tokenizer, model, device...: the inner one's
        return getattr(self.inner, name)

    def predict(self, texts: Sequence[str]) -> list[TierScores]:
        return self.predict_with_embeddings(texts)[0]

    def predict_with_embeddings(self, texts: Sequence[str]) -> tuple[list[TierScores], Any]:
        import numpy as np

        if not texts or self._closed:  # closed: whoever still holds it runs alone
            return self.inner.predict_with_embeddings(texts)
        future: Future = Future()
        self._queue.put((list(texts), future))
        scores, vectors = future.result()
        return scores, np.asarray(vectors)

    def close(self) -> None:
        """Stop the worker once the queued requests are served; later calls run unbatched."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            size = len(first[0])
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
                size += len(job[0])
            texts = [text for job_texts, _ in jobs for text in job_texts]
            try:
                scores, vectors = self.inner.predict_with_embeddings(texts)
            except BaseException as exc:  # every waiting request gets the error
                for _, future in jobs:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.batched_texts += len(texts)
            start = 0
            for job_texts, future in jobs:
                end = start + len(job_texts)
                future.set_result((scores[start:end], vectors[start:end]))
                start = end
