"""Observe a workload through the real request path: every row sent to every tier it can use.

For each row, :meth:`router.policy.RouterPolicy.decide` runs once, alone (normalise, overrides,
classifier, gate: the router's own overhead, timed without queueing behind other requests), and
its ``RouteDecision`` gives what the decision rule reads: per-tier P(acceptable) (``scores``),
expected prices (``prices``), the allowed tiers and the override. Then each distinct answering
tier is called through the router's
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
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx
import numpy as np

from bench.approaches import Observations
from router.tiers import TIERS, Tier
from workloads import Workload, WorkloadRecord

if TYPE_CHECKING:  # the request path is imported only where a bench observes through it
    from router.policy import RouteDecision, RouterPolicy

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
    finish_reason: str | None  # the scorer reads it (a truncated answer is a weak one)


async def observe(policy: RouterPolicy, records: list[WorkloadRecord], mapping: np.ndarray,
                  simulator_url: str, *, concurrency: int = 8, tenant: str = "bench"
                  ) -> tuple[Observations, list[str], dict[int, list[str]],
                             dict[int, list[str | None]]]:
    """Send each record to each tier that answers it (``mapping`` (n, 3): the tier answering
    row i when j is asked). Returns the observations, the normalised texts (what the response
    scorer reads as the prompt) and, per tier index, the response texts ("" where not asked)
    and their finish reasons (what the request path hands the scorer beside the text).
    A tier mapped to another gets that tier's observation (same answer, same recorded cost)."""
    from router.policy import RouteRequest

    root = _root(simulator_url)
    semaphore = asyncio.Semaphore(concurrency)
    n = len(records)
    p = np.zeros((n, len(TIERS)))
    prices = np.zeros((n, len(TIERS)))
    allowed = np.zeros((n, len(TIERS)), dtype=bool)
    forced = np.full(n, -1)
    k = len(TIERS)
    thresholds = policy.classifier_check_thresholds()
    t = len(thresholds)
    check = {"check_thresholds": thresholds,
             "check_tpr": np.full((n, t, k), np.nan), "check_fpr": np.full((n, t, k), np.nan),
             "check_rwr": np.full((n, k, k), np.nan), "check_rww": np.full((n, k, k), np.nan),
             "checkable": np.zeros(n, dtype=bool)}
    overhead = np.zeros(n)
    texts = [""] * n
    answers: dict[tuple[int, int], _Answer] = {}
    total = sum(len(set(row.tolist())) for row in mapping)

    for i, record in enumerate(records):  # alone, so the timings are the router's own work
        decision = policy.decide(RouteRequest(messages=record.messages(), tenant=tenant))
        p[i], prices[i], allowed[i] = decision_row(decision, record.id)
        if decision.override is not None:
            forced[i] = TIERS.index(decision.override.tier)
        if decision.check is not None:
            stats = decision.check
            check["check_tpr"][i], check["check_fpr"][i] = stats.tpr[0], stats.fpr[0]
            check["check_rwr"][i] = stats.right_when_right[0]
            check["check_rww"][i] = stats.right_when_wrong[0]
            check["checkable"][i] = stats.checkable[0]
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
                response=result.response.choices[0].message.content or "",
                finish_reason=getattr(result.response.choices[0], "finish_reason", None))
            if len(answers) % max(total // 10, 1) == 0:
                logger.info("observed %d of %d (row, tier) calls", len(answers), total)

        await asyncio.gather(*(one(i, record, j) for i, record in enumerate(records)
                               for j in sorted(set(mapping[i].tolist()))))

    correct = np.full((n, len(TIERS)), np.nan)
    cost = np.zeros((n, len(TIERS)))
    latency = np.zeros((n, len(TIERS)))
    responses: dict[int, list[str]] = {j: [""] * n for j in range(len(TIERS))}
    finish: dict[int, list[str | None]] = {j: [None] * n for j in range(len(TIERS))}
    for i in range(n):
        for j in range(len(TIERS)):
            answer = answers[(i, int(mapping[i, j]))]
            correct[i, j], cost[i, j], latency[i, j] = (answer.correct, answer.cost,
                                                        answer.latency_ms)
            if mapping[i, j] == j:
                responses[j][i] = answer.response
                finish[j][i] = answer.finish_reason
    obs = Observations(ids=[r.id for r in records], categories=[r.category for r in records],
                       p=p, prices=prices, allowed=allowed, forced=forced,
                       overhead_ms=overhead, correct=correct, cost=cost, latency_ms=latency,
                       scores=np.full((n, len(TIERS)), np.nan), tier_map=mapping, **check)
    return obs, texts, responses, finish


def decision_row(decision: RouteDecision, row_id: str
                 ) -> tuple[list[float], list[float], list[bool]]:
    """A decision's per-tier P(acceptable), expected USD and allowed flags, TIERS order.

    An override still carries them (the policy runs the classifier and prices every request it
    does not answer from the cache), so the no-override variants can be replayed; a decision
    without them (an exact cache hit) cannot be benchmarked -- the bench's policy has no cache.
    """
    missing = [what for what, values in (("scores", decision.scores),
                                         ("prices", decision.prices),
                                         ("allowed", decision.allowed))
               if any(tier not in values for tier in TIERS)]
    if missing:
        raise BenchError(f"{row_id}: the decision lacks {missing} (answered from a cache?); "
                         "the bench observes through a policy without a cache")
    return ([float(decision.scores[t]) for t in TIERS],
            [float(decision.prices[t]) for t in TIERS],
            [bool(decision.allowed[t]) for t in TIERS])


def _root(url: str) -> str:
    parsed = urlparse(url)
    if not parsed.scheme or not parsed.netloc:
        raise BenchError(f"simulator URL {url!r} is not an http(s) URL")
    return f"{parsed.scheme}://{parsed.netloc}"
