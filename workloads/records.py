"""Types shared by every workload loader: one record per prompt, one outcome per model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router.tiers import TIERS, Tier, next_tier_up


class WorkloadFormatError(ValueError):
    """A workload file does not have a known layout, or a cell cannot be read.

    The message names the file, and the line and column where one is at fault.
    """


@dataclass(frozen=True)
class Outcome:
    """What one model did on one prompt, as recorded in the data.

    ``correct`` is None where the cell is blank (missing, not wrong). ``cost_usd`` is the real
    recorded cost of the query (RouterBench) or None where the data has none (RouteLLM).
    ``response`` is the recorded answer text, or None. ``score`` is a graded quality in [0, 1]
    where the data grades instead of marking right or wrong (MT-Bench: judge score / 10).
    """

    correct: bool | None
    cost_usd: float | None = None
    response: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class WorkloadRecord:
    """One prompt of a workload.

    ``turns`` are the user turns in order (a single-turn prompt has one). ``category`` is the
    grouping the data gives: RouterBench ``eval_name``, MMLU ``subject``, an intent name.
    ``outcomes`` maps each recorded model name to its outcome (empty for intent data).
    """

    id: str
    source: str
    category: str
    turns: tuple[str, ...]
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    gold: str | None = None

    def messages(self) -> list[dict[str, str]]:
        """The record as an OpenAI ``messages`` list of user turns."""
        return [{"role": "user", "content": turn} for turn in self.turns]


@dataclass(frozen=True)
class Workload:
    """Records read from one file, with the model that stands for each tier in it.

    ``tier_models`` maps each tier to a key of the records' ``outcomes``. Data with fewer than
    three models maps a missing tier to the next tier up (RouteLLM: medium -> GPT-4); intent data
    without outcomes maps nothing.
    """

    name: str
    path: str
    records: list[WorkloadRecord]
    tier_models: Mapping[Tier, str]

    def tier_outcome(self, record: WorkloadRecord, tier: Tier) -> Outcome | None:
        """The recorded outcome of the model that *answers* when ``tier`` is asked (on two-tier
        data medium is answered by the critical tier's model), or None if not recorded."""
        model = self.tier_models.get(tier)
        return record.outcomes.get(model) if model else None

    def records_tier(self, tier: Tier) -> bool:
        """Whether the data records a model *of its own* for ``tier``. RouteLLM's data records
        two models: its medium tier is an alias of critical (GPT-4), so it records no medium
        outcome, and a medium head or replay must not read GPT-4's as one."""
        model = self.tier_models.get(tier)
        above = next_tier_up(tier)
        return model is not None and (above is None or self.tier_models.get(above) != model)

    def executing_tier(self, tier: Tier) -> Tier:
        """The tier whose model answers when ``tier`` is asked: ``tier`` itself, or the next
        tier up for an alias (two-tier data: medium -> critical, at critical's price)."""
        while not self.records_tier(tier) and next_tier_up(tier) is not None \
                and self.tier_models.get(tier) is not None:
            tier = next_tier_up(tier)  # type: ignore[assignment]
        return tier

    def own_outcome(self, record: WorkloadRecord, tier: Tier) -> Outcome | None:
        """``tier``'s own recorded outcome: None where the tier is an alias (see
        :meth:`records_tier`)."""
        return self.tier_outcome(record, tier) if self.records_tier(tier) else None


# Which recorded model stands for each tier (DESIGN.md, "Words and numbers"), under each
# spelling the data sets use. The first name present in a file wins.
TIER_MODEL_NAMES: Mapping[Tier, tuple[str, ...]] = {
    "simple": ("mistralai/mixtral-8x7b-chat", "mistralai/Mixtral-8x7B-Instruct-v0.1",
               "mixtral_8x7b"),
    "medium": ("zero-one-ai/Yi-34B-Chat",),
    "critical": ("gpt-4-1106-preview", "gpt4_1106"),
}


def resolve_tier_models(models: list[str]) -> dict[Tier, str]:
    """Map each tier to one of ``models`` by :data:`TIER_MODEL_NAMES`.

    A tier whose model is absent takes the model of the next tier up. Returns {} when no tier's
    model is present at all (the caller decides whether that is an error).
    """
    found: dict[Tier, str] = {}
    for tier in TIERS:
        for name in TIER_MODEL_NAMES[tier]:
            if name in models:
                found[tier] = name
                break
    if not found:
        return {}
    for tier in reversed(TIERS):
        if tier not in found:
            above = next_tier_up(tier)
            if above is None or above not in found:
                raise WorkloadFormatError(
                    f"no model for tier {tier!r} or any tier above it among {models}")
            found[tier] = found[above]
    return {tier: found[tier] for tier in TIERS}
