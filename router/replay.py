"""Replay a workload through the full request path and summarise cost, quality and latency.

Each record's prompt goes through :meth:`RouterPolicy.route` (overrides, classifier, gate, LiteLLM
dispatch over HTTP, decision log). Quality needs the *recorded* correctness of each answer, which
only the simulator's evaluation lookup knows (``GET <simulator>/eval/completions/<id>``): the
request path never sees it. Against real providers quality is reported as null.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

from router.dispatch import DispatchError
from router.errors import RequestFormatError
from router.policy import RouteRequest, RouterPolicy
from router.tiers import TIERS
from workloads import Workload, WorkloadRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayItem:
    """What happened to one replayed record."""

    record_id: str
    final_tier: str | None  # None when the request failed
    cost_usd: float
    latency_ms: float
    correct: bool | None  # recorded correctness of the answer; None = unknown
    escalated: bool
    overridden: bool
    fallback_kinds: tuple[str, ...]
    error: str | None = None


def select_records(workload: Workload, limit: int | None, seed: int) -> list[WorkloadRecord]:
    """``limit`` records drawn with ``seed`` (kept in file order), or all of them."""
    records = workload.records
    if limit is None or limit >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in chosen]


def _eval_root(simulator_url: str | None, api_base: str | None) -> str | None:
    url = simulator_url or api_base
    if not url:
        return None
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}"


async def replay_records(policy: RouterPolicy, records: list[WorkloadRecord], *,
                         concurrency: int = 8, simulator_url: str | None = None,
                         tenant: str = "replay") -> list[ReplayItem]:
    """Route every record (at most ``concurrency`` at a time) and look up each answer's outcome."""
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10.0) as http:

        async def one(record: WorkloadRecord) -> ReplayItem:
            request = RouteRequest(messages=record.messages(), tenant=tenant,
                                   request_id=f"replay-{uuid.uuid4().hex}")
            async with semaphore:
                try:
                    result = await policy.route(request)
                except (DispatchError, RequestFormatError) as exc:
                    return ReplayItem(record.id, None, 0.0, 0.0, None, False, False, (),
                                      error=str(exc))
            record_out = result.record
            root = _eval_root(simulator_url, policy.dispatcher.api_base(result.dispatch.deployment))
            correct = await _recorded_correct(http, root, result.response.id) if root else None
            return ReplayItem(
                record_id=record.id, final_tier=result.dispatch.tier,
                cost_usd=result.dispatch.cost_usd, latency_ms=record_out.latency_ms["total"],
                correct=correct, escalated=record_out.gate_action == "escalate",
                overridden=record_out.override_rule is not None,
                fallback_kinds=tuple(sorted({f["kind"] for f in record_out.fallbacks})))

        return list(await asyncio.gather(*(one(record) for record in records)))


async def _recorded_correct(http: httpx.AsyncClient, root: str, completion_id: str) -> bool | None:
    try:
        response = await http.get(f"{root}/eval/completions/{completion_id}")
    except httpx.HTTPError as exc:
        logger.debug("no evaluation lookup at %s: %s", root, exc)
        return None
    if response.status_code != 200:
        return None
    return response.json().get("recorded_correct")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarise(items: list[ReplayItem]) -> dict[str, Any]:
    """The replay report. ``quality``: share of requests whose answer was recorded correct,
    among those whose correctness is known, a failed request counting as not correct."""
    answered = [item for item in items if item.final_tier is not None]
    judged = [item for item in items if item.correct is not None or item.final_tier is None]
    latencies = [item.latency_ms for item in answered]

    def quality(group: list[ReplayItem]) -> float | None:
        known = [item for item in group if item.correct is not None or item.final_tier is None]
        return sum(bool(item.correct) for item in known) / len(known) if known else None

    per_tier = {}
    for tier in TIERS:
        group = [item for item in answered if item.final_tier == tier]
        per_tier[tier] = {
            "requests": len(group),
            "share": len(group) / len(items) if items else 0.0,
            "cost_per_task": sum(i.cost_usd for i in group) / len(group) if group else None,
            "quality": quality(group),
        }
    return {
        "requests": len(items),
        "failures": len(items) - len(answered),
        "cost_per_task": sum(item.cost_usd for item in items) / len(items) if items else None,
        "quality": quality(judged) if judged else None,
        "quality_known": len(judged),
        "escalation_rate": (sum(item.escalated for item in items) / len(items)
                            if items else None),
        "override_rate": sum(item.overridden for item in items) / len(items) if items else None,
        "fallbacks": {kind: sum(kind in item.fallback_kinds for item in items)
                      for kind in ("deployment", "tier")},
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "per_tier": per_tier,
        "errors": sorted({item.error for item in items if item.error})[:10],
    }
