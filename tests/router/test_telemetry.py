"""DecisionLog and RouterMetrics against real SQLite files and a real throwaway PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, inspect

from router.telemetry import (
    DecisionLog,
    DecisionRecord,
    RouterMetrics,
    hash_text,
)
from tests.router.pg import PostgresServer, fresh_pg_url, sqlite_url

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def full_record(n: int = 0, **changes: Any) -> DecisionRecord:
    """A record with every field set, shaped like the request path writes it (router/policy.py:
    per-tier P(acceptable), the operating point, expected prices, the neighbourhood, cascade
    steps); ``n`` makes request_id and text_hash unique."""
    rec = DecisionRecord(
        request_id=f"req-{n:05d}", tenant="acme", text_hash=hash_text(f"question {n}"),
        requested_model="auto", created_at=T0 + timedelta(seconds=n, microseconds=123_456),
        # each tier's own P(acceptable): not a distribution, need not sum to 1
        scores={"simple": 0.125, "medium": 0.6, "critical": 0.875}, predicted_tier="medium",
        confidence=0.6, gate_action="cascade", override_rule=None, override_domain=None,
        pinned=False, target_tier="medium",
        thresholds={"price_weight": 1000.0, "trust": 0.8, "escalate": 0.5,
                    "score_threshold": 0.55, "escalation_weight": 0.0},
        threshold_source="model:v3",
        deployments_tried=["medium-a", "medium-b", "critical-a"],
        fallbacks=[{"kind": "deployment", "from": "medium-a", "to": "medium-b", "reason": "429"},
                   {"kind": "tier", "from": "medium", "to": "critical", "reason": "low score"}],
        final_tier="critical", final_model="critical-a", prompt_tokens=812,
        completion_tokens=97, cost_usd=0.011_03,
        latency_ms={"normalise": 0.31, "override": 0.05, "classify": 11.7, "gate": 0.02,
                    "dispatch": 1_480.5, "total": 1_493.1},
        status="ok", error=None, model_version="v3", cache_status="miss",
        cache_similarity=0.912_345_678_9, feedback=None,
        extra={"escalation_reason": "cascade", "ab": {"variant": "b", "weights": [1, 2.5]},
               "expected_cost_usd": {"simple": 3.905e-05, "medium": 4.97e-05,
                                     "critical": 0.001_99},
               "prompt_tokens_estimate": 203.0, "allowed": ["medium", "critical"],
               "neighbourhood": {"cluster": 7, "rows": 1204, "checkable": True,
                                 "tiers": {"simple": {"recorded": 0, "right": None},
                                           "medium": {"recorded": 1204, "right": 0.5831},
                                           "critical": {"recorded": 1204, "right": 0.9302}}},
               "cascade": [{"tier": "medium", "score": 0.21, "threshold": 0.55, "failed": True,
                            "cost_usd": 0.000_21, "scorer_ms": 3.2},
                           {"tier": "critical", "score": None, "threshold": 0.55,
                            "failed": False, "cost_usd": 0.010_82, "scorer_ms": 2.9}]},
        variant="escalate-0.65",
        shadow={"model_version": "v4", "predicted_tier": "simple", "confidence": 0.71,
                "gate_action": "route", "target_tier": "simple", "agrees": False,
                "same_prediction": False, "est_cost_usd": 0.000_11, "live_est_cost_usd": 0.0035,
                "scores": {"simple": 0.71, "medium": 0.8, "critical": 0.93}})
    return dataclasses.replace(rec, **changes)


@pytest.fixture
def log(db_url: str, spill: Path) -> Iterator[DecisionLog]:
    with DecisionLog(db_url, spill_path=spill) as decision_log:
        yield decision_log


def spilled_ids(spill: Path) -> list[str]:
    if not spill.exists():
        return []
    return [json.loads(line)["request_id"] for line in spill.read_text().splitlines() if line]


def samples(metrics: RouterMetrics) -> Samples:
    """{(sample name, sorted labels): value} of the metrics' exposition."""
    text = metrics.exposition().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# -- records and the database ----------------------------------------------------------------


def test_record_to_row_from_row_is_lossless() -> None:
    rec = full_record()
    assert DecisionRecord.from_row(rec.to_row()) == rec
    row = rec.to_row()
    row["scores"]["simple"] = 1.0  # a deep copy: the record is not changed
    row["shadow"]["scores"]["simple"] = 1.0
    row["extra"]["neighbourhood"]["tiers"]["medium"]["right"] = 0.0
    row["thresholds"]["trust"] = 0.1
    assert rec.scores["simple"] == 0.125
    assert rec.extra["neighbourhood"]["tiers"]["medium"]["right"] == 0.5831
    assert rec.thresholds["trust"] == 0.8
    assert rec.shadow is not None and rec.shadow["scores"]["simple"] == 0.71
    minimal = DecisionRecord(request_id="r", tenant="t", text_hash="h", requested_model="auto")
    assert minimal.created_at.tzinfo is not None
    assert minimal.to_row()["shadow"] is None and minimal.to_row()["variant"] is None
    assert DecisionRecord.from_row({**minimal.to_row(), "id": 7, "unknown_column": 1}) == minimal
    # A NULL shadow stays None (it is optional, unlike the other JSON fields).
    assert DecisionRecord.from_row({**rec.to_row(), "shadow": None}).shadow is None
    # A spill line written before variant and shadow existed still reads.
    old_line = json.loads(json.dumps({k: v for k, v in rec.to_row().items()
                                      if k not in ("variant", "shadow")}, default=str))
    assert DecisionRecord.from_row(old_line) == dataclasses.replace(rec, variant=None,
                                                                     shadow=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        DecisionRecord(request_id="r", tenant="t", text_hash="h", requested_model="auto",
                       created_at=datetime(2025, 1, 1))


def test_full_record_round_trips_through_the_database(log: DecisionLog) -> None:
    rec = full_record()
    minimal = DecisionRecord(request_id="minimal", tenant="acme", text_hash=hash_text("x"),
                             requested_model="simple", created_at=T0 + timedelta(hours=1))
    # Stored in UTC, read back as the same instant, tz-aware.
    berlin = full_record(1, created_at=datetime(2025, 3, 1, 14, 30,
                                                tzinfo=timezone(timedelta(hours=2))))
    log.record(rec)
    log.record(minimal)
    log.record(berlin)
    rec_copy = full_record()
    rec.scores["simple"] = 0.99  # after record(): not what gets written
    log.flush()
    assert log.count() == 3
    assert log.read() == [rec_copy, berlin, minimal]
    for stored in log.read():
        assert stored.created_at.utcoffset() == timedelta(0)
    assert log.read()[1].created_at == datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


def test_read_filters_by_time_and_tenant(log: DecisionLog) -> None:
    records = [full_record(n, tenant="acme" if n % 2 else "globex",
                           created_at=T0 + timedelta(minutes=n)) for n in range(10)]
    for rec in reversed(records):
        log.record(rec)
    log.flush()
    assert log.count() == 10
    assert log.read() == records  # ordered by created_at, not by insertion
    window = log.read(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=7))
    assert [r.request_id for r in window] == [f"req-{n:05d}" for n in (3, 4, 5, 6)]
    acme = log.read(tenant="acme", since=T0 + timedelta(minutes=4))
    assert [r.request_id for r in acme] == [f"req-{n:05d}" for n in (5, 7, 9)]
    # Bounds in another zone mean the same instants.
    plus_one = timezone(timedelta(hours=1))
    assert log.read(since=(T0 + timedelta(minutes=8)).astimezone(plus_one)) == records[8:]
    with pytest.raises(ValueError, match="timezone-aware"):
        log.read(since=datetime(2025, 1, 1))


def test_1000_records_from_8_threads_are_all_written(log: DecisionLog) -> None:
    start = threading.Barrier(8)

    def producer(worker: int) -> None:
        start.wait()
        for i in range(125):
            log.record(full_record(worker * 1000 + i))

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.flush()
    assert log.count() == 1000
    assert len({r.request_id for r in log.read()}) == 1000


def test_duplicate_request_id_spills_only_the_duplicate(log: DecisionLog, spill: Path) -> None:
    metrics = RouterMetrics()
    log.metrics = metrics
    # One batch: the duplicate fails the batch insert, the row-by-row retry keeps the others.
    for rec in (full_record(1), full_record(2), full_record(1, tenant="impostor"),
                full_record(3)):
        log.record(rec)
    log.flush()
    assert log.count() == 3
    assert {r.request_id: r.tenant for r in log.read()} == {
        "req-00001": "acme", "req-00002": "acme", "req-00003": "acme"}
    assert spilled_ids(spill) == ["req-00001"]
    assert json.loads(spill.read_text())["tenant"] == "impostor"
    # Against an existing row, in a later batch.
    log.record(full_record(2, tenant="impostor"))
    log.record(full_record(4))
    # The very same record again (a retried write that had landed) is not a conflict.
    log.record(full_record(3))
    log.flush()
    assert log.count() == 4
    assert spilled_ids(spill) == ["req-00001", "req-00002"]
    assert samples(metrics)[("tier_router_decision_log_spilled_total", ())] == 2
    # Recovery keeps what the database still refuses.
    assert log.recover_spill() == 0
    assert spilled_ids(spill) == ["req-00001", "req-00002"]


def test_set_feedback(log: DecisionLog) -> None:
    log.record(full_record(1))
    log.record(full_record(2))
    # No flush: set_feedback flushes so a just-recorded request takes feedback.
    assert log.set_feedback("req-00002", "thumbs_down") is True
    assert log.set_feedback("no-such-request", "thumbs_up") is False
    assert [r.feedback for r in log.read()] == [None, "thumbs_down"]


def test_sqlite_file_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///nested/dir/decisions.sqlite"
    with DecisionLog(url) as log:
        assert log.spill_path == tmp_path / "var" / "decisions.spill.jsonl"
        assert log.count() == 0
    assert (tmp_path / "nested" / "dir" / "decisions.sqlite").is_file()
    with sqlite3.connect(tmp_path / "nested" / "dir" / "decisions.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    engine = create_engine(url)
    indexes = {tuple(ix["column_names"]): ix["unique"]
               for ix in inspect(engine).get_indexes("decisions")}
    engine.dispose()
    assert indexes == {("request_id",): True, ("created_at",): False, ("tenant",): False,
                       ("variant",): False}


def test_in_memory_sqlite_is_shared_with_the_writer(spill: Path) -> None:
    with DecisionLog("sqlite://", spill_path=spill) as log:
        log.record(full_record(1))
        log.flush()
        assert log.read() == [full_record(1)]


def test_close_is_idempotent_and_later_records_are_spilled(tmp_path: Path, spill: Path) -> None:
    log = DecisionLog(sqlite_url(tmp_path), spill_path=spill, flush_interval_s=5.0)
    log.record(full_record(1))
    log.close()  # drains without waiting out flush_interval_s
    log.close()
    log.flush()
    log.record(full_record(2))
    assert spilled_ids(spill) == ["req-00002"]
    with DecisionLog(sqlite_url(tmp_path), spill_path=spill) as reopened:  # recovers at start
        assert [r.request_id for r in reopened.read()] == ["req-00001", "req-00002"]
    assert spill.read_text() == ""


# -- an unavailable database -----------------------------------------------------------------


def test_record_never_blocks_and_nothing_is_lost_while_sqlite_is_locked(
        tmp_path: Path, spill: Path) -> None:
    # ?timeout=: SQLite's busy wait per try, 50 ms instead of 5 s, keeps the test short.
    url = sqlite_url(tmp_path, "?timeout=0.05")
    metrics = RouterMetrics()
    log = DecisionLog(url, metrics=metrics, spill_path=spill, max_retries=2)
    locker = sqlite3.connect(tmp_path / "var" / "decisions.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        first = [full_record(n) for n in range(30)]
        started = time.perf_counter()
        for rec in first:
            log.record(rec)
        assert time.perf_counter() - started < 0.25  # seconds, for 30 calls
        log.flush(timeout_s=10)
        assert log.count() == 0  # WAL: reading is not blocked
        assert spilled_ids(spill) == [r.request_id for r in first]
        values = samples(metrics)
        assert values[("tier_router_decision_log_spilled_total", ())] == 30
        assert values[("tier_router_decision_log_errors_total", ())] == 3  # 1 try + 2 retries
    finally:
        locker.execute("ROLLBACK")
    assert log.recover_spill() == 30
    assert log.read() == first
    assert spill.read_text() == ""

    # A second outage, this time closing the log: close() spills what it cannot write, and a
    # new log on the same URL recovers it at start.
    locker.execute("BEGIN EXCLUSIVE")
    second = [full_record(n) for n in range(30, 50)]
    for rec in second:
        log.record(rec)
    log.close()
    locker.execute("ROLLBACK")
    locker.close()
    assert spilled_ids(spill) == [r.request_id for r in second]
    with DecisionLog(url, spill_path=spill) as reopened:
        assert reopened.read() == first + second
    assert spill.read_text() == ""


def test_flush_times_out_while_the_database_is_busy(tmp_path: Path, spill: Path) -> None:
    url = sqlite_url(tmp_path, "?timeout=0.2")
    with DecisionLog(url, spill_path=spill, max_retries=2) as log:
        locker = sqlite3.connect(tmp_path / "var" / "decisions.sqlite", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        log.record(full_record(1))
        with pytest.raises(TimeoutError):
            log.flush(timeout_s=0.05)
        locker.execute("ROLLBACK")
        locker.close()
        log.flush()  # a retry gets through
        assert log.count() == 1
    assert not spill.exists()


def test_postgres_outage_spills_then_recovers_by_itself(
        postgres_server: PostgresServer, spill: Path) -> None:
    metrics = RouterMetrics()
    log = DecisionLog(fresh_pg_url(postgres_server), metrics=metrics, spill_path=spill,
                      max_retries=1)
    log.record(full_record(0))
    log.flush()  # the pool now holds a connection that the restart will break
    postgres_server.stop()
    try:
        during = [full_record(n) for n in range(1, 21)]
        for rec in during:
            log.record(rec)
        log.flush()
        assert spilled_ids(spill) == [r.request_id for r in during]
    finally:
        postgres_server.start()
    # The next successful write brings the spilled records back without being asked.
    log.record(full_record(21))
    log.flush()
    assert log.count() == 22
    assert spill.read_text() == ""
    assert samples(metrics)[("tier_router_decision_log_spilled_total", ())] == 20
    log.close()


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_exposition_counts_decisions() -> None:
    metrics = RouterMetrics()
    other = RouterMetrics()  # its own registry: no clash, no shared counts
    metrics.observe(full_record(1, gate_action="route", final_tier="simple", cost_usd=0.001,
                                fallbacks=[], extra={}, cache_status="miss",
                                latency_ms={"normalise": 0.4, "classify": 12.0, "total": 250.0}))
    metrics.observe(full_record(2, gate_action="escalate", final_tier="critical", cost_usd=0.02,
                                extra={}, cache_status="exact", latency_ms={"total": 1500.0}))
    metrics.observe(full_record(3, gate_action=None, override_rule="finance-keywords",
                                override_domain="finance", final_tier="critical",
                                status="error", error="all deployments failed", cost_usd=None,
                                fallbacks=[], extra={}, cache_status=None, latency_ms={}))
    metrics.observe(full_record(4, gate_action="cascade", final_tier="medium", cost_usd=0.003,
                                fallbacks=[], cache_status=None, latency_ms={},
                                extra={"escalation_reason": "cascade"}))
    values = samples(metrics)

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    requests = {key: v for key, v in values.items() if key[0] == "tier_router_requests_total"}
    assert requests == {
        ("tier_router_requests_total",
         (("final_tier", "simple"), ("gate_action", "route"), ("status", "ok"))): 1,
        ("tier_router_requests_total",
         (("final_tier", "critical"), ("gate_action", "escalate"), ("status", "ok"))): 1,
        ("tier_router_requests_total",
         (("final_tier", "critical"), ("gate_action", "none"), ("status", "error"))): 1,
        ("tier_router_requests_total",
         (("final_tier", "medium"), ("gate_action", "cascade"), ("status", "ok"))): 1,
    }
    assert value("tier_router_cost_usd_total", final_tier="simple") == pytest.approx(0.001)
    assert value("tier_router_cost_usd_total", final_tier="critical") == pytest.approx(0.02)
    assert value("tier_router_escalations_total", reason="gate") == 1
    assert value("tier_router_escalations_total", reason="cascade") == 1
    assert value("tier_router_overrides_total", domain="finance") == 1
    assert value("tier_router_fallbacks_total", kind="deployment") == 1
    assert value("tier_router_fallbacks_total", kind="tier") == 1
    assert value("tier_router_cache_requests_total", status="miss") == 1
    assert value("tier_router_cache_requests_total", status="exact") == 1
    assert ("tier_router_cache_requests_total", (("status", "none"),)) not in values
    assert value("tier_router_step_latency_seconds_count", step="classify") == 1
    assert value("tier_router_step_latency_seconds_sum", step="classify") == pytest.approx(0.012)
    assert value("tier_router_step_latency_seconds_bucket", step="classify", le="0.01") == 0
    assert value("tier_router_step_latency_seconds_bucket", step="classify", le="0.025") == 1
    assert value("tier_router_step_latency_seconds_bucket", step="normalise", le="0.0005") == 1
    assert not any(dict(labels).get("step") == "total" for _, labels in values)
    assert value("tier_router_request_latency_seconds_count") == 2
    assert value("tier_router_request_latency_seconds_sum") == pytest.approx(1.75)
    assert value("tier_router_decision_log_errors_total") == 0
    assert value("tier_router_decision_log_spilled_total") == 0
    assert value("tier_router_requests_total", final_tier="simple", gate_action="route",
                 status="ok") == 1
    # every record carries full_record's shadow: the challenger disagreed, would have routed
    assert value("tier_router_shadow_total", agrees="false") == 4
    assert value("tier_router_shadow_escalations_total") == 0
    assert value("tier_router_shadow_est_cost_usd_total", which="would_be") == pytest.approx(
        4 * 0.000_11)
    assert value("tier_router_shadow_est_cost_usd_total", which="live") == pytest.approx(
        4 * 0.0035)
    assert not [k for k in samples(other) if k[0] == "tier_router_requests_total"]


def test_decision_log_observes_metrics_on_record(tmp_path: Path, spill: Path) -> None:
    metrics = RouterMetrics()
    with DecisionLog(sqlite_url(tmp_path), metrics=metrics, spill_path=spill,
                     flush_interval_s=5.0) as log:
        log.record(full_record(1))
        # Counted in the caller's thread, before anything is written.
        assert samples(metrics)[("tier_router_fallbacks_total", (("kind", "tier"),))] == 1
        assert log.count() == 0
    assert metrics.content_type.startswith("text/plain")
