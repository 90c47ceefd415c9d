"""``tier-router service-check``: what a running router service does with real traffic.

Sends a workload's questions (by default 200 Banking77 *test* queries: support traffic the
classifier never trained on) to a running service (``make demo``) through the official
``openai`` client, exactly as a user would, and reports which tier *answered* each one (the
response's ``router.final_tier``), the gate actions, escalations and cost; then decides the same
requests offline with the library (:meth:`router.policy.RouterPolicy.decide` on the same
classifier and config: what the benchmark replays) and reports how often the two chose the same
tier. One extra prompt (the README's demo question by default) is reported on its own.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from router.classifier import TierClassifier
from router.config import RouterConfig
from workloads import WorkloadRecord

logger = logging.getLogger(__name__)

README_PROMPT = "How do I reset my card PIN?"


@dataclass(frozen=True)
class Answered:
    """One request as the service answered it."""

    prompt: str
    target_tier: str | None  # where the router sent it first
    final_tier: str | None  # who answered
    gate_action: str | None
    cost_usd: float | None


def draw_test_queries(records: list[WorkloadRecord], limit: int,
                      seed: int) -> list[WorkloadRecord]:
    """``limit`` test-split queries (ids ``<name>.test.<i>``), drawn with ``seed``."""
    pool = [r for r in records if ".test." in r.id]
    return random.Random(seed).sample(pool, min(limit, len(pool)))


def ask(url: str, key: str, prompt: str) -> Answered:
    """One chat completion through the ``openai`` client; the router's extra field read back."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url.rstrip('/')}/v1", api_key=key, max_retries=2)
    answer = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": prompt}])
    meta = (answer.model_extra or {}).get("router") or {}
    return Answered(prompt, meta.get("target_tier"), meta.get("final_tier"),
                    meta.get("gate_action"), meta.get("cost_usd"))


def library_tiers(config: RouterConfig, classifier: TierClassifier,
                  prompts: list[str]) -> list[str]:
    """The tier the library's decision calls first for each prompt (no dispatch, no cache)."""
    from router.dispatch import Dispatcher
    from router.policy import RouteRequest, RouterPolicy

    policy = RouterPolicy(config, classifier, Dispatcher(config))
    return [policy.decide(RouteRequest(messages=[{"role": "user", "content": p}])).target_tier
            for p in prompts]


def check(url: str, key: str, records: list[WorkloadRecord], config: RouterConfig,
          classifier: TierClassifier, *, extra_prompt: str = README_PROMPT) -> dict[str, Any]:
    """The report (module docstring)."""
    answered = []
    for i, record in enumerate(records):
        answered.append(ask(url, key, record.turns[-1]))
        if (i + 1) % 50 == 0:
            logger.info("service-check: %d of %d answered", i + 1, len(records))
    demo = ask(url, key, extra_prompt)
    offline = library_tiers(config, classifier, [a.prompt for a in answered])
    n = len(answered)
    finals = Counter(a.final_tier for a in answered)
    same = sum(a.target_tier == t for a, t in zip(answered, offline, strict=True))
    return {
        "requests": n,
        "final_tier_share": {tier: finals.get(tier, 0) / n for tier in ("simple", "medium",
                                                                         "critical")},
        "answered_by_critical": finals.get("critical", 0) / n,
        "gate_actions": dict(Counter(str(a.gate_action) for a in answered)),
        "escalated": sum(a.final_tier != a.target_tier for a in answered) / n,
        "cost_per_task_usd": sum(a.cost_usd or 0.0 for a in answered) / n,
        "service_vs_library_same_tier": same / n,
        "demo_prompt": {"prompt": extra_prompt, "target_tier": demo.target_tier,
                        "final_tier": demo.final_tier, "gate_action": demo.gate_action},
        "classifier": classifier.meta.version,
    }
