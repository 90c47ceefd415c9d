"""route(): the whole request path, top to bottom.

    normalise -> overrides -> cache -> classifier -> gate -> dispatch -> decision record

* ``model="auto"`` routes; a tier name or a configured model id *pins* the request (the
  classifier still scores it and the decision is still logged; overrides do not apply to pins).
* An override (finance / legal / medical rule) sends the request straight to its tier and is
  logged as an override, not an escalation.
* The decision (:mod:`router.gate`): the classifier's per-tier P(acceptable), the request's
  expected price per tier (:mod:`router.pricing`) and the operating point (price weight,
  trust / escalate thresholds, score threshold) choose a tier and a gate action.
* The cascade (with a response scorer and ``cascade.enabled``): call the chosen tier, score the
  answer; when the check fails, escalate by the same rule among the tiers above the one that
  answered, at most ``cascade.max_calls`` calls. A request whose latency budget
  (``RouteRequest.latency_budget_ms``, else ``cascade.latency_budget_ms``) the cascade would
  overrun -- judged on the tiers' recent latencies -- goes straight to the chosen tier. Without a
  scorer a cascade decision is dispatched to the chosen tier. The record keeps each step (tier,
  score, cost) under ``extra["cascade"]``; its cost is the sum of every call.
* The cache (when given): an exact hit (a dict lookup) answers before the classifier runs; else
  the classifier's forward pass also yields the request's embedding (one encoder pass) for the
  semantic lookup. Overridden requests neither look up nor store; an answer from the critical
  tier is not stored (DESIGN step 3). A hit costs nothing and is recorded with its similarity.
* A/B test (config ``ab``): each request is assigned a variant (:mod:`router.ab`) whose
  operating point decides it; the record carries the variant and ``threshold_source``
  ``ab:<variant>``.
* Shadow mode (``shadow``: a challenger): the challenger scores each classified request in a
  worker thread while the provider answers, and its would-be decision is recorded in the
  record's ``shadow`` field (:mod:`router.shadow`); it never changes what the request gets.
* Every request leaves exactly one DecisionRecord, answered or failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from router.ab import ABAssigner
from router.cache import CacheError, CacheHit, CacheKey, Encoder, SemanticCache, cache_key
from router.cascade import CRITICAL, fits_budget
from router.classifier import Predictions, TierClassifier, TierScores
from router.config import RouterConfig
from router.dispatch import Dispatcher, DispatchError, DispatchResult, DispatchStream
from router.errors import RequestFormatError, RouterError
from router.gate import (
    CheckStats,
    GateDecision,
    OperatingPoint,
    check_fails,
    decide,
    escalation_after_failure,
    resolve_point,
)
from router.normalise import message_text, normalise, request_messages
from router.overrides import DomainOverrides, OverrideMatch
from router.pii import scrub_pii
from router.pricing import estimate_tokens, expected_prices, price_matrix, prompt_chars, tier_prices
from router.protocol import cached_stream, chunk_payload
from router.scorer import ResponseScorer
from router.shadow import ShadowScorer
from router.telemetry import DecisionLog, DecisionRecord
from router.tiers import TIERS, Tier

logger = logging.getLogger(__name__)


class StreamCancelledError(RouterError):
    """The client went away before the stream ended (recorded, not raised to anyone)."""


@dataclass
class RouteRequest:
    """One chat request as the router sees it. ``params``: other OpenAI parameters."""

    messages: list[dict[str, Any]]
    model: str = "auto"
    tenant: str = "default"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    params: dict[str, Any] = field(default_factory=dict)
    latency_budget_ms: float | None = None  # from a request header; None: the config's


@dataclass
class RouteDecision:
    """What the router decided before dispatch (what ``POST /v1/route`` returns)."""

    request_id: str
    text: str  # the normalised request text
    text_hash: str
    scores: TierScores  # P(tier's answer acceptable); empty for an exact cache hit
    predicted_tier: Tier | None  # the tier the rule chose
    confidence: float | None  # P of the chosen tier
    target_tier: Tier
    point: OperatingPoint
    gate: GateDecision | None = None  # None for overrides and pins
    override: OverrideMatch | None = None
    pinned: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)
    cascade_skipped_budget_ms: float | None = None  # a cascade decision that would overrun
    cache_key: CacheKey | None = None  # None: the request is not cacheable
    cache_hit: CacheHit | None = None
    embedding: Any = None  # (d,) vector of the shared encoder pass, for storing the answer
    classifier_source: str | None = None  # "primary" / "fallback" behind a circuit breaker
    variant: str | None = None  # the A/B arm (config ``ab``) the request was assigned
    prices: TierScores = field(default_factory=dict)  # expected USD per tier
    allowed: dict[Tier, bool] = field(default_factory=dict)  # tiers the rule may choose
    prompt_tokens: float = 0.0  # estimated (router.pricing.estimate_tokens)
    neighbourhood: dict[str, Any] | None = None  # "requests like this" (the explanation)
    check: CheckStats | None = None  # what the scorer's check does here (router.gate)


@dataclass
class RouteResult:
    response: Any  # LiteLLM ModelResponse (OpenAI shape)
    decision: RouteDecision
    dispatch: DispatchResult
    record: DecisionRecord


def _served_from_cache(hit: CacheHit) -> DispatchResult:
    """A cache hit as a dispatch result: the stored answer, no tokens billed, no cost."""
    import litellm

    return DispatchResult(response=litellm.ModelResponse(**hit.response), tier=hit.tier,
                          deployment="cache", prompt_tokens=0, completion_tokens=0,
                          cost_usd=0.0, latency_ms=0.0)


@dataclass(frozen=True)
class _Shadow:
    """A challenger's scoring of one request, running beside the live path."""

    scorer: ShadowScorer
    task: asyncio.Future[dict[str, Any]]


def _finished_shadow(shadow: _Shadow, found: dict[str, Any], decision: RouteDecision,
                     result: DispatchResult | None) -> dict[str, Any]:
    tokens = (result.prompt_tokens, result.completion_tokens) if result else (None, None)
    return shadow.scorer.finish(found, decision.target_tier, *tokens)


async def _shadow_of(shadow: _Shadow | None, decision: RouteDecision | None,
                     result: DispatchResult | None) -> dict[str, Any] | None:
    """The challenger's would-be decision, priced; None when none ran."""
    if shadow is None or decision is None:
        return None
    return _finished_shadow(shadow, await shadow.task, decision, result)


def _shadow_if_done(shadow: _Shadow | None, decision: RouteDecision,
                    result: DispatchResult | None) -> dict[str, Any] | None:
    if shadow is None or not shadow.task.done() or shadow.task.cancelled():
        return None
    return _finished_shadow(shadow, shadow.task.result(), decision, result)


class RouterPolicy:
    """The request path over a config, a classifier, a dispatcher and a decision log."""

    def __init__(self, config: RouterConfig, classifier: TierClassifier, dispatcher: Dispatcher,
                 decision_log: DecisionLog | None = None,
                 scorer: ResponseScorer | None = None, cache: SemanticCache | None = None,
                 encoder: Encoder | None = None, shadow: ShadowScorer | None = None) -> None:
        """``cache``: the semantic cache; its vectors come from the classifier's own pass when
        its predictions carry embeddings, else from ``encoder`` (without either, the cache
        matches exactly only). ``shadow``: a challenger scoring each classified request beside
        the live path (never acting)."""
        self.config = config
        self.cache = cache if config.cache.enabled else None
        self.encoder = encoder
        self.classifier = classifier
        self.dispatcher = dispatcher
        self.decision_log = decision_log
        self.scorer = scorer
        # Recent dispatch latency per tier (ms, exponentially weighted): the cascade's budget
        # check. A tier not yet seen counts as fitting any budget.
        self._tier_latency_ms: dict[Tier, float] = {}
        self.overrides = DomainOverrides(config.overrides)
        self.point = resolve_point(config.gate, classifier.meta.operating_point)
        self.prices = price_matrix(tier_prices(config))
        self.ab = ABAssigner(config.ab)
        self.shadow = shadow  # may be swapped while serving (the challenger alias moved)
        # Pinnable names: the tiers, each deployment's served model and its model_info.id.
        self._pins: dict[str, Tier] = {tier: tier for tier in TIERS}
        for deployment in config.model_list:
            self._pins.setdefault(deployment.served_model, deployment.model_name)
            if deployment.model_info.id:
                self._pins.setdefault(deployment.model_info.id, deployment.model_name)

    def classifier_check_thresholds(self) -> np.ndarray:
        """The score thresholds the classifier's check statistics are kept at ((T,); empty
        without statistics)."""
        table = getattr(self.classifier, "neighbourhood", None)
        if table is None or not table.has_checks:
            return np.zeros(0)
        return np.asarray(table.check_thresholds, dtype=float)

    def model_names(self) -> list[str]:
        """What the ``model`` field accepts: ``auto``, the tiers and the configured model ids."""
        return ["auto", *self._pins]

    def decide(self, request: RouteRequest) -> RouteDecision:
        """Normalise, overrides, classifier, gate: everything before dispatch (CPU only)."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[step] = (now - clock) * 1000  # milliseconds
            clock = now

        if request.model != "auto" and request.model not in self._pins:
            raise RequestFormatError(f"unknown model {request.model!r}; use one of "
                                     f"{self.model_names()}")
        messages = request_messages(request.messages)
        text = normalise(messages)
        variant = self.ab.assign(request.tenant, request.request_id)
        point = self.point if variant is None else ABAssigner.point(variant, self.point)
        lap("normalise")
        override = None
        if request.model == "auto":
            # The full text of every turn, not the truncated classifier text.
            override = self.overrides.match(
                "\n".join(message_text(m.get("content")) for m in messages))
        lap("override")
        key = hit = embedding = source = None
        if self.cache is not None and override is None:
            key = cache_key(request.messages, request.params, request.model, request.tenant)
            hit = self.cache.lookup(key)
            lap("cache_exact")
        text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if hit is not None:  # answered from the cache: no classifier, no gate
            return RouteDecision(
                request_id=request.request_id, text=text, text_hash=text_hash, scores={},
                predicted_tier=None, confidence=None, target_tier=hit.tier,
                point=point, pinned=request.model != "auto", latency_ms=timings,
                cache_key=key, cache_hit=hit, variant=variant.name if variant else None)
        found: Predictions
        if hasattr(self.classifier, "predict_full_with_source"):  # remote, behind a breaker
            found, source = self.classifier.predict_full_with_source([text])
        else:
            found = self.classifier.predict_full([text])
        if key is not None:
            embedding = (found.embeddings[0] if found.embeddings is not None
                         else self.encoder.encode([text])[0] if self.encoder is not None
                         else None)
        scores = found.tier_scores(0)
        lap("classify")
        if key is not None and embedding is not None:
            hit = self.cache.lookup(key, embedding)
            lap("cache_semantic")
        tokens = estimate_tokens(prompt_chars(message_text(m.get("content"))
                                              for m in messages))
        prices = dict(zip(TIERS, expected_prices(
            [tokens], found.output_tokens[:1], self.prices)[0].tolist(), strict=True))
        allowed = found.tier_allowed(0)
        check = found.check_of(0)
        gate = decide(scores, prices, point, allowed, check)
        lap("gate")
        pinned = request.model != "auto"
        if hit is not None:
            target = hit.tier
        elif pinned:
            target = self._pins[request.model]
        elif override is not None:
            target = override.tier
        else:
            target = gate.target_tier
        return RouteDecision(
            request_id=request.request_id, text=text, text_hash=text_hash, scores=scores,
            predicted_tier=gate.chosen_tier, confidence=gate.confidence, target_tier=target,
            point=point, gate=None if pinned or override or hit else gate,
            override=override, pinned=pinned, latency_ms=timings, cache_key=key,
            cache_hit=hit, embedding=embedding, classifier_source=source,
            variant=variant.name if variant else None, prices=prices, allowed=allowed,
            prompt_tokens=tokens, neighbourhood=found.explanation(0), check=check)

    async def route(self, request: RouteRequest) -> RouteResult:
        """Decide, dispatch, record. Raises RequestFormatError (bad request) or DispatchError
        (no tier could answer); both are logged as a failed decision first."""
        started = time.perf_counter()
        decision: RouteDecision | None = None
        shadow: _Shadow | None = None
        try:
            decision = await asyncio.to_thread(self.decide, request)
            shadow = self._start_shadow(decision)
            steps: list[dict[str, Any]] = []
            if decision.cache_hit is not None:
                result = _served_from_cache(decision.cache_hit)
            elif self._cascades(decision, request):
                result = await self._cascade(decision, request, steps)
            else:
                result = await self._dispatch(decision.target_tier, request)
        except (RequestFormatError, DispatchError) as exc:
            self._record(request, decision, None, started, error=exc,
                         shadow=await _shadow_of(shadow, decision, None))
            raise
        record = self._finish(request, decision, result, started, cascade=steps,
                              shadow=await _shadow_of(shadow, decision, result))
        return RouteResult(result.response, decision, result, record)

    async def route_stream(self, request: RouteRequest
                           ) -> tuple[RouteDecision, AsyncIterator[dict[str, Any]]]:
        """Decide and open the stream; returns the decision (headers can go out first) and the
        OpenAI chunk payloads. Raises like :meth:`route` when nothing could be opened (a
        provider failing before its first token falls back like a plain call). The decision
        record is written once the stream ends: answered, broken mid-stream (the iterator then
        raises :class:`DispatchError`) or abandoned by the client (status ``cancelled``).
        Streams are never cascaded (an answer cannot be scored before it is sent)."""
        started = time.perf_counter()
        decision: RouteDecision | None = None
        stream: DispatchStream | None = None
        shadow: _Shadow | None = None
        include_usage = bool((request.params.get("stream_options") or {}).get("include_usage"))
        try:
            decision = await asyncio.to_thread(self.decide, request)
            shadow = self._start_shadow(decision)
            if decision.cache_hit is None:
                params = {k: v for k, v in request.params.items() if k != "stream"}
                stream = await self.dispatcher.astream(
                    decision.target_tier, request.messages, request_id=request.request_id,
                    **params)
        except (RequestFormatError, DispatchError) as exc:
            self._record(request, decision, None, started, error=exc,
                         shadow=await _shadow_of(shadow, decision, None))
            raise
        return decision, self._chunks(request, decision, stream, started, include_usage, shadow)

    async def _chunks(self, request: RouteRequest, decision: RouteDecision,
                      stream: DispatchStream | None, started: float,
                      include_usage: bool, shadow: _Shadow | None
                      ) -> AsyncIterator[dict[str, Any]]:
        if stream is None:  # a cache hit, replayed as a stream
            assert decision.cache_hit is not None
            for chunk in cached_stream(decision.cache_hit.response, include_usage=include_usage):
                yield chunk
            self._record(request, decision, _served_from_cache(decision.cache_hit), started)
            return
        try:
            async for chunk in stream.chunks():
                yield chunk_payload(chunk)
        except DispatchError as exc:  # broke mid-stream: the client has part of an answer
            self._record(request, decision, stream.result(), started, error=exc,
                         shadow=await _shadow_of(shadow, decision, stream.result()))
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # No awaiting here (the generator is closing): the shadow is kept if it is done.
            self._record(request, decision, stream.result(), started, status="cancelled",
                         error=StreamCancelledError("the client closed the stream"),
                         shadow=_shadow_if_done(shadow, decision, stream.result()))
            raise
        result = stream.result()
        self._note_latency(result)
        self._finish(request, decision, result, started,
                     shadow=await _shadow_of(shadow, decision, result))

    def _finish(self, request: RouteRequest, decision: RouteDecision, result: DispatchResult,
                started: float, cascade: list[dict[str, Any]] | None = None,
                shadow: dict[str, Any] | None = None) -> DecisionRecord:
        """Store an answered request in the cache, then record it (with the new entry's id, so
        negative feedback on this request can evict it)."""
        stored = self._store(decision, result)
        return self._record(request, decision, result, started, cascade=cascade,
                            extra={"cache_stored_entry": stored} if stored else None,
                            shadow=shadow)

    def _start_shadow(self, decision: RouteDecision) -> _Shadow | None:
        """Start the challenger on a classified request, concurrently with the dispatch (so it
        adds no latency while the provider answers); None without a challenger or for a
        cache hit (no classifier ran)."""
        scorer = self.shadow
        if scorer is None or decision.cache_hit is not None or not decision.scores:
            return None
        task = asyncio.ensure_future(asyncio.to_thread(
            scorer.score, decision.text, decision.prompt_tokens, decision.target_tier,
            decision.predicted_tier, decision.gate is not None))
        return _Shadow(scorer, task)

    def _store(self, decision: RouteDecision, result: DispatchResult) -> str | None:
        """Cache a fresh answer unless the critical tier gave it (DESIGN: never cached); after a
        semantic hit, store this request as an alias holding the served answer, so a paraphrase
        group's entries agree (the cache's ``min_support`` test counts them) and a repeat hits
        exactly. Returns the new entry id (feedback on this request evicts it too)."""
        hit = decision.cache_hit
        if (self.cache is None or decision.cache_key is None or result.tier == CRITICAL
                or (hit is not None and hit.kind == "exact")):
            return None
        response = hit.response if hit is not None else result.response.model_dump()
        try:
            return self.cache.store(decision.cache_key, response, result.tier,
                                    decision.embedding)
        except CacheError as exc:  # a cache failure must not fail an answered request
            logger.warning("request %s: answer not cached: %s", decision.request_id, exc)
            return None

    def _cascades(self, decision: RouteDecision, request: RouteRequest) -> bool:
        if (self.scorer is None or not self.config.cascade.enabled or decision.gate is None
                or decision.gate.action != "cascade" or request.params.get("stream")):
            return False  # a stream cannot be scored before it is sent
        budget = (request.latency_budget_ms if request.latency_budget_ms is not None
                  else self.config.cascade.latency_budget_ms)
        # Worst case: the first call, then the last allowed call on the frontier.
        expected = (self._tier_latency_ms.get(decision.target_tier, 0.0)
                    + self._tier_latency_ms.get(CRITICAL, 0.0))
        if not fits_budget(expected, budget):
            decision.cascade_skipped_budget_ms = budget
            return False
        return True

    async def _dispatch(self, tier: Tier, request: RouteRequest) -> DispatchResult:
        result = await self.dispatcher.acompletion(tier, request.messages,
                                                   request_id=request.request_id,
                                                   **request.params)
        self._note_latency(result)
        return result

    def _note_latency(self, result: DispatchResult) -> None:
        previous = self._tier_latency_ms.get(result.tier)
        self._tier_latency_ms[result.tier] = (result.latency_ms if previous is None
                                              else 0.8 * previous + 0.2 * result.latency_ms)

    async def _cascade(self, decision: RouteDecision, request: RouteRequest,
                       steps: list[dict[str, Any]]) -> DispatchResult:
        """Call, check, and on a failed check escalate by the rule among the tiers above the
        one that answered (:func:`router.gate.escalation_after_failure`), at most
        ``cascade.max_calls`` calls; returns the kept answer's result with the cost, latency,
        deployments and fallbacks of every call summed into it."""
        assert self.scorer is not None
        tier: Tier = decision.target_tier
        calls, total_cost, total_ms = 0, 0.0, 0.0
        tried: list[str] = []
        fallbacks: list[dict[str, str]] = []
        while True:
            result = await self._dispatch(tier, request)
            calls += 1
            total_cost += result.cost_usd
            total_ms += result.latency_ms
            tried += result.deployments_tried
            fallbacks += result.fallbacks
            choice = result.response.choices[0]
            clock = time.perf_counter()
            score = (await asyncio.to_thread(
                self.scorer.score, [decision.text], [choice.message.content or ""],
                [result.tier], [getattr(choice, "finish_reason", None)]))[0]
            threshold = (decision.gate.check_threshold
                         if calls == 1 and decision.gate is not None
                         and decision.gate.check_threshold is not None
                         else decision.point.score_threshold)
            failed = bool(check_fails(score, threshold))
            steps.append({"tier": result.tier, "score": score, "threshold": threshold,
                          "failed": failed,
                          "cost_usd": result.cost_usd,
                          "scorer_ms": (time.perf_counter() - clock) * 1000})
            if not failed or calls >= self.config.cascade.max_calls:
                break
            following = (decision.gate.fail_tier if calls == 1 and decision.gate is not None
                         and decision.gate.fail_tier is not None
                         else escalation_after_failure(decision.scores, decision.prices,
                                                       decision.point, result.tier,
                                                       decision.allowed))
            if following is None:
                break
            tier = following
        return replace(result, cost_usd=total_cost, latency_ms=total_ms,
                       deployments_tried=tried, fallbacks=fallbacks)

    def _logged_text(self, text: str) -> str | None:
        mode = self.config.decision_log.prompts
        if mode == "hash":
            return None
        return scrub_pii(text)[0] if mode == "redact" else text

    def _record(self, request: RouteRequest, decision: RouteDecision | None,
                result: DispatchResult | None, started: float,
                error: Exception | None = None,
                cascade: list[dict[str, Any]] | None = None,
                status: str | None = None,
                extra: dict[str, Any] | None = None,
                shadow: dict[str, Any] | None = None) -> DecisionRecord:
        latency = dict(decision.latency_ms) if decision else {}
        if result is not None:
            latency["dispatch"] = result.latency_ms
        latency["total"] = (time.perf_counter() - started) * 1000
        record = DecisionRecord(
            request_id=request.request_id, tenant=request.tenant,
            text_hash=decision.text_hash if decision else "",
            text=self._logged_text(decision.text) if decision else None,
            requested_model=request.model, latency_ms=latency,
            status=status or ("error" if error else "ok"),
            error=f"{type(error).__name__}: {error}" if error else None,
            model_version=self.classifier.meta.version, shadow=shadow)
        if decision is not None:
            record.variant = decision.variant
            record.scores = dict(decision.scores)
            record.predicted_tier = decision.predicted_tier
            record.confidence = decision.confidence
            record.gate_action = decision.gate.action if decision.gate else None
            record.override_rule = decision.override.rule if decision.override else None
            record.override_domain = decision.override.domain if decision.override else None
            record.pinned = decision.pinned
            record.target_tier = decision.target_tier
            record.thresholds = decision.point.as_dict()
            record.threshold_source = decision.point.source
            if decision.prices:
                record.extra["expected_cost_usd"] = decision.prices
                record.extra["prompt_tokens_estimate"] = decision.prompt_tokens
                record.extra["allowed"] = [t for t, ok in decision.allowed.items() if ok]
            if decision.neighbourhood is not None:
                record.extra["neighbourhood"] = decision.neighbourhood
            if decision.override:
                record.extra["override_matched"] = decision.override.matched
            if decision.cache_key is not None:
                hit = decision.cache_hit
                record.cache_status = hit.kind if hit is not None else "miss"
                record.cache_similarity = hit.similarity if hit is not None else None
                if hit is not None:
                    record.extra["cache_entry"] = hit.entry_id
            if decision.classifier_source is not None:
                record.extra["classifier_source"] = decision.classifier_source
            if decision.cascade_skipped_budget_ms is not None:
                record.extra["cascade_skipped_budget_ms"] = decision.cascade_skipped_budget_ms
        if cascade:
            record.extra["cascade"] = cascade
            if len(cascade) > 1:
                record.extra["escalation_reason"] = "cascade"
        if isinstance(error, DispatchError):
            record.deployments_tried = error.deployments_tried
            record.fallbacks = error.fallbacks
            record.extra["http_status"] = error.status_code
        if result is not None:
            record.deployments_tried = result.deployments_tried
            record.fallbacks = result.fallbacks
            record.final_tier = result.tier
            record.final_model = result.deployment
            record.prompt_tokens = result.prompt_tokens
            record.completion_tokens = result.completion_tokens
            record.cost_usd = result.cost_usd
        record.extra.update(extra or {})
        if self.decision_log is not None:  # queues a snapshot: the record is complete by now
            self.decision_log.record(record)
        return record
