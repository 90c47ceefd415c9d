"""Observe a workload through the real request path: every row sent to every tier it can use.

For each row, :meth:`router.policy.RouterPolicy.decide` runs once, alone (normalise, overrides,
classifier, gate: the router's own overhead, timed without queueing behind other requests);
then each distinct answering tier is called through the router's
:class:`router.dispatch.Dispatcher` -- LiteLLM over HTTP to the provider simulator, with its
same-tier fallbacks. The simulator's evaluation lookup gives the recorded correctness of each
answer and its modelled latency. The approaches in
:mod:`bench.approaches` are then replayed from these observations: a cascade that calls simple
then critical costs what those two calls cost here, and so on. Sending each (row, tier) once
instead of once per approach and threshold keeps a sweep of hundreds of settings affordable; the
simulator answers deterministically, so nothing is lost.

Provider latency is the simulator's *modelled* latency (run it with ``latency_scale=0`` so the
benchmark does not sleep); the router's own overhead is measured here, per request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
import numpy as np

from bench.approaches import Observations
from router.overrides import DomainOverrides
from router.policy import RouteRequest, RouterPolicy
from router.tiers import TIERS, Tier
from workloads import Workload, WorkloadRecord

logger = logging.getLogger(__name__)

# Steps of the router's own work before dispatch, as timed in RouteDecision.latency_ms.
OVERHEAD_STEPS = ("normalise", "override", "cache_exact", "classify", "cache_semantic", "gate")


class BenchError(RuntimeError):
    """The benchmark cannot run (no answering tiers, simulator unreachable...)."""


def tier_map(workload: Workload) -> np.ndarray:
    """Executed tier per tier: a tier whose recorded model is the next tier's maps up to it.

    RouteLLM data records two models; its medium tier is GPT-4 (the next tier up), so asking for
    medium really means asking critical -- at critical's price, never at a medium price.
    """
    mapping = np.arange(len(TIERS))
    for j in range(len(TIERS) - 2, -1, -1):
        if workload.tier_models.get(TIERS[j]) == workload.tier_models.get(TIERS[j + 1]):
            mapping[j] = mapping[j + 1]
    return mapping


@dataclass
class _Answer:
    cost: float
    latency_ms: float
    correct: float
    response: str


async def observe(policy: RouterPolicy, records: list[WorkloadRecord], mapping: np.ndarray,
                  simulator_url: str, *, concurrency: int = 8, tenant: str = "bench"
                  ) -> tuple[Observations, list[str], dict[int, list[str]]]:
    """Send each record to each tier that answers it (``mapping`` (n, 3): the tier answering
    row i when j is asked). Returns the observations, the normalised texts (what the response
    scorer reads as the prompt) and, per tier index, the response texts ("" where not asked).
    A tier mapped to another gets that tier's observation (same answer, same price)."""
    root = _root(simulator_url)
    overrides = DomainOverrides(policy.config.overrides)
    semaphore = asyncio.Semaphore(concurrency)
    n = len(records)
    probs = np.zeros((n, len(TIERS)))
    overhead = np.zeros(n)
    texts = [""] * n
    answers: dict[tuple[int, int], _Answer] = {}
    total = sum(len(set(row.tolist())) for row in mapping)

    for i, record in enumerate(records):  # alone, so the timings are the router's own work
        decision = policy.decide(RouteRequest(messages=record.messages(), tenant=tenant))
        probs[i] = [decision.scores[t] for t in TIERS]
        overhead[i] = sum(decision.latency_ms.get(step, 0.0) for step in OVERHEAD_STEPS)
        texts[i] = decision.text
        if (i + 1) % max(n // 5, 1) == 0:
            logger.info("decided %d of %d rows", i + 1, n)

    async with httpx.AsyncClient(timeout=30.0) as http:

        async def one(i: int, record: WorkloadRecord, j: int) -> None:
            tier: Tier = TIERS[j]
            async with semaphore:
                result = await policy.dispatcher.acompletion(
                    tier, record.messages(), request_id=f"bench-{uuid.uuid4().hex}")
                lookup = await http.get(f"{root}/eval/completions/{result.response.id}")
            if lookup.status_code != 200:
                raise BenchError(f"evaluation lookup failed for {record.id}: "
                                 f"HTTP {lookup.status_code}")
            evaluation = lookup.json()
            recorded = evaluation.get("recorded_correct")
            if result.tier != tier:
                logger.warning("%s: asked %s, answered by %s (fallback)", record.id, tier,
                               result.tier)
            answers[(i, j)] = _Answer(
                cost=result.cost_usd,
                latency_ms=float(evaluation.get("modelled_latency_ms") or 0.0),
                correct=float("nan") if recorded is None else float(bool(recorded)),
                response=result.response.choices[0].message.content or "")
            if len(answers) % max(total // 10, 1) == 0:
                logger.info("observed %d of %d (row, tier) calls", len(answers), total)

        await asyncio.gather(*(one(i, record, j) for i, record in enumerate(records)
                               for j in sorted(set(mapping[i].tolist()))))

    correct = np.full((n, len(TIERS)), np.nan)
    cost = np.zeros((n, len(TIERS)))
    latency = np.zeros((n, len(TIERS)))
    responses: dict[int, list[str]] = {j: [""] * n for j in range(len(TIERS))}
    for i in range(n):
        for j in range(len(TIERS)):
            answer = answers[(i, int(mapping[i, j]))]
            correct[i, j], cost[i, j], latency[i, j] = (answer.correct, answer.cost,
                                                        answer.latency_ms)
            if mapping[i, j] == j:
                responses[j][i] = answer.response
    overridden = np.array([overrides.match("\n".join(r.turns)) is not None for r in records])
    obs = Observations(ids=[r.id for r in records], categories=[r.category for r in records],
                       probs=probs, overridden=overridden, overhead_ms=overhead,
                       correct=correct, cost=cost, latency_ms=latency,
                       scores=np.full((n, len(TIERS)), np.nan), tier_map=mapping)
    return obs, texts, responses


def _root(url: str) -> str:
    parsed = urlparse(url)
    if not parsed.scheme or not parsed.netloc:
        raise BenchError(f"simulator URL {url!r} is not an http(s) URL")
    return f"{parsed.scheme}://{parsed.netloc}"
