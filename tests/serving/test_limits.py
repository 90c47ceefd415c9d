"""Rate limits and spend budgets on their own clocks (the service test drives them over HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router.telemetry import DecisionLog, DecisionRecord
from serving.limits import RateLimiter, SpendTracker


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.allow("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("k") == pytest.approx(0.5)  # one token per 0.5 s
    assert limiter.allow("other") == 0.0  # buckets are per key
    now[0] = 0.5
    assert limiter.allow("k") == 0.0


def _spent(request_id: str, usd: float, at: datetime | None = None) -> DecisionRecord:
    extra = {"created_at": at} if at else {}
    return DecisionRecord(request_id=request_id, tenant="acme", text_hash="h",
                          requested_model="auto", cost_usd=usd, **extra)


def test_spend_is_read_from_the_log_and_rolls_over_each_month(tmp_path) -> None:
    clock = [datetime(2026, 11, 20, tzinfo=UTC)]
    with DecisionLog(f"sqlite:///{tmp_path / 'log.sqlite'}") as log:
        log.record(_spent("r1", 0.4, clock[0]))
        log.record(_spent("r0", 9.0, datetime(2026, 10, 30, tzinfo=UTC)))
        log.flush()
        tracker = SpendTracker({"acme": 0.5}, log, now=lambda: clock[0])
    assert tracker.exhausted("acme") is None  # 0.4 this month; October does not count
    tracker.observe(_spent("r2", 0.2))
    assert tracker.exhausted("acme") == (pytest.approx(0.6), 0.5)
    assert tracker.exhausted("no-budget") is None
    clock[0] = datetime(2026, 12, 1, tzinfo=UTC)
    assert tracker.exhausted("acme") is None  # a new month
