"""route(): the whole request path, top to bottom.

    normalise -> overrides -> classifier -> gate -> dispatch -> decision record

* ``model="auto"`` routes; a tier name or a configured model id *pins* the request (the
  classifier still scores it and the decision is still logged; overrides do not apply to pins).
* An override (finance / legal / medical rule) sends the request straight to its tier and is
  logged as an override, not an escalation.
* The gate's cascade: until the response scorer exists, a cascade decision is recorded as such
  and dispatched to the predicted tier.
* Every request leaves exactly one DecisionRecord, answered or failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from router.classifier import TierClassifier, TierScores
from router.config import RouterConfig
from router.dispatch import Dispatcher, DispatchError, DispatchResult
from router.errors import RequestFormatError
from router.gate import GateDecision, Thresholds, decide, resolve_thresholds
from router.normalise import message_text, normalise, request_messages
from router.overrides import DomainOverrides, OverrideMatch
from router.telemetry import DecisionLog, DecisionRecord
from router.tiers import TIERS, Tier


@dataclass
class RouteRequest:
    """One chat request as the router sees it. ``params``: other OpenAI parameters."""

    messages: list[dict[str, Any]]
    model: str = "auto"
    tenant: str = "default"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RouteDecision:
    """What the router decided before dispatch (what ``POST /v1/route`` returns)."""

    request_id: str
    text: str  # the normalised request text
    text_hash: str
    scores: TierScores
    predicted_tier: Tier
    confidence: float
    target_tier: Tier
    thresholds: Thresholds
    gate: GateDecision | None = None  # None for overrides and pins
    override: OverrideMatch | None = None
    pinned: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class RouteResult:
    response: Any  # LiteLLM ModelResponse (OpenAI shape)
    decision: RouteDecision
    dispatch: DispatchResult
    record: DecisionRecord


class RouterPolicy:
    """The request path over a config, a classifier, a dispatcher and a decision log."""

    def __init__(self, config: RouterConfig, classifier: TierClassifier, dispatcher: Dispatcher,
                 decision_log: DecisionLog | None = None) -> None:
        self.config = config
        self.classifier = classifier
        self.dispatcher = dispatcher
        self.decision_log = decision_log
        self.overrides = DomainOverrides(config.overrides)
        self.thresholds = resolve_thresholds(config.gate, classifier.meta.thresholds,
                                             classifier.meta.version)
        # Pinnable names: the tiers, each deployment's served model and its model_info.id.
        self._pins: dict[str, Tier] = {tier: tier for tier in TIERS}
        for deployment in config.model_list:
            self._pins.setdefault(deployment.served_model, deployment.model_name)
            if deployment.model_info.id:
                self._pins.setdefault(deployment.model_info.id, deployment.model_name)

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
        lap("normalise")
        override = None
        if request.model == "auto":
            # The full text of every turn, not the truncated classifier text.
            override = self.overrides.match(
                "\n".join(message_text(m.get("content")) for m in messages))
        lap("override")
        scores = self.classifier.predict([text])[0]
        lap("classify")
        gate = decide(scores, self.thresholds)
        lap("gate")
        pinned = request.model != "auto"
        if pinned:
            target = self._pins[request.model]
        elif override is not None:
            target = override.tier
        else:
            target = gate.target_tier
        return RouteDecision(
            request_id=request.request_id, text=text,
            text_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(), scores=scores,
            predicted_tier=gate.predicted_tier, confidence=gate.confidence, target_tier=target,
            thresholds=self.thresholds, gate=None if pinned or override else gate,
            override=override, pinned=pinned, latency_ms=timings)

    async def route(self, request: RouteRequest) -> RouteResult:
        """Decide, dispatch, record. Raises RequestFormatError (bad request) or DispatchError
        (no tier could answer); both are logged as a failed decision first."""
        started = time.perf_counter()
        decision: RouteDecision | None = None
        try:
            decision = await asyncio.to_thread(self.decide, request)
            result = await self.dispatcher.acompletion(
                decision.target_tier, request.messages, request_id=request.request_id,
                **request.params)
        except (RequestFormatError, DispatchError) as exc:
            self._record(request, decision, None, started, error=exc)
            raise
        record = self._record(request, decision, result, started)
        return RouteResult(result.response, decision, result, record)

    def _record(self, request: RouteRequest, decision: RouteDecision | None,
                result: DispatchResult | None, started: float,
                error: Exception | None = None) -> DecisionRecord:
        latency = dict(decision.latency_ms) if decision else {}
        if result is not None:
            latency["dispatch"] = result.latency_ms
        latency["total"] = (time.perf_counter() - started) * 1000
        record = DecisionRecord(
            request_id=request.request_id, tenant=request.tenant,
            text_hash=decision.text_hash if decision else "",
            text=decision.text if decision else None,
            requested_model=request.model, latency_ms=latency,
            status="error" if error else "ok",
            error=f"{type(error).__name__}: {error}" if error else None,
            model_version=self.classifier.meta.version)
        if decision is not None:
            record.scores = dict(decision.scores)
            record.predicted_tier = decision.predicted_tier
            record.confidence = decision.confidence
            record.gate_action = decision.gate.action if decision.gate else None
            record.override_rule = decision.override.rule if decision.override else None
            record.override_domain = decision.override.domain if decision.override else None
            record.pinned = decision.pinned
            record.target_tier = decision.target_tier
            record.thresholds = decision.thresholds.as_dict()
            record.threshold_source = decision.thresholds.source
            if decision.override:
                record.extra["override_matched"] = decision.override.matched
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
        if self.decision_log is not None:
            self.decision_log.record(record)
        return record
