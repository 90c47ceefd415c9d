"""Threshold A/B tests: which variant a request belongs to (config ``ab``).

Assignment is a stable hash, so a tenant (``split_by: tenant``) or a request id (``request``)
always lands in the same arm for a given ``salt``, on every replica and after restarts; the arms
share traffic in proportion to their weights. A variant's operating point (``gate``: price
weight and thresholds) replaces the model's (``OperatingPoint.source`` ``ab:<variant>``); a
variant without ``gate`` keeps the point stored with the serving model version (the control
arm), and the decision still records the variant.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

from router.config import ABConfig, ABVariant
from router.gate import OperatingPoint, resolve_point


def bucket(salt: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by ``salt`` and ``key`` (first 8 bytes of SHA-256)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ABAssigner:
    """Maps (tenant, request id) to a variant of an enabled A/B config."""

    def __init__(self, config: ABConfig) -> None:
        self.config = config
        weights = [variant.weight for variant in config.variants]
        total = sum(weights)
        # Cumulative upper edges in (0, 1]; the last is exactly 1 so every bucket has an arm.
        self._edges = [edge / total for edge in accumulate(weights)][:-1]

    @property
    def enabled(self) -> bool:
        return self.config.enabled and len(self.config.variants) >= 2

    def assign(self, tenant: str, request_id: str) -> ABVariant | None:
        """The variant for this request, or None when no test is running."""
        if not self.enabled:
            return None
        key = tenant if self.config.split_by == "tenant" else request_id
        return self.config.variants[bisect_right(self._edges, bucket(self.config.salt, key))]

    @staticmethod
    def point(variant: ABVariant, serving: OperatingPoint) -> OperatingPoint:
        """The operating point a request in ``variant`` is decided with (``serving``: the
        model's)."""
        if variant.gate is None:
            return serving
        return resolve_point(variant.gate, variant=(variant.name, variant.gate))
