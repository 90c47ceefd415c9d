"""The ``mixed`` workload: production-like traffic for the seed's table, cache off.

The mixture (``MIXTURE``, shares of requests; rows drawn with a seed from each source's test
fold when the split exists, else from its rows):

* ``support`` -- paraphrase-heavy customer-support queries: Banking77 and CLINC150 *test*
  queries, half each.
* ``mmlu``, ``routerbench``, ``gsm8k`` -- questions with recorded per-model outcomes.
* ``high_stakes`` -- MMLU professional_law / professional_medicine / professional_accounting.

How quality is counted: a question with recorded outcomes scores the recorded correctness of
the answering model. A support query has no recorded outcome; by the labeller's stated rule
(``label.intent_rule_tier``: any tier answers an intent query) every tier's answer counts as
correct.

The cache is off. Its earlier stand-in here warmed it with one canonical answer per intent and
counted a hit right when the entry's intent matched: a label vote, not what the service stores
(the providers' answers). The cache's own benchmark is rebuilt elsewhere; this table measures
the routing policy alone, every approach as in :mod:`bench.run`, broken down by part.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bench.approaches import TOP, Observations
from bench.observe import tier_map
from router.tiers import TIERS
from workloads import Workload, WorkloadRecord

logger = logging.getLogger(__name__)

MIXTURE: Mapping[str, float] = {"support": 0.40, "mmlu": 0.25, "routerbench": 0.15,
                                "gsm8k": 0.10, "high_stakes": 0.10}
HIGH_STAKES_SUBJECTS = ("professional_law", "professional_medicine", "professional_accounting")
SUPPORT_SOURCES = ("banking77", "clinc150")


@dataclass(frozen=True)
class MixedRows:
    records: list[WorkloadRecord]
    mapping: np.ndarray  # (n, 3) tier answering row i when j is asked
    part: list[str]  # which MIXTURE part each row came from


def is_test_query(record: WorkloadRecord) -> bool:
    """A support query from its data set's test split (ids like ``banking77.test.12``)."""
    return ".test." in record.id or record.id.split(".")[1].endswith("test")


def draw(workloads: Mapping[str, Workload], fold_ids: Mapping[str, set[str]] | None, n: int,
         seed: int, support_split: str = "test") -> MixedRows:
    """``n`` rows in MIXTURE's shares, shuffled with ``seed``. ``fold_ids``: per source, the
    fold's row ids (None: every row). ``support_split``: ``test`` draws support queries from the
    data sets' test splits; ``train`` from their train splits (a validation mixture)."""
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
    return MixedRows([r for _, r, _ in chosen], np.array([m for _, _, m in chosen]),
                     [p for p, _, _ in chosen])


def support_quality(obs: Observations, part: list[str]) -> None:
    """The stated rule: every tier's answer to a support query counts as correct."""
    support = np.array([p == "support" for p in part])
    obs.correct[support] = 1.0


def part_rule() -> dict[str, int]:
    """The mixed table's per-category rule, fitted on nothing: the part is the category; support
    goes to the cheapest tier (any tier answers an intent query) and every other part to the
    frontier (their own benchmarks' fitted rules would need their training rows)."""
    return {part: (0 if part == "support" else TOP) for part in MIXTURE}


__all__ = ["HIGH_STAKES_SUBJECTS", "MIXTURE", "SUPPORT_SOURCES", "MixedRows", "draw",
           "is_test_query", "part_rule", "support_quality"]
