"""Dispatch through LiteLLM: one model group per tier, several providers per group.

Within a tier, ``litellm.Router`` does what it is good at: picking a deployment, retries,
cooldowns of failing deployments, timeouts. That is the *same-tier* fallback. When every
deployment of a tier fails, this module falls back to the *next tier up* and records why; when
the critical (frontier) tier fails too, :class:`DispatchError` carries a 503.

Which deployments were tried is collected from LiteLLM's own callbacks (each call carries its
request id in ``metadata``); which one answered comes from the response. Cost per call comes from
the answering deployment's per-token prices in the config.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from router.config import Deployment, RouterConfig
from router.errors import RouterError
from router.tiers import Tier, next_tier_up

logger = logging.getLogger(__name__)
_REQUEST_KEY = "tier_router_request_id"


class DispatchError(RouterError):
    """No deployment could answer. ``status_code``: 503 when every tier tried is down, 400 when
    the provider rejected the request itself (retrying elsewhere would not help)."""

    def __init__(self, message: str, *, status_code: int = 503,
                 deployments_tried: Sequence[str] = (),
                 fallbacks: Sequence[dict[str, str]] = ()) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.deployments_tried = list(deployments_tried)
        self.fallbacks = list(fallbacks)


@dataclass
class DispatchResult:
    """One answered call. ``response`` is LiteLLM's ``ModelResponse`` (OpenAI shape)."""

    response: Any
    tier: Tier
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    deployments_tried: list[str] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Answered:
    tier: Tier
    deployment: str
    tried: list[str]
    fallbacks: list[dict[str, str]]


@dataclass
class _Opened:
    stream: Any  # LiteLLM's stream wrapper
    first: Any  # its first chunk
    rest: Any  # the async iterator it came from

    @property
    def _hidden_params(self) -> dict[str, Any]:  # who answered, as on a plain response
        return self.stream._hidden_params


class DispatchStream:
    """An opened stream: its first chunk already read. Iterate :meth:`chunks` once; afterwards
    ``prompt_tokens``/``completion_tokens``/``cost_usd`` hold the provider's usage (0 if it sent
    none) and ``content`` the whole answer. Chunks are LiteLLM ``ModelResponseStream`` objects;
    the usage-only chunk is passed on only when ``client_usage``."""

    def __init__(self, dispatcher: Dispatcher, first: Any, rest: Any, *, tier: Tier,
                 deployment: str, client_usage: bool, first_chunk_ms: float,
                 deployments_tried: list[str], fallbacks: list[dict[str, str]]) -> None:
        self._dispatcher = dispatcher
        self._first, self._rest = first, rest
        self.tier, self.deployment = tier, deployment
        self.client_usage = client_usage
        self.first_chunk_ms = first_chunk_ms
        self.deployments_tried, self.fallbacks = deployments_tried, fallbacks
        self.prompt_tokens = self.completion_tokens = 0
        self.cost_usd = 0.0
        self.content = ""
        self.finish_reason: str | None = None
        self._started = time.perf_counter() - first_chunk_ms / 1000

    def result(self) -> DispatchResult:
        """What was answered so far, as a dispatch result (``response``: the whole answer in
        OpenAI's non-streamed shape, for the cache and the record)."""
        import litellm

        response = litellm.ModelResponse(
            model=self.deployment, choices=[{"index": 0, "finish_reason": self.finish_reason
                                             or "stop", "message": {"role": "assistant",
                                                                    "content": self.content}}],
            usage={"prompt_tokens": self.prompt_tokens,
                   "completion_tokens": self.completion_tokens,
                   "total_tokens": self.prompt_tokens + self.completion_tokens})
        return DispatchResult(response=response, tier=self.tier, deployment=self.deployment,
                              prompt_tokens=self.prompt_tokens,
                              completion_tokens=self.completion_tokens, cost_usd=self.cost_usd,
                              latency_ms=(time.perf_counter() - self._started) * 1000,
                              deployments_tried=self.deployments_tried,
                              fallbacks=self.fallbacks)

    async def chunks(self) -> AsyncIterator[Any]:
        """The chunks, in order. A provider failing mid-stream raises :class:`DispatchError`
        (502) here: the client has already received part of the answer."""
        chunk: Any = self._first
        while True:
            usage = getattr(chunk, "usage", None)
            if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
                self.prompt_tokens = int(usage.prompt_tokens or 0)
                self.completion_tokens = int(usage.completion_tokens or 0)
                if self.deployment in self._dispatcher.deployments:
                    self.cost_usd = self._dispatcher.cost(self.deployment, self.prompt_tokens,
                                                          self.completion_tokens)
            for choice in getattr(chunk, "choices", None) or []:
                delta = getattr(choice, "delta", None)
                self.content += getattr(delta, "content", None) or ""
                self.finish_reason = getattr(choice, "finish_reason", None) or self.finish_reason
            if getattr(chunk, "choices", None) or self.client_usage:
                yield chunk
            try:
                chunk = await self._rest.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise DispatchError(f"the stream from {self.deployment} broke after it began: "
                                    f"{_short_reason(exc)}", status_code=502,
                                    deployments_tried=self.deployments_tried,
                                    fallbacks=self.fallbacks) from exc


class _AttemptTracker:
    """Collects LiteLLM's failure events per request id (LiteLLM calls back from its loop)."""

    def __init__(self) -> None:
        self._failures: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def start(self, request_id: str) -> None:
        with self._lock:
            self._failures[request_id] = []

    def failed(self, request_id: str, deployment: str, reason: str) -> None:
        with self._lock:
            if request_id in self._failures:
                self._failures[request_id].append((deployment, reason))

    def peek(self, request_id: str) -> set[str]:
        """The deployments that failed so far for ``request_id``."""
        with self._lock:
            return {deployment for deployment, _ in self._failures.get(request_id, [])}

    def take(self, request_id: str) -> list[tuple[str, str]]:
        with self._lock:
            return self._failures.pop(request_id, [])


_TRACKER = _AttemptTracker()
_CALLBACK_INSTALLED = False
_INSTALL_LOCK = threading.Lock()


def _install_callback() -> None:
    """Register one process-wide LiteLLM callback feeding :data:`_TRACKER` (idempotent)."""
    global _CALLBACK_INSTALLED
    with _INSTALL_LOCK:
        if _CALLBACK_INSTALLED:
            return
        import litellm
        from litellm.integrations.custom_logger import CustomLogger

        class _FailureLogger(CustomLogger):  # type: ignore[misc]
            def _record(self, kwargs: dict[str, Any]) -> None:
                params = kwargs.get("litellm_params") or {}
                request_id = (params.get("metadata") or {}).get(_REQUEST_KEY)
                deployment = (params.get("model_info") or {}).get("id") or str(kwargs.get("model"))
                if request_id:
                    reason = _short_reason(kwargs.get("exception"))
                    _TRACKER.failed(request_id, deployment, reason)

            def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                  start_time: Any, end_time: Any) -> None:
                self._record(kwargs)

            async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                              start_time: Any, end_time: Any) -> None:
                self._record(kwargs)

        litellm.callbacks = [*(litellm.callbacks or []), _FailureLogger()]
        _CALLBACK_INSTALLED = True


# LiteLLM repeats the exception type in its messages and appends routing hints; keep the cause.
_LITELLM_NOISE = re.compile(
    r"litellm\.\w+: |\b\w+(Error|Exception)( -|:) |LiteLLM: model group .*$")


def _short_reason(exc: Any) -> str:
    """``ErrorType (status): message`` without LiteLLM's repeated prefixes, <= 200 characters."""
    if exc is None:
        return "unknown error"
    text = _LITELLM_NOISE.sub("", " ".join(str(exc).split())).strip()
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({status})' if status else ''}: {text[:200]}"


def rebase_api_base(api_base: str, new_root: str) -> str:
    """``api_base`` with scheme and host replaced by ``new_root``'s, keeping its path."""
    root = urlparse(new_root)
    if root.scheme not in ("http", "https") or not root.netloc:
        raise ValueError(f"simulator URL must look like http://127.0.0.1:8900, got {new_root!r}")
    return urlparse(api_base)._replace(scheme=root.scheme, netloc=root.netloc).geturl()


class Dispatcher:
    """LiteLLM dispatch for a router config; ``acompletion(tier, messages)`` answers or raises."""

    def __init__(self, config: RouterConfig, *, api_base_override: str | None = None) -> None:
        import litellm

        _install_callback()
        model_list = config.litellm_model_list()
        self.deployments: dict[str, Deployment] = {}
        for entry, deployment in zip(model_list, config.model_list, strict=True):
            # Every deployment needs an id: logs name it, and a direct call addresses it.
            deployment_id = entry.setdefault("model_info", {}).setdefault("id", deployment.key)
            self.deployments[deployment_id] = deployment
            params = entry["litellm_params"]
            if api_base_override and params.get("api_base"):
                params["api_base"] = rebase_api_base(params["api_base"], api_base_override)
        self.model_list = model_list
        self._api_bases = {entry["model_info"]["id"]: entry["litellm_params"].get("api_base")
                           for entry in model_list}
        self._tier_ids: dict[str, list[str]] = {}
        for deployment_id, deployment in self.deployments.items():
            self._tier_ids.setdefault(deployment.model_name, []).append(deployment_id)
        settings = config.router_settings
        self._router = litellm.Router(
            model_list=model_list, num_retries=settings.num_retries, timeout=settings.timeout,
            allowed_fails=settings.allowed_fails, cooldown_time=settings.cooldown_time,
            retry_after=settings.retry_after, routing_strategy=settings.routing_strategy)

    def api_base(self, deployment_id: str) -> str | None:
        """The (possibly rebased) ``api_base`` of a deployment."""
        return self._api_bases.get(deployment_id)

    def cost(self, deployment_id: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call at the deployment's configured per-token prices."""
        params = self.deployments[deployment_id].litellm_params
        return (prompt_tokens * params.input_cost_per_token
                + completion_tokens * params.output_cost_per_token)

    async def acompletion(self, tier: Tier, messages: list[dict[str, Any]], *, request_id: str,
                          tier_fallback: bool = True, **params: Any) -> DispatchResult:
        """Call ``tier``'s model group; on a whole-tier failure try the next tier up.

        ``params``: OpenAI request parameters passed through (temperature, max_tokens...).
        Raises :class:`DispatchError` when no tier could answer (503) or the provider rejected
        the request itself (400).
        """
        params.pop("stream", None)
        started = time.perf_counter()
        response, answer = await self._first_answer(
            tier, messages, request_id, params, tier_fallback, self._router.acompletion)
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = (self.cost(answer.deployment, prompt, completion)
                if answer.deployment in self.deployments
                else float(response._hidden_params.get("response_cost") or 0.0))
        return DispatchResult(
            response=response, tier=answer.tier, deployment=answer.deployment,
            prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
            latency_ms=(time.perf_counter() - started) * 1000,
            deployments_tried=answer.tried, fallbacks=answer.fallbacks)

    async def astream(self, tier: Tier, messages: list[dict[str, Any]], *, request_id: str,
                      tier_fallback: bool = True, **params: Any) -> DispatchStream:
        """Open a stream on ``tier`` (same fallbacks as :meth:`acompletion`) and read its first
        chunk before returning: a provider failing *before* its first token falls back like a
        plain call; one failing later raises from :meth:`DispatchStream.chunks`. Usage is always
        requested from the provider (the cost needs it); ``DispatchStream.client_usage`` says
        whether the client asked for the usage chunk."""
        client_usage = bool((params.pop("stream_options", None) or {}).get("include_usage"))
        params.update(stream=True, stream_options={"include_usage": True})
        started = time.perf_counter()

        async def opened(**kwargs: Any) -> _Opened:
            stream = await self._router.acompletion(**kwargs)
            iterator = stream.__aiter__()
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration:
                raise DispatchError("the provider closed the stream before any chunk") from None
            return _Opened(stream, first, iterator)

        head, answer = await self._first_answer(
            tier, messages, request_id, params, tier_fallback, opened)
        return DispatchStream(self, head.first, head.rest, tier=answer.tier,
                              deployment=answer.deployment, client_usage=client_usage,
                              first_chunk_ms=(time.perf_counter() - started) * 1000,
                              deployments_tried=answer.tried, fallbacks=answer.fallbacks)

    async def _first_answer(self, tier: Tier, messages: list[dict[str, Any]], request_id: str,
                            params: dict[str, Any], tier_fallback: bool,
                            call: Callable[..., Awaitable[Any]]) -> tuple[Any, _Answered]:
        """Run ``call`` on ``tier``, then on each tier up while whole tiers fail. Returns what
        ``call`` returned and who answered (its ``_hidden_params`` name the deployment)."""
        import litellm

        tried: list[str] = []
        fallbacks: list[dict[str, str]] = []
        current: Tier | None = tier
        while current is not None:
            _TRACKER.start(request_id)
            try:
                response = await self._call_tier(current, messages, request_id, params, call)
            except litellm.BadRequestError as exc:
                if not isinstance(exc, litellm.ContextWindowExceededError):
                    tried += [d for d, _ in await self._failures(request_id)]
                    raise DispatchError(f"provider rejected the request: {_short_reason(exc)}",
                                        status_code=400, deployments_tried=tried,
                                        fallbacks=fallbacks) from exc
                failure = _short_reason(exc)  # a larger context may exist a tier up
            except Exception as exc:  # any provider failure means: next tier
                failure = _short_reason(exc)
            else:
                answered = response._hidden_params.get("model_id") or ""
                failures = await self._failures(request_id)
                fallbacks += [{"kind": "deployment", "from": failed, "to": answered,
                               "reason": reason} for failed, reason in failures]
                tried += [d for d, _ in failures] + [answered]
                return response, _Answered(current, answered, tried, fallbacks)
            tried += [d for d, _ in await self._failures(request_id)]
            above = next_tier_up(current) if tier_fallback else None
            logger.warning("request %s: every %s deployment failed (%s)%s", request_id, current,
                           failure, f"; falling back to {above}" if above else "")
            if above is None:
                raise DispatchError(
                    f"no deployment could answer: tier {current!r} failed ({failure})"
                    + (f" after falling back from {tier!r}" if current != tier else ""),
                    status_code=503, deployments_tried=tried, fallbacks=fallbacks)
            fallbacks.append({"kind": "tier", "from": current, "to": above,
                              "reason": f"all {current} deployments failed: {failure}"})
            current = above
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_tier(self, tier: Tier, messages: list[dict[str, Any]], request_id: str,
                         params: dict[str, Any], call: Callable[..., Awaitable[Any]]) -> Any:
        """LiteLLM's call of the tier's group, then each deployment its retries never reached.

        LiteLLM picks a deployment at random for each try, so with one provider down all its
        retries can land on that provider; a tier counts as failed only once every deployment
        of it has been tried (LiteLLM accepts a deployment id as ``model``).
        """
        metadata = {_REQUEST_KEY: request_id}
        try:
            return await call(model=tier, messages=messages, metadata=metadata, **params)
        except Exception as exc:
            import litellm

            if isinstance(exc, litellm.BadRequestError):
                raise
            last = exc
        await asyncio.sleep(0)  # let LiteLLM's failure callbacks report
        failed = _TRACKER.peek(request_id)
        for deployment in self._tier_ids[tier]:
            if deployment in failed:
                continue
            try:
                return await call(model=deployment, messages=messages, metadata=metadata,
                                  num_retries=0, **params)
            except Exception as exc:
                last = exc
        raise last

    @staticmethod
    async def _failures(request_id: str) -> list[tuple[str, str]]:
        # LiteLLM reports failures from tasks it schedules; let them run before reading.
        await asyncio.sleep(0)
        return _TRACKER.take(request_id)
