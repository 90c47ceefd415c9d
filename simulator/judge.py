"""The simulator as the labelling judge: a STAND-IN for a frontier model grading requests.

The judge labeller (training/labellers.py) sends a rubric as the system message, carrying
:data:`JUDGE_MARKER`, and one request's classifier text between :data:`REQUEST_OPEN` and
:data:`REQUEST_CLOSE` as the user message. A real frontier model would read the text and judge
it; this stand-in looks the text up in the answer catalog (by ``normalise()``d text) and answers
from the data's *recorded outcomes* instead, with the outcomes labeller's rules:

* a tier is right when its recorded ``score`` >= :data:`SCORE_PASS` (graded data, MT-Bench),
  else when its recorded ``correct`` is true; a blank outcome is unknown, not right;
* a tier served by the same recorded model as the tier above it (RouteLLM data: medium ->
  GPT-4) does not count on its own: only the highest tier of such a run does;
* the answer is the cheapest right tier; no tier right -> ``critical``; text not in the catalog
  (or a record with no outcome at all) -> ``simple``.

A valid answer is ``{"tier": ..., "reason": ...}``. A deterministic share ``invalid_rate`` of
answers is *not* valid JSON (cut-off JSON, or prose), so the labeller's re-ask path runs. The draw
hashes (seed, attempt, text), where attempt = the number of assistant messages in the request
(each re-ask appends the invalid answer): the same request always gets the same answer, and a
re-ask can succeed.

The marker and delimiters are copies of training/labellers.py's, not imports (neither package
may depend on the other); a test asserts the copies match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from router.errors import RequestFormatError
from router.normalise import message_text
from router.tiers import TIERS, Tier, next_tier_up
from simulator.catalog import Answer, AnswerCatalog
from workloads import Outcome, Workload, WorkloadRecord

JUDGE_MARKER = "tier-router judge rubric v1"
REQUEST_OPEN = "<<<REQUEST"
REQUEST_CLOSE = "REQUEST>>>"
SCORE_PASS = 0.8  # LabelParams.score_pass's default
DEFAULT_INVALID_RATE = 0.1


def _text(message: Mapping[str, Any]) -> str:
    try:
        return message_text(message.get("content"))
    except RequestFormatError:
        return ""


def is_judge_request(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the first system message (else the first message) carries the rubric marker."""
    if not messages:
        return False
    first = next((m for m in messages if m.get("role") == "system"), messages[0])
    return JUDGE_MARKER in _text(first)


def judged_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The request text embedded in the first user message that has the delimiters, or None."""
    for message in messages:
        if message.get("role") != "user":
            continue
        content = _text(message)
        start, end = content.find(REQUEST_OPEN), content.rfind(REQUEST_CLOSE)
        if 0 <= start < end:
            return content[start + len(REQUEST_OPEN):end].strip("\n")
    return None


def _draw(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def answer_is_invalid(text: str, attempt: int, *, seed: int = 0,
                      rate: float = DEFAULT_INVALID_RATE) -> bool:
    """Whether the judge's ``attempt``-th answer (0 = first ask) to ``text`` is invalid JSON."""
    return _draw(seed, "judge-invalid", attempt, text) < rate


def _right(outcome: Outcome | None, score_pass: float) -> bool | None:
    if outcome is None:
        return None
    if outcome.score is not None:
        return outcome.score >= score_pass
    return outcome.correct


def recorded_tier(workload: Workload, record: WorkloadRecord,
                  score_pass: float = SCORE_PASS) -> Tier | None:
    """The cheapest tier recorded right on ``record``; ``critical`` if none; None if no outcome
    of any tier is recorded."""
    known = False
    for tier in TIERS:
        model = workload.tier_models.get(tier)
        above = next_tier_up(tier)
        if model is None or (above is not None and workload.tier_models.get(above) == model):
            continue  # an alias of the tier above: only the highest tier of the run counts
        right = _right(record.outcomes.get(model), score_pass)
        known = known or right is not None
        if right:
            return tier
    return "critical" if known else None


def judge_answer(catalog: AnswerCatalog, messages: Sequence[Mapping[str, Any]], *,
                 seed: int = 0, invalid_rate: float = DEFAULT_INVALID_RATE) -> Answer:
    """The stand-in judge's answer to a judge request (see the module docstring)."""
    text = judged_text(messages) or ""
    found = catalog.find_text(text)
    tier = recorded_tier(*found) if found else None
    verdict = json.dumps({"tier": tier or "simple",
                          "reason": "recorded outcomes" if tier else "no recorded outcomes"})
    attempt = sum(1 for m in messages if m.get("role") == "assistant")
    if answer_is_invalid(text, attempt, seed=seed, rate=invalid_rate):
        # Two ways real models break a JSON-only instruction: stopping short, or chatting.
        if _draw(seed, "judge-form", attempt, text) < 0.5:
            verdict = verdict[: len(verdict) // 2]
        else:
            verdict = f"This request looks like it needs the {tier or 'simple'} tier."
    workload, record = found if found else (None, None)
    return Answer(verdict, "judge", workload.name if workload else None,
                  record.id if record else None)
