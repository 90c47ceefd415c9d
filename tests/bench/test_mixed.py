"""The mixed workload's mixture: written-down shares, test queries only, warm cache from train."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.mixed import HIGH_STAKES_SUBJECTS, MIXTURE, draw
from workloads import load_workload


@pytest.fixture(scope="module")
def workloads() -> dict:
    return {name: load_workload(name)
            for name in ("routerbench", "mmlu", "gsm8k", "banking77", "clinc150")}


def test_the_mixture_is_drawn_as_written(workloads: dict) -> None:
    rows = draw(workloads, None, 200, seed=3, warm_per_source=50)
    counts = Counter(rows.part)
    assert counts == {part: round(200 * share) for part, share in MIXTURE.items()}
    for part, record, mapping in zip(rows.part, rows.records, rows.mapping, strict=True):
        if part == "support":
            assert ".test." in record.id or record.id.split(".")[1].endswith("test")
            assert mapping.tolist() == [0, 1, 2]
        elif part == "high_stakes":
            assert record.category in HIGH_STAKES_SUBJECTS and mapping.tolist() == [0, 2, 2]
        elif part == "mmlu":
            assert record.category not in HIGH_STAKES_SUBJECTS
    warm_ids = {r.id for r in rows.warm}
    assert len(warm_ids) == 100 and not warm_ids & {r.id for r in rows.records}
    assert all(".test." not in i and not i.split(".")[1].endswith("test") for i in warm_ids)
    # the same seed draws the same rows; test folds restrict outcome rows
    again = draw(workloads, None, 200, seed=3, warm_per_source=50)
    assert [r.id for r in again.records] == [r.id for r in rows.records]
    some = {r.id for r in workloads["gsm8k"].records[:40]}
    restricted = draw(workloads, {"gsm8k": some}, 200, seed=3, warm_per_source=50)
    assert {r.id for p, r in zip(restricted.part, restricted.records, strict=True)
            if p == "gsm8k"} <= some
