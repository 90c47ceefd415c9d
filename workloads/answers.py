"""What a provider answers to a seed prompt: the one definition for the simulator (the stand-in
providers), training (answers the response scorer checks in the calibration replay) and tests.

* A prompt of a workload record gets the recorded response of the model the tier stands for.
* Where the data holds no response (MMLU), a *synthetic* one: the gold letter when the model was
  recorded correct, another letter when wrong, a fixed pseudo-random one when the data gives no
  gold -- so the text never tells more about correctness than a real answer would.
* An unknown prompt (support intents, anything else) gets a deterministic *generic* answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal

from workloads.records import Outcome, WorkloadRecord

AnswerKind = Literal["recorded", "synthetic", "generic"]
_LETTERS = "ABCD"


def prompt_key(turns: Iterable[str]) -> str:
    """Key of a prompt: SHA-256 over its whitespace-normalised user turns."""
    digest = hashlib.sha256()
    for turn in turns:
        digest.update(" ".join(turn.split()).encode("utf-8"))
        digest.update(b"\x1e")  # record separator: ("ab",) and ("a", "b") differ
    return digest.hexdigest()


def _choice(seed: str, options: str) -> str:
    return options[int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(options)]


def synthetic_answer(record: WorkloadRecord, outcome: Outcome | None, model: str) -> str:
    """A multiple-choice letter for data without recorded responses (see the module doc)."""
    seed = f"{record.id}|{model}"
    # gold is None or "" for 756 MMLU rows; `"" in "ABCD"` would be True, hence the length test
    known_gold = record.gold is not None and len(record.gold) == 1 and record.gold in _LETTERS
    if known_gold and outcome is not None and outcome.correct is not None:
        letter = (record.gold if outcome.correct
                  else _choice(seed, _LETTERS.replace(record.gold, "")))
    else:
        letter = _choice(seed, _LETTERS)
    return f"The answer is {letter}."


def generic_answer(turns: Sequence[str], model: str) -> str:
    """The deterministic answer to a prompt no record holds."""
    digest = prompt_key(turns)[:12]
    return (f"This is a simulated reply from {model} (provider simulator, no recorded answer for "
            f"this prompt; reference {digest}).")


def record_answer(record: WorkloadRecord, outcome: Outcome | None,
                  model: str) -> tuple[str, AnswerKind]:
    """The answer ``model`` gives to ``record`` (``outcome``: its recorded outcome, or None)."""
    if outcome is not None and outcome.response is not None:
        return outcome.response, "recorded"
    if record.outcomes:
        return synthetic_answer(record, outcome, model), "synthetic"
    return generic_answer(record.turns, model), "generic"
