"""What every semantic-cache backend shares: the key, the hit, the protocol, the errors.

A request is cached under a :class:`CacheKey`:

* ``tenant``: never crossed. A hit needs the same tenant, always.
* ``scope``: sha256 of everything but the last user turn (system prompt, earlier turns, messages
  after it, tools, ``response_format``, temperature and every other sampling parameter, the
  requested model, non-text parts of the last turn). A hit needs the same scope.
* ``query``: the last user turn, normalised (NFC, whitespace runs collapsed). Semantic matching
  compares this turn only: the rest is pinned by ``scope``.
* ``exact``: sha256 of scope + query, the exact-match key (a dict lookup, microseconds).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from router.errors import RouterError
from router.normalise import message_text, normalise, request_messages

# Request fields that do not change the answer's content, so they must not split the cache:
# streaming only changes framing (a cached answer can be streamed), ``user``/``metadata``/``store``
# are bookkeeping (tenant isolation is the key's own field).
_NOT_SCOPE = frozenset({"messages", "model", "stream", "stream_options", "user", "metadata",
                        "store"})

HitKind = Literal["exact", "semantic"]


class CacheError(RouterError):
    """A cache could not be built, or a call broke its contract (wrong vector shape...)."""


@dataclass(frozen=True)
class CacheKey:
    """Where a request lives in the cache; see the module docstring. Hashes are hex sha256."""

    tenant: str
    scope: str
    query: str
    exact: str


@dataclass(frozen=True)
class CacheHit:
    """A cached answer. ``similarity``: 1.0 for an exact hit, else the neighbour's cosine."""

    entry_id: str
    response: dict[str, Any]
    similarity: float
    kind: HitKind
    tier: str
    stored_at: float  # seconds since the epoch (the cache's clock)


@dataclass(frozen=True)
class CacheMatch:
    """The semantic lookup's candidate before the threshold test (benchmarks, decision logs).

    ``similarity``: cosine between the query and the entry served. ``runner_up``: cosine of the
    nearest entry holding a *different* stored answer (a bound when none was in the searched
    window; -1.0 when nothing competes). ``margin`` = similarity - runner_up. ``support``: how
    many of the nearest entries, in order, hold the served answer (1 when only one was searched).
    """

    entry_id: str
    similarity: float
    margin: float
    runner_up: float
    support: int


def _digest(value: Any) -> str:
    # sort_keys + compact separators: a canonical form, so dict order never splits the cache.
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def normalise_query(text: str) -> str:
    """The last user turn as matched: NFC, whitespace collapsed, never truncated."""
    # normalise() renders "user: <text>"; max_chars above the length keeps it whole (an exact
    # key must not ignore a difference at the front of a long prompt).
    return normalise(text, max_chars=max(16, len(text) + 16)).removeprefix("user: ")


def _canonical_content(content: Any) -> Any:
    """Message content with its text normalised like the query (other parts kept verbatim)."""
    if isinstance(content, str):
        return normalise_query(content)
    if isinstance(content, Sequence):
        return [{**part, "text": normalise_query(str(part.get("text", "")))}
                if isinstance(part, Mapping) and part.get("type") == "text" else part
                for part in content]
    return content


def cache_key(messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], model: str,
              tenant: str) -> CacheKey:
    """The :class:`CacheKey` of a chat request.

    ``messages``: the OpenAI ``messages`` list; ``params``: the rest of the request body
    (temperature, tools, response_format...; ``messages``/``model``/``stream`` in it are ignored,
    ``None`` values count as absent); ``model``: the requested model (``auto``, a tier, a model id);
    ``tenant``: the isolation boundary. Raises ``RequestFormatError`` for an unreadable request.
    """
    turns = request_messages(list(messages))
    last = max(i for i, message in enumerate(turns) if message["role"] == "user")
    content = turns[last].get("content")
    # Non-text parts (images, audio) render as "[image_url]" in the text: their payload must pin
    # the scope, else two different images behind the same question would share an answer.
    parts = ([p for p in content if isinstance(p, Mapping) and p.get("type") != "text"]
             if isinstance(content, Sequence) and not isinstance(content, str) else [])
    context = [{**{key: value for key, value in message.items() if value is not None},
                "content": _canonical_content(message.get("content"))}
               if i != last else {"role": "user", "name": message.get("name"), "last": True,
                                  "parts": parts}
               for i, message in enumerate(turns)]
    settings = {key: value for key, value in params.items()
                if key not in _NOT_SCOPE and value is not None}
    scope = _digest({"model": model, "params": settings, "messages": context})
    query = normalise_query(message_text(content))
    exact = hashlib.sha256(f"{scope}\n{query}".encode()).hexdigest()
    return CacheKey(tenant=tenant, scope=scope, query=query, exact=exact)


def answer_digest(response: Mapping[str, Any]) -> str:
    """Identity of a stored answer: sha256 of its choices' message content and tool calls.

    Two entries with the same digest answer the same question as far as the cache can tell (the
    agreement test groups neighbours by it). Ids, timestamps and usage are left out.
    """
    choices = response.get("choices") or []
    messages = [(choice.get("message") or {}) if isinstance(choice, Mapping) else {}
                for choice in choices]
    body = [{"content": m.get("content"), "tool_calls": m.get("tool_calls")} for m in messages]
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def check_settings(*, dim: int, max_entries: int, ttl_s: float, neighbours: int,
                   min_support: int) -> None:
    """The size and agreement settings every backend takes; :class:`CacheError` if unusable."""
    if dim <= 0 or max_entries <= 0 or ttl_s <= 0 or neighbours <= 0 or min_support <= 0:
        raise CacheError(f"dim, max_entries, ttl_s, neighbours and min_support must be "
                         f"positive, got {dim}, {max_entries}, {ttl_s}, {neighbours}, "
                         f"{min_support}")
    if min_support > neighbours:
        raise CacheError(f"min_support ({min_support}) exceeds neighbours ({neighbours})")


def unit_vector(embedding: np.ndarray, dim: int) -> np.ndarray:
    """``embedding`` as a float32 (dim,) unit vector (inner product = cosine), or CacheError."""
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,) or not np.all(np.isfinite(vector)):
        raise CacheError(f"embedding must be {dim} finite numbers, got shape "
                         f"{np.shape(embedding)}")
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def agreement(nearest: Sequence[tuple[float, str, str]], neighbours: int, *,
              saw_all: bool) -> CacheMatch | None:
    """The semantic candidate and its agreement figures (see :class:`CacheMatch`).

    ``nearest``: live entries of one partition as (cosine, entry id, answer digest), nearest
    first, up to ``neighbours + 1`` of them; ``saw_all``: they are the whole partition. Shared by
    every backend, so a hit means the same thing whichever one serves it.
    """
    if not nearest:
        return None
    best_sim, best_id, best_answer = nearest[0]
    runner_up = next((sim for sim, _, answer in nearest[1:] if answer != best_answer), None)
    if runner_up is None:
        # Nothing different in view: beyond the window every entry is at most the last cosine
        # seen; with the whole partition in view (or one entry) nothing competes.
        runner_up = nearest[-1][0] if not saw_all and len(nearest) > 1 else -1.0
    # The leading run: how many of the nearest entries, in order, hold the served answer.
    support = next((i for i, (_, _, answer) in enumerate(nearest[:neighbours])
                    if answer != best_answer), min(len(nearest), neighbours))
    return CacheMatch(entry_id=best_id, similarity=best_sim, margin=best_sim - runner_up,
                      runner_up=runner_up, support=support)


class SemanticCache(Protocol):
    """A tenant-isolated exact + semantic response cache; safe to call from several threads.

    Backend-neutral: vectors come from the caller (the classifier's shared pass), so an embedded
    index and a vector-store server implement the same calls.
    """

    threshold: float

    def lookup(self, key: CacheKey, embedding: np.ndarray | None = None) -> CacheHit | None:
        """Exact match on ``key.exact``; then, given ``embedding`` (d,), a semantic match among
        entries of the same tenant and scope whose cosine reaches ``threshold`` (and whatever
        further test the backend applies). Expired entries are never returned."""
        ...

    def store(self, key: CacheKey, response: Mapping[str, Any], tier: str,
              embedding: np.ndarray | None = None) -> str:
        """Cache ``response`` (an OpenAI chat-completion dict); returns the entry id. Without an
        embedding the entry serves exact matches only. Re-storing a key replaces its entry."""
        ...

    def evict(self, entry_id: str) -> bool:
        """Drop an entry (negative feedback on a served hit); False if it was not there."""
        ...

    def flush(self) -> None:
        """Persist what the backend keeps locally; a no-op for a server backend."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...
