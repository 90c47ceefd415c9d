"""The semantic cache: a backend-neutral protocol, backends chosen by name through a registry.

Request path (DESIGN step 3)::

    key = cache_key(messages, params, model, tenant)
    hit = cache.lookup(key)                      # exact only: a dict lookup, no encoder pass
    if hit is None:
        vectors = classifier.predict_full([text]).embeddings  # one encoder pass
        hit = cache.lookup(key, vectors[0])      # semantic, same tenant and scope only
    ...
    cache.store(key, response, tier, vectors[0])  # after an answered, cacheable request
    cache.evict(hit.entry_id)                    # negative feedback on a served hit

Backends: ``embedded`` (faiss in-process, persisted to ``CacheConfig.path``) and ``chroma`` (a
Chroma server at ``CacheConfig.url`` shared by several replicas), registered by name in
:data:`CACHE_BACKENDS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from router.cache.base import (
    CacheError,
    CacheHit,
    CacheKey,
    CacheMatch,
    SemanticCache,
    cache_key,
    normalise_query,
)
from router.cache.encoder import Encoder, EncoderError, MiniLMEncoder, SharedPassEncoder
from router.config import CacheConfig


def _embedded(config: CacheConfig, encoder: Encoder, *, threshold: float,
              clock: Callable[[], float], **options: Any) -> SemanticCache:
    from router.cache.embedded import EmbeddedCache

    options.setdefault("path", config.path)
    return EmbeddedCache(dim=encoder.dim, encoder_name=encoder.name, threshold=threshold,
                         ttl_s=config.ttl_s, max_entries=config.max_entries,
                         min_margin=config.min_margin, min_support=config.min_support,
                         neighbours=config.neighbours,
                         clock=clock, **options)


def _chroma(config: CacheConfig, encoder: Encoder, *, threshold: float,
            clock: Callable[[], float], **options: Any) -> SemanticCache:
    from router.cache.chroma import ChromaCache

    options.pop("path", None)  # the server keeps the entries
    assert config.url is not None  # CacheConfig requires it for this backend
    return ChromaCache(url=config.url, dim=encoder.dim, encoder_name=encoder.name,
                       threshold=threshold, ttl_s=config.ttl_s, max_entries=config.max_entries,
                       min_margin=config.min_margin, min_support=config.min_support,
                       neighbours=config.neighbours, clock=clock, **options)


# Registry: CacheConfig.backend -> factory(config, encoder, threshold=, clock=, **options).
CACHE_BACKENDS: dict[str, Callable[..., SemanticCache]] = {"embedded": _embedded,
                                                           "chroma": _chroma}


def create_cache(config: CacheConfig, encoder: Encoder, *, threshold: float | None = None,
                 clock: Callable[[], float] = time.time, **options: Any) -> SemanticCache:
    """The cache ``config.backend`` names, for vectors in ``encoder``'s space.

    ``threshold``: a similarity fitted on paraphrase data for this encoder (it wins over
    ``config.similarity_threshold``, the unfitted default). ``clock``: seconds since the epoch.
    ``options``: backend-specific settings (embedded: ``path=None`` for memory only, ``hnsw_m``,
    ``ef_search``...).
    """
    if config.backend not in CACHE_BACKENDS:
        raise CacheError(f"unknown cache backend {config.backend!r}; known: "
                         f"{', '.join(CACHE_BACKENDS)}")
    chosen = config.similarity_threshold if threshold is None else threshold
    return CACHE_BACKENDS[config.backend](config, encoder, threshold=chosen, clock=clock,
                                          **options)


__all__ = [
    "CACHE_BACKENDS",
    "CacheError",
    "CacheHit",
    "CacheKey",
    "CacheMatch",
    "Encoder",
    "EncoderError",
    "MiniLMEncoder",
    "SemanticCache",
    "SharedPassEncoder",
    "cache_key",
    "create_cache",
    "normalise_query",
]
