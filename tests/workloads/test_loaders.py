from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest

from workloads import Workload, WorkloadFormatError, load_workload

RB_HEADER = ("sample_id,eval_name,prompt,gpt-4-1106-preview,mistralai/mixtral-8x7b-chat,"
             "gpt-4-1106-preview|total_cost,mistralai/mixtral-8x7b-chat|total_cost\n")


def test_routerbench_layout(routerbench: Workload) -> None:
    assert len(routerbench.records) == 2351
    assert Counter(r.category for r in routerbench.records) == {
        "arc-challenge": 1099, "winogrande": 919, "mbpp": 333}
    assert dict(routerbench.tier_models) == {"simple": "mistralai/mixtral-8x7b-chat",
                                             "medium": "zero-one-ai/Yi-34B-Chat",
                                             "critical": "gpt-4-1106-preview"}
    # Blank outcome cells are missing, not wrong: 5 to 7 per model.
    missing = Counter(model for r in routerbench.records for model, o in r.outcomes.items()
                      if o.correct is None)
    assert len(missing) == 11
    assert set(missing.values()) <= {5, 6, 7}
    first = routerbench.records[0]
    assert first.id == "arc-challenge.test.332"
    assert first.turns[0].startswith("George wants to warm his hands quickly")
    assert first.turns[-1].endswith("without explanation.\nAnswer:")
    gpt4 = routerbench.tier_outcome(first, "critical")
    assert gpt4 is not None
    assert (gpt4.correct, gpt4.response) == (True, "D")
    assert gpt4.cost_usd == pytest.approx(0.00502)
    # Every model's recorded answer is attached.
    assert all(o.response is not None for r in routerbench.records for o in r.outcomes.values())


def test_reference_qualities_match_the_design(routerbench: Workload) -> None:
    """DESIGN.md's reference: GPT-4 0.873 at $5.07e-3/task, Mixtral 0.739 at $0.25e-3."""
    def quality_and_cost(tier: str) -> tuple[float, float]:
        outcomes = [routerbench.tier_outcome(r, tier) for r in routerbench.records]
        judged = [o for o in outcomes if o is not None and o.correct is not None]
        costs = [o.cost_usd for o in outcomes if o is not None and o.cost_usd is not None]
        return sum(o.correct for o in judged) / len(judged), sum(costs) / len(costs)

    assert quality_and_cost("critical") == pytest.approx((0.873, 5.07e-3), rel=0.01)
    assert quality_and_cost("medium") == pytest.approx((0.772, 0.33e-3), rel=0.02)
    assert quality_and_cost("simple") == pytest.approx((0.739, 0.25e-3), rel=0.02)


def test_routellm_layouts(mmlu: Workload) -> None:
    assert len(mmlu.records) == 11166
    assert dict(mmlu.tier_models) == {"simple": "mixtral_8x7b", "medium": "gpt4_1106",
                                      "critical": "gpt4_1106"}
    assert Counter(r.gold is None for r in mmlu.records) == {True: 756, False: 10410}
    assert sum(r.outcomes["gpt4_1106"].correct for r in mmlu.records) == 8999
    assert "professional_law" in {r.category for r in mmlu.records}

    gsm8k = load_workload("gsm8k")
    assert len(gsm8k.records) == 1072
    assert gsm8k.tier_models["simple"] == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert sum(r.outcomes["gpt-4-1106-preview"].correct for r in gsm8k.records) == 914
    assert all(o.response for r in gsm8k.records for o in r.outcomes.values())


def test_mt_bench_and_intents() -> None:
    mt = load_workload("mt_bench")
    assert len(mt.records) == 160
    second = next(r for r in mt.records if r.id == "mt_bench.81.t2")
    assert len(second.turns) == 2
    assert all(o.response and 0.1 <= o.score <= 1.0 and o.correct is None
               for r in mt.records for o in r.outcomes.values())
    assert len(load_workload("banking77").records) == 13083
    clinc = load_workload("clinc150")
    assert len(clinc.records) == 23700
    assert "oos" in {r.category for r in clinc.records}


def _write(tmp_path: Path, name: str, text: str, compress: bool = False) -> Path:
    path = tmp_path / name
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_other_files_of_the_same_shape_load(tmp_path: Path) -> None:
    rb = _write(tmp_path, "mine.csv.gz", RB_HEADER + (
        'q1,arc,"[\'Few-shot head\\nQuestion one?\']",1.0,,0.01,0.001\n'
        "q2,mbpp,Write a function,0.0,1.0,0.02,\n"), compress=True)
    workload = load_workload(rb)
    assert workload.name == "routerbench"
    assert workload.tier_models["medium"] == "gpt-4-1106-preview"  # next tier up
    first, second = workload.records
    assert first.turns == ("Few-shot head\nQuestion one?",)
    assert first.outcomes["mistralai/mixtral-8x7b-chat"].correct is None
    assert second.turns == ("Write a function",)
    assert second.outcomes["mistralai/mixtral-8x7b-chat"].cost_usd is None

    mm = _write(tmp_path, "exam.csv", "subject,prompt,gold,mixtral_8x7b_correct,gpt4_1106_correct\n"
                "law,Q?,A,true,FALSE\nmed,R?,,1,0\n")
    assert [(r.outcomes["mixtral_8x7b"].correct, r.outcomes["gpt4_1106"].correct)
            for r in load_workload(mm).records] == [(True, False), (True, False)]

    gs = _write(tmp_path, "maths.csv", "prompt,gpt-4-1106-preview,gpt-4-1106-preview_response\n"
                "2+2?,yes,4\n")
    record = load_workload(gs).records[0]
    assert record.outcomes["gpt-4-1106-preview"].correct is True
    assert record.outcomes["gpt-4-1106-preview"].response == "4"


@pytest.mark.parametrize(("text", "words"), [
    (RB_HEADER + "q1,arc,['x'],maybe,1.0,0.1,0.1\n",
     "line 2: column 'gpt-4-1106-preview': not a correctness value: 'maybe'"),
    (RB_HEADER + "q1,arc,['x'],1.0,1.0,cheap,0.1\n",
     "line 2: column 'gpt-4-1106-preview|total_cost': not a cost in USD"),
    (RB_HEADER + "q1,arc,\"['x'\",1.0,1.0,0.1,0.1\n",
     "line 2: column 'prompt': prompt is not a Python list literal"),
    (RB_HEADER + "q1,arc,['x'],1.0\n", "line 2: expected 7 cells"),
    ("sample_id,eval_name,prompt,a|total_cost\nq,e,p,1\n", "missing column(s) ['a']"),
    ("sample_id,eval_name,prompt,claude|total_cost,claude\nq,e,p,0.1,1\n",
     "none of the models ['claude'] is a known tier model"),
    ("question,answer\nq,a\n", "matches no known layout"),
])
def test_malformed_files_name_file_line_and_column(tmp_path: Path, text: str,
                                                   words: str) -> None:
    path = _write(tmp_path, "bad.csv", text)
    with pytest.raises(WorkloadFormatError) as caught:
        load_workload(path)
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(WorkloadFormatError, match="neither a built-in workload"):
        load_workload("routerbench-typo")


def test_own_outcomes_and_the_tier_that_executes_an_alias(
        routerbench: Workload, mmlu: Workload, tmp_path: Path) -> None:
    """A tier answered by the next tier's model (RouteLLM's medium: GPT-4) records no outcome of
    its own and executes as that tier; a tier with a model of its own is itself."""
    assert [routerbench.records_tier(t) for t in ("simple", "medium", "critical")] == [
        True, True, True]
    assert [routerbench.executing_tier(t) for t in ("simple", "medium", "critical")] == [
        "simple", "medium", "critical"]
    first = routerbench.records[0]
    yi = first.outcomes["zero-one-ai/Yi-34B-Chat"]
    assert routerbench.own_outcome(first, "medium") is yi
    assert routerbench.tier_outcome(first, "medium") is yi

    assert [mmlu.records_tier(t) for t in ("simple", "medium", "critical")] == [
        True, False, True]
    assert [mmlu.executing_tier(t) for t in ("simple", "medium", "critical")] == [
        "simple", "critical", "critical"]
    record = mmlu.records[0]
    # The answering model's outcome is still there (what a call to medium gets) ...
    assert mmlu.tier_outcome(record, "medium") is record.outcomes["gpt4_1106"]
    # ... but it is GPT-4's, not a medium model's.
    assert mmlu.own_outcome(record, "medium") is None
    assert mmlu.own_outcome(record, "critical") is record.outcomes["gpt4_1106"]
    assert mmlu.own_outcome(record, "simple") is record.outcomes["mixtral_8x7b"]

    # One recorded model: every tier executes as critical, only critical records outcomes.
    single = load_workload(_write(
        tmp_path, "maths.csv",
        "prompt,gpt-4-1106-preview,gpt-4-1106-preview_response\n2+2?,yes,4\n"))
    assert [single.executing_tier(t) for t in ("simple", "medium", "critical")] == [
        "critical", "critical", "critical"]
    assert [single.own_outcome(single.records[0], t) is None
            for t in ("simple", "medium", "critical")] == [True, True, False]

    # Intent data records no model: no tier records anything, each tier stands for itself.
    intents = load_workload("banking77")
    assert not any(intents.records_tier(t) for t in ("simple", "medium", "critical"))
    assert intents.executing_tier("medium") == "medium"
    assert intents.own_outcome(intents.records[0], "simple") is None
