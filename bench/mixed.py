"""The ``mixed`` workload: production-like traffic for the seed's table, with the cache at work.

The mixture (``MIXTURE``, shares of requests; rows drawn with a seed from each source's test
fold when the split exists, else from its rows):

* ``support`` -- paraphrase-heavy customer-support queries: Banking77 and CLINC150 *test*
  queries, half each. The cache starts warm with their *training* queries, each stored with its
  intent's canonical answer (yesterday's traffic); cache warming costs nothing in the table.
* ``mmlu``, ``routerbench``, ``gsm8k`` -- questions with recorded per-model outcomes.
* ``high_stakes`` -- MMLU professional_law / professional_medicine / professional_accounting.

How quality is counted: a question with recorded outcomes scores the recorded correctness of
the answering model. A support query has no recorded outcome; by the labeller's stated rule
(``label.intent_rule_tier``: any tier answers an intent query) every tier's answer counts as
correct, and a cache hit counts as correct only when the cached entry's intent is the query's
intent -- a false hit is a wrong answer. Exact repeats of an outcome question served from the
cache score that question's answer; a semantic hit on another question scores as wrong.

Only ``hybrid`` has the cache; the other approaches are as in :mod:`bench.run`. The cache's
hits are computed once, at the hybrid's operating point, and held fixed along its sweep.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.approaches import CacheServe, HybridKnobs, Observations, hybrid
from bench.observe import tier_map
from router.cache import Encoder, SemanticCache, cache_key
from router.normalise import normalise, request_messages
from router.tiers import TIERS
from workloads import Workload, WorkloadRecord

logger = logging.getLogger(__name__)

MIXTURE: Mapping[str, float] = {"support": 0.40, "mmlu": 0.25, "routerbench": 0.15,
                                "gsm8k": 0.10, "high_stakes": 0.10}
HIGH_STAKES_SUBJECTS = ("professional_law", "professional_medicine", "professional_accounting")
SUPPORT_SOURCES = ("banking77", "clinc150")
TENANT = "bench-mixed"


@dataclass(frozen=True)
class MixedRows:
    records: list[WorkloadRecord]
    mapping: np.ndarray  # (n, 3) tier answering row i when j is asked
    part: list[str]  # which MIXTURE part each row came from
    warm: list[WorkloadRecord]  # support training queries the cache starts with


def is_test_query(record: WorkloadRecord) -> bool:
    """A support query from its data set's test split (ids like ``banking77.test.12``)."""
    return ".test." in record.id or record.id.split(".")[1].endswith("test")


def draw(workloads: Mapping[str, Workload], fold_ids: Mapping[str, set[str]] | None, n: int,
         seed: int, warm_per_source: int = 3000, support_split: str = "test") -> MixedRows:
    """``n`` rows in MIXTURE's shares, shuffled with ``seed``. ``fold_ids``: per source, the
    fold's row ids (None: every row). ``support_split``: ``test`` draws support queries from the
    data sets' test splits; ``train`` from their train splits (a validation mixture), never the
    ones the cache is warmed with."""
    rng = random.Random(seed)

    def pool(source: str, keep=lambda r: True) -> list[WorkloadRecord]:
        records = [r for r in workloads[source].records if keep(r)]
        if fold_ids and fold_ids.get(source):
            records = [r for r in records if r.id in fold_ids[source]]
        return records

    chosen: list[tuple[str, WorkloadRecord, list[int]]] = []
    for part, share in MIXTURE.items():
        count = round(n * share)
        if part == "support":
            for k, source in enumerate(SUPPORT_SOURCES):
                candidates = [r for r in workloads[source].records
                              if is_test_query(r) == (support_split == "test")]
                take = count // 2 + (count % 2 if k == 0 else 0)
                chosen += [(part, r, list(range(len(TIERS))))
                           for r in rng.sample(candidates, min(take, len(candidates)))]
            continue
        source = "mmlu" if part == "high_stakes" else part
        keep = ((lambda r: r.category in HIGH_STAKES_SUBJECTS) if part == "high_stakes"
                else (lambda r: r.category not in HIGH_STAKES_SUBJECTS) if part == "mmlu"
                else (lambda r: True))
        candidates = [r for r in pool(source, keep) if r.outcomes]
        row = tier_map(workloads[source]).tolist()
        chosen += [(part, r, row) for r in rng.sample(candidates, min(count, len(candidates)))]
    rng.shuffle(chosen)
    warm: list[WorkloadRecord] = []
    asked = {r.id for _, r, _ in chosen}
    for source in SUPPORT_SOURCES:
        training = [r for r in workloads[source].records
                    if not is_test_query(r) and r.category != "oos" and r.id not in asked]
        warm += rng.sample(training, min(warm_per_source, len(training)))
    return MixedRows([r for _, r, _ in chosen], np.array([m for _, _, m in chosen]),
                     [p for p, _, _ in chosen], warm)


def support_quality(obs: Observations, part: list[str]) -> None:
    """The stated rule: every tier's answer to a support query counts as correct."""
    support = np.array([p == "support" for p in part])
    obs.correct[support] = 1.0


def _text(record: WorkloadRecord) -> str:
    """What the request path embeds: the classifier's normalised request text."""
    return normalise(request_messages(record.messages()))


def canonical_answer(intent: str) -> dict[str, Any]:
    """The stored answer of a warm entry: one per intent, so equal intents share an answer."""
    return _answer(f"canonical answer for {intent}")


def _answer(text: str) -> dict[str, Any]:
    return {"id": f"bench-{abs(hash(text))}", "object": "chat.completion", "created": 0,
            "model": "bench", "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                           "message": {"role": "assistant", "refusal": None,
                                                       "content": f"[{text}]"}}]}


def cache_serve(obs: Observations, rows: MixedRows, cache: SemanticCache, encoder: Encoder,
                knobs: HybridKnobs) -> tuple[CacheServe, dict[str, Any]]:
    """Run the real cache over the rows in order, in front of the hybrid at ``knobs``.

    Warm entries first; then each row: exact lookup, else semantic lookup with its embedding;
    a semantic hit is stored as an alias of the served answer (as :mod:`router.policy` does); a
    miss is answered by the hybrid and stored when cacheable (not overridden, not answered by
    the critical tier -- DESIGN's rule). Returns the hits and counts.
    """
    warm_keys = [cache_key(r.messages(), {}, "auto", TENANT) for r in rows.warm]
    warm_vectors = encoder.encode([_text(r) for r in rows.warm])
    entries = cache.store_many(warm_keys, [canonical_answer(r.category) for r in rows.warm],
                               [TIERS[0]] * len(rows.warm), warm_vectors)
    # entry id -> ("intent", intent) for warm entries, ("row", row id) for answered rows
    source_of = {entry: ("intent", r.category) for entry, r in zip(entries, rows.warm,
                                                                   strict=True)}
    base = hybrid(obs, knobs)
    final_critical = base.frontier > 0
    n = len(obs)
    hit = np.zeros(n, bool)
    correct = np.zeros(n)
    kinds = {"exact": 0, "semantic": 0, "false": 0}
    for i, record in enumerate(rows.records):
        key = cache_key(record.messages(), {}, "auto", TENANT)
        found = cache.lookup(key)
        vector = None
        if found is None:
            vector = encoder.encode([_text(record)])[0]
            found = cache.lookup(key, vector)
        if found is not None:
            hit[i] = True
            kind, what = source_of.get(found.entry_id, ("row", ""))
            right = (what == record.category if kind == "intent"
                     else what == record.id and bool(base.correct[i]))
            correct[i] = float(right)
            kinds[found.kind] += 1
            kinds["false"] += int(not right)
            if found.kind == "semantic":  # the request path stores the paraphrase as an alias
                alias = cache.store(key, found.response, found.tier, vector)
                source_of[alias] = source_of.get(found.entry_id, ("row", ""))
            continue
        if not obs.overridden[i] and not final_critical[i]:
            # A stand-in for the answer the hybrid got: one distinct answer per question, as
            # real answers to different questions are (the agreement test compares answers).
            entry = cache.store(key, _answer(f"answer to {record.id}"), TIERS[0], vector)
            source_of[entry] = ("row", record.id)
    return CacheServe(hit, correct), {"warm_entries": len(rows.warm), **kinds,
                                      "hit_rate": float(hit.mean())}
