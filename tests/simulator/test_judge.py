"""The simulator's judge stand-in: recognised by the rubric marker, answers from outcomes."""

from __future__ import annotations

import json

import openai
import pytest

from router.normalise import normalise
from simulator import judge as sim_judge
from simulator.catalog import AnswerCatalog
from tests.conftest import SimulatorProcess
from training import labellers
from workloads import Workload


def test_marker_and_delimiters_match_the_labellers_copies() -> None:
    # Copies, not imports (training and simulator stay independent): they must agree.
    assert sim_judge.JUDGE_MARKER == labellers.JUDGE_MARKER
    assert sim_judge.REQUEST_OPEN == labellers.REQUEST_OPEN
    assert sim_judge.REQUEST_CLOSE == labellers.REQUEST_CLOSE
    assert labellers.JUDGE_MARKER in labellers.RUBRIC


def test_judge_request_is_recognised_and_its_text_extracted() -> None:
    messages = labellers.judge_messages("user: What is 2 + 2?")
    assert sim_judge.is_judge_request(messages)
    assert sim_judge.judged_text(messages) == "user: What is 2 + 2?"
    assert not sim_judge.is_judge_request([{"role": "user", "content": "What is 2 + 2?"}])
    assert not sim_judge.is_judge_request(
        [{"role": "system", "content": "Be brief."}, *messages[1:]])


def test_recorded_tier_never_makes_an_aliased_medium(mmlu: Workload,
                                                     routerbench: Workload) -> None:
    assert mmlu.tier_models["medium"] == mmlu.tier_models["critical"]
    tiers = {sim_judge.recorded_tier(mmlu, r) for r in mmlu.records[:500]}
    assert tiers == {"simple", "critical"}
    medium = next(r for r in routerbench.records
                  if routerbench.tier_outcome(r, "simple").correct is False
                  and routerbench.tier_outcome(r, "medium").correct is True)
    assert sim_judge.recorded_tier(routerbench, medium) == "medium"


def test_recorded_tier_agrees_with_the_outcomes_labeller_on_harvested_rows(
        mmlu: Workload, routerbench: Workload) -> None:
    """The stand-in judges from the same evidence the label stage reads: each tier's own
    outcome as harvest records it (RouteLLM's medium null). With "no tier right" labelled
    critical, as the stand-in answers, the two agree on every row."""
    import pandas as pd

    from training.harvest import seed_rows
    from workloads import load_workload

    labeller = labellers.OutcomesLabeller(unresolved_tier="critical")
    for workload, cap in ((routerbench, 400), (mmlu, 400), (load_workload("mt_bench"), None)):
        rows, _ = seed_rows(workload, cap=cap, seed=1)
        frame = pd.DataFrame(rows)
        labels = labeller.label(frame)
        by_id = {record.id: record for record in workload.records}
        judged = [sim_judge.recorded_tier(workload, by_id[row_id]) for row_id in frame["row_id"]]
        assert judged == [None if pd.isna(label) else label for label in labels["label"]]
        assert len(set(judged)) >= 2, workload.name  # not trivially one tier


def test_invalid_share_is_deterministic_and_near_the_rate() -> None:
    texts = [f"user: question {i}" for i in range(2000)]
    draws = [sim_judge.answer_is_invalid(t, 0) for t in texts]
    assert draws == [sim_judge.answer_is_invalid(t, 0) for t in texts]
    assert 0.07 < sum(draws) / len(draws) < 0.13
    # A re-ask (attempt 1) is drawn afresh, so it can succeed.
    assert draws != [sim_judge.answer_is_invalid(t, 1) for t in texts]
    assert not any(sim_judge.answer_is_invalid(t, 0, rate=0.0) for t in texts[:50])


def test_catalog_finds_records_by_normalised_text(routerbench: Workload) -> None:
    catalog = AnswerCatalog([routerbench])
    record = routerbench.records[7]
    found = catalog.find_text(normalise(record.messages()))
    assert found is not None and found[1].turns == record.turns
    assert catalog.find_text("user: not a recorded prompt") is None


def _ask(sim: SimulatorProcess, messages: list[dict[str, str]]) -> str:
    client = openai.OpenAI(base_url=sim.url("openai"), api_key="sk-test", max_retries=0)
    completion = client.chat.completions.create(model="gpt-4-1106-preview", messages=messages)
    return completion.choices[0].message.content or ""


def _text_where(routerbench: Workload, first_invalid: bool) -> tuple[str, str]:
    for record in routerbench.records:
        text = normalise(record.messages())
        if sim_judge.answer_is_invalid(text, 0) == first_invalid and \
                not sim_judge.answer_is_invalid(text, 1):
            return text, sim_judge.recorded_tier(routerbench, record) or "simple"
    raise AssertionError("no such record")  # pragma: no cover


@pytest.mark.parametrize("first_invalid", [False, True])
def test_simulator_answers_judge_requests_over_http(
        simulator: SimulatorProcess, routerbench: Workload, first_invalid: bool) -> None:
    text, expected = _text_where(routerbench, first_invalid)
    messages = labellers.judge_messages(text)
    content = _ask(simulator, messages)
    if first_invalid:
        with pytest.raises(ValueError):
            labellers.parse_verdict(content)
        messages = [*messages, {"role": "assistant", "content": content},
                    {"role": "user", "content": "Reply again with only the JSON object."}]
        content = _ask(simulator, messages)
    assert json.loads(content) == {"tier": expected, "reason": "recorded outcomes"}


def test_unknown_text_is_judged_simple(simulator: SimulatorProcess) -> None:
    text = next(t for t in (f"user: an unrecorded question {i}" for i in range(100))
                if not sim_judge.answer_is_invalid(t, 0))
    answer = json.loads(_ask(simulator, labellers.judge_messages(text)))
    assert answer == {"tier": "simple", "reason": "no recorded outcomes"}
