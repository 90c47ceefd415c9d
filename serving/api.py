"""The HTTP API: OpenAI's chat-completions protocol plus the router's own endpoints.

=========================  ==================================================================
POST /v1/chat/completions  answer (plain, or ``stream: true`` as server-sent events)
GET  /v1/models            ``auto``, the tiers and the pinnable model ids
POST /v1/route             the routing decision only (no LLM call, nothing logged)
POST /v1/feedback          ``{"request_id", "rating": "positive"|"negative", "comment"?}``
GET  /metrics              the router's Prometheus metrics
=========================  ==================================================================

``/healthz`` and ``/readyz`` are BentoML's (``serving/service.py`` answers them). Every
``/v1`` endpoint needs ``Authorization: Bearer <key>``; the key names the tenant (401
otherwise). Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
Routing metadata goes out in ``x-router-*`` headers and, on plain answers, in the extra
``router`` field. Domain errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.dispatch import DispatchError
from router.errors import RequestFormatError
from router.normalise import message_text, request_messages
from router.policy import RouteDecision, RouteRequest, RouterPolicy
from router.protocol import completion_payload
from router.tiers import TIERS
from router.tokens import count_prompt_tokens
from serving.runtime import Runtime
from serving.settings import hash_key, tenant_for

logger = logging.getLogger(__name__)

# Fields of the request body the router itself consumes; the rest go to the provider.
_ROUTER_FIELDS = frozenset({"messages", "model", "stream"})


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = (
            status, message, kind, code, param)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind,
                                       "param": self.param, "code": self.code}},
                            status_code=self.status, headers=self.headers)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """The standard fields of OpenAI's chat-completions request, typed as its spec types them;
    other fields pass through to the provider unchecked (providers add their own)."""

    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[dict[str, Any]] = Field(min_length=1)
    model: str = "auto"
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    metadata: dict[str, str] | None = None


def _problems(exc: ValidationError) -> tuple[str, str | None]:
    """A readable summary of a validation error and the first offending field."""
    errors = exc.errors()
    parts = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5]]
    first = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
    return "; ".join(parts), first


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    rating: str = Field(pattern="^(positive|negative)$")
    comment: str | None = Field(default=None, max_length=4000)


def decision_headers(decision: RouteDecision, model_version: str | None) -> dict[str, str]:
    hit = decision.cache_hit
    headers = {"x-router-request-id": decision.request_id,
               "x-router-tier": decision.target_tier,
               "x-router-cache": hit.kind if hit is not None else
               ("miss" if decision.cache_key is not None else "off")}
    if decision.gate is not None:
        headers["x-router-gate-action"] = decision.gate.action
    if decision.override is not None:
        headers["x-router-override"] = decision.override.rule
    if decision.confidence is not None:
        headers["x-router-confidence"] = f"{decision.confidence:.4f}"
    if model_version is not None:
        headers["x-router-model-version"] = model_version
    return headers


def decision_summary(decision: RouteDecision) -> dict[str, Any]:
    """The ``router`` field: what was decided and why (no prompt text)."""
    hit = decision.cache_hit
    return {
        "request_id": decision.request_id,
        "target_tier": decision.target_tier,
        "predicted_tier": decision.predicted_tier,
        "confidence": decision.confidence,
        "scores": dict(decision.scores),
        "gate_action": decision.gate.action if decision.gate else None,
        "override": decision.override.rule if decision.override else None,
        "pinned": decision.pinned,
        "cache": {"status": hit.kind if hit else ("miss" if decision.cache_key else "off"),
                  "similarity": hit.similarity if hit else None},
        "thresholds": decision.point.as_dict(),
        "threshold_source": decision.point.source,
        "expected_cost_usd": dict(decision.prices) or None,
        # "requests like this": the neighbourhood's per-tier record behind the choice
        "neighbourhood": decision.neighbourhood,
        "classifier_source": decision.classifier_source,
    }


def create_app(runtime: Callable[[], Runtime]) -> FastAPI:
    """The API over ``runtime()`` (called per request: the service sets it at start)."""
    app = FastAPI(title="tier-router", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    def serving(request: Request) -> tuple[Runtime, RouterPolicy, str]:
        """The runtime, its current policy and the caller's tenant (401 without a key)."""
        rt = runtime()
        if rt.policy is None:
            raise ApiError(503, "the router is still loading its models", "server_error",
                           "not_ready")
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        tenant = tenant_for(key, rt.settings.api_keys)
        if tenant is None:
            raise ApiError(401, "missing or unknown API key (send 'Authorization: Bearer "
                           "<key>')", "authentication_error", "invalid_api_key")
        if rt.rate_limiter is not None:
            wait_s = rt.rate_limiter.allow(hash_key(key or ""))
            if wait_s > 0:
                raise ApiError(429, f"rate limit of {rt.settings.rate_limit_rps:g} requests/s "
                               f"for this API key exceeded; retry in {wait_s:.2f} s",
                               "rate_limit_error", "rate_limit_exceeded",
                               headers={"retry-after": str(max(1, round(wait_s + 0.5)))})
        spent = rt.spend.exhausted(tenant) if rt.spend is not None else None
        if spent is not None:
            raise ApiError(403, f"tenant {tenant!r} has spent ${spent[0]:.4f} of its "
                           f"${spent[1]:.2f} budget for this month", "insufficient_quota",
                           "budget_exhausted")
        return rt, rt.policy, tenant

    async def body_of(request: Request, rt: Runtime) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > rt.settings.max_body_bytes:
            raise ApiError(413, f"request body is {len(raw)} bytes; the limit is "
                           f"{rt.settings.max_body_bytes}", code="body_too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def route_request(body: dict[str, Any], tenant: str, request: Request,
                      rt: Runtime, policy: RouterPolicy) -> RouteRequest:
        try:
            chat = ChatRequest.model_validate(body)
            contents = [message_text(m.get("content")) for m in request_messages(chat.messages)]
        except ValidationError as exc:
            message, param = _problems(exc)
            raise ApiError(400, f"invalid request: {message}", param=param) from None
        except RequestFormatError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        tokens = count_prompt_tokens(contents)
        if tokens > rt.settings.max_prompt_tokens:
            raise ApiError(413, f"the prompt has {tokens} tokens; the limit is "
                           f"{rt.settings.max_prompt_tokens}", param="messages",
                           code="prompt_too_long")
        budget_header = request.headers.get(policy.config.cascade.latency_budget_header)
        budget = None
        if budget_header is not None:
            try:
                budget = float(budget_header)
            except ValueError:
                raise ApiError(400, f"{policy.config.cascade.latency_budget_header} must be a "
                               f"number of milliseconds, got {budget_header!r}") from None
        params = {k: v for k, v in body.items() if k not in _ROUTER_FIELDS}
        if chat.stream:
            params["stream"] = True
        return RouteRequest(messages=chat.messages, model=chat.model, tenant=tenant,
                            params=params, latency_budget_ms=budget)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        rt, policy, tenant = serving(request)
        body = await body_of(request, rt)
        route = route_request(body, tenant, request, rt, policy)
        try:
            if route.params.get("stream"):
                decision, chunks = await policy.route_stream(route)
                return StreamingResponse(_sse(chunks, decision.request_id),
                                         media_type="text/event-stream",
                                         headers=decision_headers(decision, rt.model_version))
            result = await policy.route(route)
        except RequestFormatError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        except DispatchError as exc:
            raise ApiError(exc.status_code, str(exc),
                           "server_error" if exc.status_code >= 500 else
                           "invalid_request_error", "provider_unavailable"
                           if exc.status_code >= 500 else "provider_rejected") from None
        payload = completion_payload(result.response)
        payload["router"] = {**decision_summary(result.decision),
                             "final_tier": result.dispatch.tier,
                             "final_model": result.dispatch.deployment,
                             "cost_usd": result.dispatch.cost_usd,
                             "model_version": rt.model_version}
        headers = decision_headers(result.decision, rt.model_version)
        latency = result.record.latency_ms
        # The router's own time: everything but the provider call(s).
        headers["x-router-overhead-ms"] = (
            f"{latency.get('total', 0.0) - latency.get('dispatch', 0.0):.3f}")
        return JSONResponse(payload, headers=headers)

    @app.post("/v1/route")
    async def route_only(request: Request) -> JSONResponse:
        rt, policy, tenant = serving(request)
        route = route_request(await body_of(request, rt), tenant, request, rt, policy)
        try:
            decision = await asyncio.to_thread(policy.decide, route)
        except RequestFormatError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return JSONResponse({**decision_summary(decision), "model_version": rt.model_version},
                            headers=decision_headers(decision, rt.model_version))

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _, policy, _ = serving(request)
        data = [{"id": name, "object": "model", "created": 0,
                 "owned_by": "tier-router" if name == "auto" or name in TIERS else "provider"}
                for name in policy.model_names()]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        rt, policy, tenant = serving(request)
        try:
            given = Feedback.model_validate(await body_of(request, rt))
        except ValidationError as exc:
            raise ApiError(400, f"bad feedback: {_problems(exc)[0]}") from None
        log = rt.decision_log
        record = log.get(given.request_id) if log is not None else None
        # Another tenant's request looks exactly like an unknown one (no existence oracle).
        if record is None or record.tenant != tenant:
            raise ApiError(404, f"no request {given.request_id!r} for this API key",
                           code="unknown_request", param="request_id")
        stored = json.dumps({"rating": given.rating, "comment": given.comment})
        log.set_feedback(given.request_id, stored)
        evicted = []
        if given.rating == "negative" and policy.cache is not None:
            for key in ("cache_entry", "cache_stored_entry"):
                entry = record.extra.get(key)
                if entry and policy.cache.evict(entry):
                    evicted.append(entry)
        return JSONResponse({"request_id": given.request_id, "stored": True,
                             "cache_entries_evicted": evicted})

    @app.get("/metrics")
    async def metrics() -> Response:
        rt = runtime()
        return Response(rt.metrics.exposition(), media_type=rt.metrics.content_type)

    return app


async def _sse(chunks: AsyncIterator[dict[str, Any]], request_id: str) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI sends them; a stream that breaks mid-way ends with an
    ``error`` event (the status line has already gone out) and no ``[DONE]``."""
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
    except DispatchError as exc:
        logger.warning("request %s: stream broke: %s", request_id, exc)
        error = {"error": {"message": str(exc), "type": "server_error", "param": None,
                           "code": "stream_broken"}}
        yield f"data: {json.dumps(error)}\n\n".encode()
        return
    yield b"data: [DONE]\n\n"
