from __future__ import annotations

from router.config import OverridesConfig, RouterConfig
from router.overrides import DomainOverrides
from workloads import Workload, load_workload

SLICES = {"legal": "professional_law", "medical": "professional_medicine",
          "finance": "professional_accounting"}


def test_rules_fire_on_high_stakes_seed_prompts(router_config: RouterConfig,
                                                mmlu: Workload) -> None:
    overrides = DomainOverrides(router_config.overrides)
    for domain, subject in SLICES.items():
        prompts = [r.turns[-1] for r in mmlu.records if r.category == subject]
        fired = [overrides.match(p) for p in prompts]
        same_domain = sum(1 for m in fired if m is not None and m.domain == domain)
        print(f"{subject}: {same_domain}/{len(prompts)} fire the {domain} rule")
        assert same_domain >= 0.15 * len(prompts), subject
        assert all(m.tier == "critical" for m in fired if m is not None)


def test_banking_support_traffic_is_not_forced_to_the_frontier(
        router_config: RouterConfig) -> None:
    overrides = DomainOverrides(router_config.overrides)
    banking = load_workload("banking77").records
    fired = [r.turns[0] for r in banking if overrides.match(r.turns[0])]
    assert len(fired) <= 0.001 * len(banking), fired


def test_keywords_are_whole_words_and_rules_can_be_disabled() -> None:
    config = OverridesConfig(rules=[{"name": "law", "domain": "legal", "keywords": ["tort"],
                                     "patterns": [r"\bcan i sue\b"]}])
    overrides = DomainOverrides(config)
    assert overrides.match("Is this a TORT?").matched == "TORT"
    assert overrides.match("Can I sue my landlord?").rule == "law"
    assert overrides.match("I baked a torte") is None
    assert DomainOverrides(OverridesConfig(enabled=False, rules=config.rules)).match(
        "a tort") is None
