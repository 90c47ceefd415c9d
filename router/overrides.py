"""Domain overrides: configured high-stakes rules that send a request straight to a tier.

Rules come from the config's ``overrides`` section. A rule matches when any of its keywords
appears as a whole word or phrase (ignoring case) or any of its patterns matches. The rules are
checked in config order; the first that matches wins, and its name is logged with the decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from router.config import OverrideRule, OverridesConfig
from router.tiers import Tier


@dataclass(frozen=True)
class OverrideMatch:
    rule: str
    domain: str
    tier: Tier
    matched: str  # the text that fired the rule, for the log (at most 80 characters)


class DomainOverrides:
    """Compiled override rules; ``match(text)`` returns the first rule that fires, or None."""

    def __init__(self, config: OverridesConfig) -> None:
        self.enabled = config.enabled
        self._rules: list[tuple[OverrideRule, re.Pattern[str]]] = []
        for rule in config.rules:
            alternatives = [r"\b" + r"\s+".join(map(re.escape, kw.split())) + r"\b"
                            for kw in rule.keywords]
            alternatives += [f"(?:{pattern})" for pattern in rule.patterns]
            self._rules.append((rule, re.compile("|".join(alternatives), re.IGNORECASE)))

    def match(self, text: str) -> OverrideMatch | None:
        """The first rule matching ``text`` (the full request text, not the truncated one)."""
        if not self.enabled:
            return None
        for rule, regex in self._rules:
            found = regex.search(text)
            if found:
                return OverrideMatch(rule.name, rule.domain, rule.tier, found.group(0)[:80])
        return None
