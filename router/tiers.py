"""The three tiers, fixed for the whole project (DESIGN.md, "Words and numbers")."""

from __future__ import annotations

from typing import Literal, get_args

Tier = Literal["simple", "medium", "critical"]
# Cheapest first: "next tier up" means the next entry in this tuple.
TIERS: tuple[Tier, ...] = get_args(Tier)


def next_tier_up(tier: Tier) -> Tier | None:
    """The tier above ``tier``, or None for ``critical`` (the frontier tier)."""
    index = TIERS.index(tier)
    return TIERS[index + 1] if index + 1 < len(TIERS) else None
