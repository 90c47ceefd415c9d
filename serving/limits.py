"""Per-key rate limits and per-tenant spend budgets, enforced before a request is routed.

* **Rate limit** (429): a token bucket per API key (its hash): ``rate_per_s`` requests a
  second on average, bursts up to ``burst``. Per replica: N replicas allow N times the rate.
* **Spend budget** (403): USD per tenant per calendar month (UTC). Spend is read from the
  decision log at start (every replica's records) and then counted from this replica's own
  records as they are made; a request is refused once the tenant's spend has reached its
  budget (the request that crosses it is served: its cost is known only afterwards).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from router.telemetry import DecisionLog, DecisionRecord


class RateLimiter:
    """Token buckets keyed by API-key hash. ``allow(key)`` -> seconds to wait (0.0 = go)."""

    def __init__(self, rate_per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class SpendTracker:
    """USD spent this month per tenant against ``budgets`` (tenant -> USD)."""

    def __init__(self, budgets: Mapping[str, float], log: DecisionLog | None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.budgets = dict(budgets)
        self._now = now
        self._month = month_start(now())
        self._spent: dict[str, float] = log.spend(self._month) if (log and budgets) else {}
        self._lock = threading.Lock()

    def observe(self, record: DecisionRecord) -> None:
        """Count a request's cost (a :class:`DecisionLog` observer)."""
        if record.tenant not in self.budgets or not record.cost_usd:
            return
        with self._lock:
            self._roll()
            self._spent[record.tenant] = self._spent.get(record.tenant, 0.0) + record.cost_usd

    def exhausted(self, tenant: str) -> tuple[float, float] | None:
        """(spent, budget) when ``tenant`` has no budget left, else None."""
        budget = self.budgets.get(tenant)
        if budget is None:
            return None
        with self._lock:
            self._roll()
            spent = self._spent.get(tenant, 0.0)
        return (spent, budget) if spent >= budget else None

    def _roll(self) -> None:
        month = month_start(self._now())
        if month != self._month:  # a new month: budgets start again
            self._month, self._spent = month, {}
