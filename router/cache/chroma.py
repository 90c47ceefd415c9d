"""The shared backend: a Chroma vector-store server that several router replicas use at once.

Same contract as the embedded backend (``tests/router/test_cache.py`` runs one set of contract
tests on both): exact hits, semantic hits within one tenant and scope, the agreement test
(:func:`router.cache.base.agreement`), TTL, a size bound, eviction. What differs:

* **Partitions are collections.** One Chroma collection per (embedding space, tenant, scope),
  named by a hash of the three, so another tenant's vectors are never searched: isolation is
  structural, as in the embedded backend, and doesn't rest on a metadata filter. Entry ids
  carry their collection (``<collection>/<uuid>``), so eviction needs no search.
* **Exact hits** are a metadata lookup (``exact`` digest) in the key's own collection: one HTTP
  round trip (~1-2 ms on 127.0.0.1) instead of a dict lookup.
* **The clock is shared**: entries hold ``stored_at`` (seconds since the epoch) and every
  replica filters on ``stored_at >= now - ttl_s``, so replicas need synchronised clocks (NTP).
* **The size bound is per partition** (``max_entries`` entries per tenant+scope): counting
  every collection on each store would cost a round trip per collection.
* Entries stored without an embedding serve exact hits only; Chroma needs a vector for every
  record, so they hold a placeholder and ``has_vector: false`` keeps them out of searches.

Server: ``chroma run --path DIR --host 127.0.0.1 --port N`` (PyPI ``chromadb``, in its own
environment; the router needs only ``chromadb-client``). Config: ``cache.backend: chroma``,
``cache.url: http://host:port``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import numpy as np

from router.cache.base import (
    CacheError,
    CacheHit,
    CacheKey,
    CacheMatch,
    agreement,
    answer_digest,
    check_settings,
    unit_vector,
)

logger = logging.getLogger(__name__)

PREFIX = "trc-"  # every collection this backend creates starts with it


class ChromaCache:
    """:class:`~router.cache.base.SemanticCache` on a Chroma server; see the module docstring.

    ``url``: the server (``http://127.0.0.1:8000``). Other arguments as
    :class:`~router.cache.embedded.EmbeddedCache`. Raises :class:`CacheError` when the server
    cannot be reached at start.
    """

    def __init__(self, *, url: str, dim: int, encoder_name: str, threshold: float,
                 ttl_s: float = 86_400.0, max_entries: int = 100_000, min_margin: float = 0.0,
                 min_support: int = 1, neighbours: int = 32,
                 clock: Callable[[], float] = time.time) -> None:
        check_settings(dim=dim, max_entries=max_entries, ttl_s=ttl_s, neighbours=neighbours,
                       min_support=min_support)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CacheError(f"cache.url must look like http://host:port, got {url!r}")
        import chromadb
        from chromadb.config import Settings

        try:
            self._client = chromadb.HttpClient(
                host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https"
                                                           else 80),
                ssl=parsed.scheme == "https", settings=Settings(anonymized_telemetry=False))
            self._client.heartbeat()
        except Exception as exc:  # chromadb raises plain exceptions for connection errors
            raise CacheError(f"cannot reach the Chroma server at {url}: {exc}") from exc
        self.url = url
        self.dim = dim
        self.encoder_name = encoder_name
        self.threshold = float(threshold)
        self.ttl_s = float(ttl_s)
        self.max_entries = max_entries
        self.min_margin = float(min_margin)
        self.min_support = min_support
        self.neighbours = neighbours
        self.clock = clock
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._placeholder = np.zeros(dim, dtype=np.float32)
        self._placeholder[0] = 1.0

    # -- public API -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live and expired entries in every collection of this embedding space (a scan; for
        tests and operators, not the request path)."""
        total = 0
        for collection in self._client.list_collections():
            if (collection.name.startswith(PREFIX)
                    and (collection.metadata or {}).get("encoder") == self.encoder_name):
                total += len(self._live(collection, self.clock()))
        return total

    def lookup(self, key: CacheKey, embedding: np.ndarray | None = None) -> CacheHit | None:
        vector = None if embedding is None else self._as_vector(embedding)
        collection = self._collection(key, create=False)
        if collection is None:
            return None
        now = self.clock()
        fresh = {"stored_at": {"$gt": now - self.ttl_s}}
        found = self._call("exact lookup", collection.get, where={
            "$and": [{"exact": key.exact}, fresh]}, include=["metadatas", "documents"], limit=1)
        if found["ids"]:
            return self._hit(collection.name, found["ids"][0], found["metadatas"][0],
                             found["documents"][0], 1.0, "exact")
        if vector is None:
            return None
        match, rows = self._match(collection, vector, now)
        if match is None or not self.accepts(match):
            return None
        meta, document = rows[match.entry_id]
        return self._hit(collection.name, match.entry_id, meta, document, match.similarity,
                         "semantic")

    def accepts(self, match: CacheMatch) -> bool:
        return (match.similarity >= self.threshold and match.margin >= self.min_margin
                and match.support >= self.min_support)

    def nearest(self, key: CacheKey, embedding: np.ndarray) -> CacheMatch | None:
        collection = self._collection(key, create=False)
        if collection is None:
            return None
        match, _ = self._match(collection, self._as_vector(embedding), self.clock())
        if match is None:
            return None
        return CacheMatch(entry_id=f"{collection.name}/{match.entry_id}",
                          similarity=match.similarity, margin=match.margin,
                          runner_up=match.runner_up, support=match.support)

    def store(self, key: CacheKey, response: Mapping[str, Any], tier: str,
              embedding: np.ndarray | None = None) -> str:
        vector = None if embedding is None else self._as_vector(embedding)
        try:
            document = json.dumps(response, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise CacheError(f"response must be a JSON-serialisable dict: {exc}") from exc
        collection = self._collection(key, create=True)
        assert collection is not None
        now = self.clock()
        # Re-storing a key replaces its entry; expired entries go on the way.
        self._call("replace", collection.delete, where={"exact": key.exact})
        self._call("purge", collection.delete, where={"stored_at": {"$lte": now - self.ttl_s}})
        entry = uuid.uuid4().hex
        self._call("store", collection.add, ids=[entry], documents=[document],
                   embeddings=[(vector if vector is not None else self._placeholder).tolist()],
                   metadatas=[{"exact": key.exact, "tier": tier, "stored_at": now,
                               "answer": answer_digest(response),
                               "has_vector": vector is not None}])
        self._bound(collection)
        return f"{collection.name}/{entry}"

    def evict(self, entry_id: str) -> bool:
        name, _, entry = entry_id.partition("/")
        if not name.startswith(PREFIX) or not entry:
            return False
        try:
            collection = self._client.get_collection(name)
        except Exception:  # no such collection
            return False
        if not self._call("evict", collection.get, ids=[entry], include=[])["ids"]:
            return False
        self._call("evict", collection.delete, ids=[entry])
        logger.info("cache entry %s evicted", entry_id)
        return True

    def flush(self) -> None:
        """Nothing to do: every write already went to the server."""

    def close(self) -> None:
        self._collections.clear()

    # -- internals ----------------------------------------------------------------------------

    def _name(self, key: CacheKey) -> str:
        digest = hashlib.sha256(
            f"{self.encoder_name}\n{key.tenant}\n{key.scope}".encode()).hexdigest()
        return PREFIX + digest[:56]

    def _collection(self, key: CacheKey, *, create: bool) -> Any | None:
        name = self._name(key)
        with self._lock:
            if name in self._collections:
                return self._collections[name]
        try:
            if create:
                collection = self._client.get_or_create_collection(
                    name, embedding_function=None,
                    metadata={"encoder": self.encoder_name, "hnsw:space": "cosine"})
            else:
                collection = self._client.get_collection(name, embedding_function=None)
        except Exception as exc:
            if not create and "does not exist" in str(exc).lower():
                return None  # nothing stored for this tenant and scope yet
            raise CacheError(f"Chroma server {self.url}: collection {name}: {exc}") from exc
        with self._lock:
            self._collections[name] = collection
        return collection

    def _match(self, collection: Any, vector: np.ndarray, now: float
               ) -> tuple[CacheMatch | None, dict[str, tuple[dict, str]]]:
        agreeing = self.min_margin > 0 or self.min_support > 1
        # +1: the window's last neighbour bounds the margin when no different answer is inside.
        k = self.neighbours + 1 if agreeing else 1
        found = self._call("semantic lookup", collection.query, query_embeddings=[
            vector.tolist()], n_results=k, where={"$and": [
                {"has_vector": True}, {"stored_at": {"$gt": now - self.ttl_s}}]},
            include=["metadatas", "documents", "distances"])
        ids, metas = found["ids"][0], found["metadatas"][0]
        docs, distances = found["documents"][0], found["distances"][0]
        # Chroma's cosine space reports distance = 1 - cosine.
        nearest = [(1.0 - float(d), i, m["answer"]) for i, m, d in zip(ids, metas, distances,
                                                                        strict=True)]
        rows = {i: (m, doc) for i, m, doc in zip(ids, metas, docs, strict=True)}
        return agreement(nearest, self.neighbours, saw_all=len(nearest) < k), rows

    def _bound(self, collection: Any) -> None:
        count = self._call("count", collection.count)
        if count <= self.max_entries:
            return
        stored = self._call("size bound", collection.get, include=["metadatas"])
        oldest = sorted(zip(stored["ids"], stored["metadatas"], strict=True),
                        key=lambda pair: pair[1]["stored_at"])
        self._call("size bound", collection.delete,
                   ids=[i for i, _ in oldest[:count - self.max_entries]])

    def _live(self, collection: Any, now: float) -> list[str]:
        return self._call("count", collection.get, where={
            "stored_at": {"$gt": now - self.ttl_s}}, include=[])["ids"]

    def _hit(self, collection: str, entry: str, meta: Mapping[str, Any], document: str,
             similarity: float, kind: Any) -> CacheHit:
        return CacheHit(entry_id=f"{collection}/{entry}", response=json.loads(document),
                        similarity=similarity, kind=kind, tier=str(meta["tier"]),
                        stored_at=float(meta["stored_at"]))

    def _as_vector(self, embedding: np.ndarray) -> np.ndarray:
        return unit_vector(embedding, self.dim)

    def _call(self, what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except CacheError:
            raise
        except Exception as exc:  # connection errors, server errors: one domain error
            raise CacheError(f"Chroma server {self.url}: {what} failed: {exc}") from exc

