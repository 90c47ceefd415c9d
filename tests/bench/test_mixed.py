"""The mixed workload: the mixture as written down, test queries only, and the table at the
stored point with the cache off, broken down by part."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

import bench.main
from bench.approaches import Observations
from bench.mixed import HIGH_STAKES_SUBJECTS, MIXTURE, draw, part_rule
from bench.report import render
from bench.run import BenchSettings, CategoryRules, evaluate
from router.config import load_config
from router.gate import OperatingPoint
from tests.conftest import CONFIG_PATH
from workloads import load_workload

POINT = OperatingPoint(price_weight=10.0, trust=0.9, escalate=0.5, score_threshold=0.5,
                       source="model:test")


@pytest.fixture(scope="module")
def workloads() -> dict:
    return {name: load_workload(name)
            for name in ("routerbench", "mmlu", "gsm8k", "banking77", "clinc150")}


def test_the_mixture_is_drawn_as_written(workloads: dict) -> None:
    rows = draw(workloads, None, 200, seed=3)
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
    assert not hasattr(rows, "warm")  # no cache warming: the cache is off in this table
    # the same seed draws the same rows; test folds restrict outcome rows
    again = draw(workloads, None, 200, seed=3)
    assert [r.id for r in again.records] == [r.id for r in rows.records]
    some = {r.id for r in workloads["gsm8k"].records[:40]}
    restricted = draw(workloads, {"gsm8k": some}, 200, seed=3)
    assert {r.id for p, r in zip(restricted.part, restricted.records, strict=True)
            if p == "gsm8k"} <= some
    # a validation mixture draws support queries from the train splits
    train = draw(workloads, None, 50, seed=4, support_split="train")
    assert all(".test." not in r.id and not r.id.split(".")[1].endswith("test")
               for p, r in zip(train.part, train.records, strict=True) if p == "support")


def _parts_obs(parts: list[str], mapping: np.ndarray) -> Observations:
    """One row per part: support (three tiers) routes simple; mmlu (two tiers) cascades on
    simple and fails its check -> critical (an escalation); high_stakes is overridden to
    critical (not an escalation); gsm8k and routerbench route simple."""
    n = len(parts)
    p = np.tile([0.95, 0.5, 0.6], (n, 1))
    scores = np.full((n, 3), 0.9)
    forced = np.full(n, -1)
    for i, part in enumerate(parts):
        if part == "mmlu":
            p[i] = [0.7, 0.2, 0.3]
            scores[i, 0] = 0.1
        if part == "high_stakes":
            forced[i] = 2
    return Observations(
        ids=[f"r{i}" for i in range(n)], categories=list(parts), p=p,
        prices=np.tile([0.001, 0.003, 0.02], (n, 1)), allowed=np.ones((n, 3), bool),
        forced=forced, overhead_ms=np.full(n, 5.0), correct=np.ones((n, 3)),
        cost=np.tile([1.0, 3.0, 20.0], (n, 1)), latency_ms=np.tile([100.0, 300.0, 1000.0],
                                                                   (n, 1)),
        scores=scores, tier_map=mapping)


def test_mixed_table_by_part_at_the_stored_point() -> None:
    parts = ["support", "support", "mmlu", "high_stakes", "gsm8k", "routerbench"]
    mapping = np.array([[0, 1, 2], [0, 1, 2], [0, 2, 2], [0, 2, 2], [0, 2, 2], [0, 1, 2]])
    obs = _parts_obs(parts, mapping)
    rule = part_rule()
    report = evaluate(obs, BenchSettings(point=POINT, max_calls=2, bootstrap=20),
                      category_rules=CategoryRules([rule], rule, 0.0), groups=parts)
    hybrid = report["by_group"]["hybrid"]
    # by hand: mmlu 1 + 20 (escalated), high_stakes 20 (override, no escalation), others 1
    assert hybrid["mmlu"]["cost_per_task"] == 21.0 and hybrid["mmlu"]["escalation_rate"] == 1.0
    assert hybrid["high_stakes"]["cost_per_task"] == 20.0
    assert hybrid["high_stakes"]["escalation_rate"] == 0.0
    assert hybrid["support"] == {"rows": 2, "cost_per_task": 1.0, "quality": 1.0,
                                 "escalation_rate": 0.0, "frontier_call_share": 0.0,
                                 "p95_latency_ms": 105.0}
    assert report["approaches"]["hybrid"]["escalation_rate"] == pytest.approx(1 / 6)
    assert report["approaches"]["hybrid"]["cost_per_task"] == pytest.approx(45 / 6)
    assert report["by_group"]["frontier_only"]["support"]["cost_per_task"] == 20.0
    # the per-part rule: support to the cheapest tier, every other part to the frontier
    assert report["approaches"]["per_category_mix"]["cost_per_task"] == pytest.approx(82 / 6)
    # the targets, judged at the stored point: 7.5 vs 20 per task is 62.5% cheaper (< 65%);
    # p95 of (105, 105, 105, 105, 1005, 1105) is 1080 ms vs frontier-only's 1005 ms
    text = render({"mixed": report})
    assert "| mixed | stored point, cache off: >= 65% cheaper than frontier-only | **no** | " \
        "62.5% cheaper |" in text
    assert "| mixed | quality >= frontier-only's - 0.02 | yes | 1.000 vs 1.000 |" in text
    assert "| mixed | escalation rate <= 5% | **no** | 16.7% (support 0.0%, mmlu 100.0%, " \
        "routerbench 0.0%, gsm8k 0.0%, high_stakes 0.0%) |" in text
    assert "| mixed | p95 <= 0.75x frontier-only's | **no** | 1080 ms vs 1005 ms (1.07x) |" in text
    assert "| mmlu | 1 | $21000.000e-3 | 1.000 | 1.000 | 100.0% | 100.0% |" in text  # by part


def test_mixed_bench_runs_with_the_cache_off(workloads: dict, monkeypatch) -> None:
    """run_mixed_bench end to end with the request path stubbed (observations made up per
    drawn row): no cache anywhere, the stored point, escalation per part in the report."""
    def observed(policy, scorer, records, mapping, url, concurrency, path):
        parts = ["mmlu" if m.tolist() == [0, 2, 2] else "support" for m in mapping]
        return _parts_obs(parts, mapping), 0.0

    monkeypatch.setattr(bench.main, "_policy", lambda *a: SimpleNamespace(point=POINT))
    monkeypatch.setattr(bench.main, "_observed", observed)
    model = SimpleNamespace(meta=SimpleNamespace(version="v"))
    report = bench.main.run_mixed_bench(workloads, None, 40, load_config(CONFIG_PATH), model,
                                        model, "http://127.0.0.1:1", bootstrap=20)
    assert report["cache"] == "off" and "cache_hit_rate" not in report["approaches"]["hybrid"]
    assert report["threshold_source"] == "model:test"
    assert report["point"]["price_weight"] == POINT.price_weight
    assert set(report["by_group"]["hybrid"]) == set(MIXTURE)
    assert report["validation"].startswith("none")
    assert report["curve_protocol"].startswith("no validation rows")


def test_the_bench_policy_has_no_cache() -> None:
    from router.classifier import load_classifier
    from router.scorer import load_scorer

    config = load_config(CONFIG_PATH)
    assert config.cache.enabled  # the product config has one; the bench must not use it
    policy = bench.main._policy(config, load_classifier("fixed:simple"),
                                load_scorer("fixed:0.4"), "http://127.0.0.1:1")
    assert policy.cache is None and policy.point.source == "config"
