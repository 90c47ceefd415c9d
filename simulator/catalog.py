"""What the simulated providers answer: recorded answers looked up by prompt.

A prompt is known when its user turns (whitespace-normalised) match a workload record. The
answer is the recorded response of the model the deployment stands for; where the data holds no
response (MMLU), a *synthetic* answer is made and marked as such; an unknown prompt gets a
deterministic *generic* answer. Whether the recorded answer was correct is kept in
:class:`Answer` for the evaluation lookup only: it never appears in what a provider returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from router.normalise import normalise
from router.tiers import Tier
from workloads import Outcome, Workload, WorkloadRecord
from workloads.answers import generic_answer, prompt_key, synthetic_answer

# "judge": the simulator answering as the labelling judge (simulator/judge.py), not as a model.
AnswerKind = Literal["recorded", "synthetic", "generic", "judge"]
__all__ = ["Answer", "AnswerCatalog", "AnswerKind", "prompt_key"]


@dataclass(frozen=True)
class Answer:
    """One simulated answer and, for evaluation only, what the data recorded about it."""

    text: str
    kind: AnswerKind
    workload: str | None = None
    record_id: str | None = None
    recorded_model: str | None = None
    outcome: Outcome | None = None


class AnswerCatalog:
    """Index of workload prompts -> records, answering as a given tier's model would."""

    def __init__(self, workloads: Sequence[Workload]) -> None:
        self._records: dict[str, tuple[Workload, WorkloadRecord]] = {}
        for workload in workloads:
            for record in workload.records:
                # The first record of a repeated prompt wins (MMLU repeats 81 prompts across
                # subjects); the evaluation lookup names the record that answered.
                self._records.setdefault(prompt_key(record.turns), (workload, record))
        self._by_text: dict[str, tuple[Workload, WorkloadRecord]] | None = None

    def __len__(self) -> int:
        return len(self._records)

    def find(self, turns: Sequence[str]) -> tuple[Workload, WorkloadRecord] | None:
        """The workload record whose user turns match ``turns``, or None."""
        return self._records.get(prompt_key(turns))

    def find_text(self, text: str) -> tuple[Workload, WorkloadRecord] | None:
        """The record whose ``normalise()``d messages equal ``text`` (the classifier text), or None.

        Built on first use: only the judge stand-in needs it, and normalising every record costs
        a fraction of a second that a plain simulator should not pay at start.
        """
        if self._by_text is None:
            self._by_text = {}
            for workload, record in self._records.values():
                self._by_text.setdefault(normalise(record.messages()), (workload, record))
        return self._by_text.get(text)

    def answer(self, turns: Sequence[str], served_model: str, tier: Tier,
               recorded_model: str | None = None) -> Answer:
        """The answer ``served_model`` (standing in ``tier``) gives to the user ``turns``.

        ``recorded_model`` names the data's model explicitly (a deployment's
        ``model_info.recorded_model``); otherwise the served model name is tried, then the
        workload's model for ``tier``.
        """
        found = self.find(turns)
        if found is None:
            return Answer(text=generic_answer(turns, served_model), kind="generic")
        workload, record = found
        model = next((name for name in (recorded_model, served_model)
                      if name and name in record.outcomes), workload.tier_models.get(tier))
        outcome = record.outcomes.get(model) if model else None
        if outcome is not None and outcome.response is not None:
            return Answer(outcome.response, "recorded", workload.name, record.id, model, outcome)
        return Answer(synthetic_answer(record, outcome, served_model), "synthetic",
                      workload.name, record.id, model, outcome)
