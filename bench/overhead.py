"""``tier-router overhead``: the router's own time per request, without the LLM call.

Measured on :meth:`router.policy.RouterPolicy.decide` -- normalise, overrides, cache lookup
(exact, then semantic on the classifier's own embedding), classifier, gate -- with a warm cache
of real queries and the decision log off the request path (it is written by a background thread
in the service). Three cases:

* ``cache_miss``: a request the cache has never seen (each one unique);
* ``cache_hit_exact``: a request stored before (a dict lookup, no encoder pass);
* ``cache_hit_semantic``: a near-duplicate of a stored request (encoder pass + ANN search).

Beside them, in the same run and at the same prompt length, ``encoder_pass_ms``: one forward pass
of the base MiniLM (the DESIGN target's yardstick). Each case runs single-query and at
concurrency 8 and 32 (threads calling ``decide``, as the service does), at 32 and 128 tokens.
Prompts are real RouterBench and MMLU questions cut to the token count (keeping their end).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from router.cache import MiniLMEncoder, SemanticCache
from router.policy import RouteRequest, RouterPolicy
from workloads import WorkloadRecord

logger = logging.getLogger(__name__)

TOKENS = (32, 128)
CONCURRENCY = (1, 8, 32)
TENANT = "overhead"


def texts_of_length(records: Sequence[WorkloadRecord], tokenizer: Any, tokens: int, n: int,
                    keep: Callable[[str], bool] = lambda text: True) -> list[str]:
    """``n`` distinct prompts of exactly ``tokens`` tokenizer tokens (the end of each prompt)
    that ``keep`` accepts."""
    out: list[str] = []
    for record in records:
        ids = tokenizer(record.turns[-1], add_special_tokens=False)["input_ids"]
        if len(ids) < tokens:
            continue
        text = tokenizer.decode(ids[-tokens:]).strip()
        if keep(text) and text not in out:
            out.append(text)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} prompts of at least {tokens} tokens")


def _stats(samples_ms: Sequence[float], wall_s: float | None = None) -> dict[str, float]:
    ordered = sorted(samples_ms)
    stats = {"p50_ms": statistics.median(ordered),
             "p99_ms": float(np.percentile(ordered, 99)),
             "mean_ms": statistics.fmean(ordered), "n": len(ordered)}
    if wall_s:
        stats["requests_per_s"] = len(ordered) / wall_s
    return stats


def _timed(call: Callable[[str], Any], texts: Sequence[str], concurrency: int
           ) -> dict[str, float]:
    """Latency of ``call`` per text; with ``hit_share`` when ``call`` returns a cache kind."""
    def one(text: str) -> tuple[float, Any]:
        started = time.perf_counter()
        outcome = call(text)
        return (time.perf_counter() - started) * 1000, outcome

    started = time.perf_counter()
    if concurrency == 1:
        results = [one(t) for t in texts]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, texts))
    stats = _stats([ms for ms, _ in results], time.perf_counter() - started)
    kinds = [kind for _, kind in results]
    if any(isinstance(kind, str) for kind in kinds):
        stats["hit_share"] = sum(kind in ("exact", "semantic") for kind in kinds) / len(kinds)
    return stats


def _request(text: str) -> RouteRequest:
    return RouteRequest(messages=[{"role": "user", "content": text}], tenant=TENANT)


def measure(policy: RouterPolicy, cache: SemanticCache, encoder: MiniLMEncoder,
            records: Sequence[WorkloadRecord], tokenizer: Any, *, n: int = 200,
            warm: int = 2000) -> dict[str, Any]:
    """The report: per token count, each case single-query and at each concurrency."""
    result: dict[str, Any] = {"by_tokens": {}, "warm_entries": 0}
    for tokens in TOKENS:
        # Overridden requests skip the cache by design: measure cacheable ones.
        pool = texts_of_length(records, tokenizer, tokens, 3 * n + warm,
                               keep=lambda text: policy.overrides.match(text) is None)
        stored, fresh, padding = pool[:n], pool[n:2 * n], pool[2 * n + n:]
        # Warm the cache: the measured hits plus other real queries (the ANN index is not empty).
        for text in stored + padding:
            decision = policy.decide(_request(text))
            cache.store(decision.cache_key, _answer(text), "simple", decision.embedding)
        result["warm_entries"] += len(stored) + len(padding)
        near = [text[:-1] + ("?" if text[-1] != "?" else ".") for text in stored]
        # Same prompts, one extra pass each first: the allocator and kernels are warm.
        for text in fresh[:10]:
            encoder.encode([text])
        row: dict[str, Any] = {
            "encoder_pass_ms": _timed(lambda t: encoder.encode([t]), fresh, 1)}
        for concurrency in CONCURRENCY:
            suffix = "" if concurrency == 1 else f"@{concurrency}"
            unique = [f"{i} {t}" for i, t in enumerate(fresh)]  # never seen: a miss each time
            row[f"cache_miss{suffix}"] = _timed(lambda t: _decided(policy, t, None), unique,
                                                concurrency)
            row[f"cache_hit_exact{suffix}"] = _timed(
                lambda t: _decided(policy, t, "exact"), stored, concurrency)
            row[f"cache_hit_semantic{suffix}"] = _timed(
                lambda t: _decided(policy, t, "semantic"), near, concurrency)
        row["ratios"] = {
            "cache_miss_p50_vs_encoder": row["cache_miss"]["p50_ms"]
            / row["encoder_pass_ms"]["p50_ms"],
            "cache_miss_p99_vs_encoder": row["cache_miss"]["p99_ms"]
            / row["encoder_pass_ms"]["p50_ms"]}
        result["by_tokens"][str(tokens)] = row
        logger.info("overhead at %d tokens: miss p50 %.2f ms, exact hit p50 %.3f ms, encoder "
                    "%.2f ms", tokens, row["cache_miss"]["p50_ms"],
                    row["cache_hit_exact"]["p50_ms"], row["encoder_pass_ms"]["p50_ms"])
    return result


def _decided(policy: RouterPolicy, text: str, expect: str | None) -> str:
    """Decide ``text``; returns the cache outcome ("exact", "semantic" or "miss")."""
    decision = policy.decide(_request(text))
    kind = decision.cache_hit.kind if decision.cache_hit is not None else "miss"
    # Only "exact" must hit for sure; a near-duplicate may fall below the fitted threshold.
    if expect == "exact" and kind != "exact":
        raise RuntimeError(f"expected an exact cache hit for {text[:40]!r}, got {kind}")
    return kind


def _answer(text: str) -> dict[str, Any]:
    return {"id": f"overhead-{abs(hash(text))}", "object": "chat.completion", "created": 0,
            "model": "overhead", "choices": [{"index": 0, "finish_reason": "stop",
                                              "logprobs": None, "message": {
                                                  "role": "assistant", "content": "ok",
                                                  "refusal": None}}]}
