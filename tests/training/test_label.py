"""The label stage: outcomes labeller rules, the intent rule, the per-tier success targets of
each label source, and the judge over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from router.normalise import normalise
from router.tiers import TIERS
from simulator.catalog import AnswerCatalog
from simulator.judge import answer_is_invalid
from tests.conftest import CONFIG_PATH, SimulatorProcess, free_port
from training import label as label_stage
from training.labellers import (
    LABEL_COLUMNS,
    LABELLERS,
    JudgeCache,
    JudgeLabeller,
    LabelError,
    OutcomesLabeller,
    _Budget,
    cache_key,
    success_targets,
)
from training.params import JudgeParams, LabelParams
from workloads import Workload, WorkloadRecord, load_workload


def row(row_id: str, source: str, outcomes: dict | None = None, scores: dict | None = None,
        text: str | None = None) -> dict[str, Any]:
    """One harvest row (only the columns the label stage reads, plus text)."""
    return {"row_id": row_id, "source": source, "category": source,
            "text": text or f"user: prompt {row_id}",
            "outcomes": None if outcomes is None else json.dumps(outcomes),
            "scores": None if scores is None else json.dumps(scores)}


HAND_MADE = pd.DataFrame([
    row("rb.simple", "routerbench", {"simple": True, "medium": True, "critical": True}),
    row("rb.medium", "routerbench", {"simple": False, "medium": True, "critical": True}),
    row("rb.critical", "routerbench", {"simple": False, "medium": False, "critical": True}),
    # Aliased medium: a copy of GPT-4's outcome, or null; never a medium label.
    row("mmlu.copy", "mmlu", {"simple": False, "medium": True, "critical": True}),
    row("gsm8k.null", "gsm8k", {"simple": False, "medium": None, "critical": True}),
    row("mmlu.simple", "mmlu", {"simple": True, "medium": True, "critical": True}),
    # Graded: score >= 0.8 is right; the score wins over a true/false outcome.
    row("mt.pass", "mt_bench", {"simple": None, "medium": None, "critical": None},
        {"simple": 0.8, "medium": 0.9, "critical": 1.0}),
    row("mt.fail", "mt_bench", None, {"simple": 0.7, "medium": 0.9, "critical": 0.9}),
    row("mt.none", "mt_bench", None, {"simple": 0.1, "medium": None, "critical": 0.5}),
    row("rb.graded", "routerbench", {"simple": True, "medium": True, "critical": True},
        {"simple": 0.5, "medium": 0.85, "critical": None}),
    # No tier right; blank cheaper tier skipped.
    row("rb.none", "routerbench", {"simple": False, "medium": False, "critical": False}),
    row("rb.blank", "routerbench", {"simple": None, "medium": True, "critical": True}),
    row("rb.blank_none", "routerbench", {"simple": None, "medium": False, "critical": False}),
    # No outcomes at all.
    row("bank.0", "banking77"),
    row("clinc.0", "clinc150", {}, {}),
    row("log.0", "log", {"simple": None, "medium": None, "critical": None}),
    row("rb.empty", "routerbench"),
])
# The stage's default params: rows no tier got right are labelled simple (paying more bought
# nothing there); OutcomesLabeller's own default (critical) is the judge stand-in's rule.
EXPECTED = {  # row_id -> (label, label_source, note)
    "rb.simple": ("simple", "outcomes", None),
    "rb.medium": ("medium", "outcomes", None),
    "rb.critical": ("critical", "outcomes", None),
    "mmlu.copy": ("critical", "outcomes", None),
    "gsm8k.null": ("critical", "outcomes", None),
    "mmlu.simple": ("simple", "outcomes", None),
    "mt.pass": ("simple", "outcomes", None),
    "mt.fail": ("critical", "outcomes", None),
    "mt.none": ("simple", "outcomes", "no tier right"),
    "rb.graded": ("medium", "outcomes", None),
    "rb.none": ("simple", "outcomes", "no tier right"),
    "rb.blank": ("medium", "outcomes", "blank outcome skipped: simple"),
    "rb.blank_none": ("simple", "outcomes", "no tier right; blank outcome skipped: simple"),
    "bank.0": ("simple", "rule", "support intent without outcomes: rule"),
    "clinc.0": ("simple", "rule", "support intent without outcomes: rule"),
    "log.0": (None, "outcomes", "no outcomes"),
    "rb.empty": (None, "outcomes", "no outcomes"),
}
# row_id -> targets (simple, medium, critical) at score_pass 0.8: each tier's own outcome (a
# score wins over it), RouteLLM's medium null, rule rows simple only, unlabelled rows all null.
TARGETS = {
    "rb.simple": (1, 1, 1), "rb.medium": (0, 1, 1), "rb.critical": (0, 0, 1),
    "mmlu.copy": (0, None, 1), "gsm8k.null": (0, None, 1), "mmlu.simple": (1, None, 1),
    "mt.pass": (1, None, 1), "mt.fail": (0, None, 1), "mt.none": (0, None, 0),
    "rb.graded": (0, 1, 1), "rb.none": (0, 0, 0), "rb.blank": (None, 1, 1),
    "rb.blank_none": (None, 0, 0), "bank.0": (1, None, None), "clinc.0": (1, None, None),
    "log.0": (None, None, None), "rb.empty": (None, None, None),
}


def _targets(cell: str) -> tuple:
    values = json.loads(cell)
    assert list(values) == list(TIERS)
    return tuple(values[tier] for tier in TIERS)


def _na(value: Any) -> Any:
    return None if pd.isna(value) else value


def test_outcomes_labeller_applies_every_rule() -> None:
    labels = OutcomesLabeller.from_params(LabelParams()).label(HAND_MADE)
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert labels.index.equals(HAND_MADE.index)
    got = {rid: (_na(r.label), r.label_source, _na(r.label_note))
           for rid, r in zip(HAND_MADE["row_id"], labels.itertuples(), strict=True)}
    assert got == EXPECTED
    assert set(labels.loc[labels.label_source == "outcomes", "labeller_version"]) == {
        "outcomes-v1 score_pass=0.8"}
    # unresolved_tier is a knob: critical puts the three no-tier-right rows there.
    pricey = OutcomesLabeller(unresolved_tier="critical").label(HAND_MADE).set_axis(
        HAND_MADE["row_id"])
    assert list(pricey.loc[["mt.none", "rb.none", "rb.blank_none"], "label"]) == [
        "critical"] * 3
    assert pricey.loc["rb.medium", "label"] == "medium"


def test_outcomes_labeller_follows_its_params() -> None:
    labeller = LABELLERS["outcomes"](LabelParams(score_pass=0.5, unresolved_tier="medium",
                                                 intent_rule_tier="medium"))
    labels = labeller.label(HAND_MADE).set_axis(HAND_MADE["row_id"])
    assert labels.loc["mt.fail", "label"] == "simple"  # 0.7 passes at 0.5
    assert labels.loc["rb.none", "label"] == "medium"
    assert labels.loc["bank.0", "label"] == "medium"


def test_malformed_outcomes_cell_names_the_row() -> None:
    bad = pd.DataFrame([{**row("rb.x", "routerbench"), "outcomes": "{not json"}])
    with pytest.raises(LabelError, match=r"rb\.x"):
        OutcomesLabeller().label(bad)


def test_label_rows_keeps_every_row_and_counts(tmp_path: Path) -> None:
    rows = HAND_MADE.set_index(pd.Index(range(100, 100 + len(HAND_MADE))))
    labelled, metrics = label_stage.label_rows(rows, LabelParams())
    assert labelled.index.equals(rows.index)
    assert list(labelled.columns) == [*rows.columns, *LABEL_COLUMNS, "targets"]
    assert {rid: _targets(cell) for rid, cell in zip(
        labelled["row_id"], labelled["targets"], strict=True)} == TARGETS
    assert metrics["rows"] == len(rows) and metrics["labelled"] == len(rows) - 2
    assert metrics["by_label"] == {"critical": 4, "medium": 3, "simple": 8}
    assert metrics["by_label_source"] == {"outcomes": 13, "rule": 2}
    assert metrics["unlabelled"] == {"total": 2, "by_reason": {"no outcomes": 2}}
    # Counted from TARGETS by hand: per tier, rows with 1, with 0 and with null.
    assert metrics["targets"] == {"simple": {"1": 5, "0": 8, "null": 4},
                                  "medium": {"1": 4, "0": 3, "null": 10},
                                  "critical": {"1": 10, "0": 3, "null": 4}}
    assert "judge" not in metrics
    # A rerun on labelled rows replaces the label columns and targets, never duplicates them.
    again, _ = label_stage.label_rows(labelled, LabelParams())
    assert list(again.columns) == list(labelled.columns)
    with pytest.raises(LabelError, match="text"):
        label_stage.label_rows(rows.drop(columns=["text"]), LabelParams())


def test_main_writes_labelled_rows_and_metrics(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("label:\n  labeller: outcomes\n")
    label_stage.ROWS.parent.mkdir(parents=True)
    HAND_MADE.to_parquet(label_stage.ROWS, index=False)
    label_stage.main()
    labelled = pd.read_parquet(label_stage.LABELLED)
    assert len(labelled) == len(HAND_MADE) and labelled["label"].isna().sum() == 2
    assert _targets(labelled.set_index("row_id").loc["mmlu.copy", "targets"]) == (0, None, 1)
    metrics = json.loads(label_stage.METRICS.read_text())
    assert metrics["labelled"] == len(HAND_MADE) - 2
    assert metrics["targets"]["medium"] == {"1": 4, "0": 3, "null": 10}


def _labelled(label: str | None, label_source: str, source: str = "routerbench",
              outcomes: dict | None = None, scores: dict | None = None) -> dict[str, Any]:
    return {**row(f"{source}.{label}.{label_source}", source, outcomes, scores),
            "label": label, "label_source": label_source}


def test_success_targets_of_each_label_source() -> None:
    both = {"simple": False, "medium": True, "critical": True}
    rows = pd.DataFrame([
        # outcomes: each tier's own outcome; all-negative stays all-negative
        _labelled("medium", "outcomes", outcomes=both),
        _labelled("simple", "outcomes",
                  outcomes={"simple": False, "medium": False, "critical": False}),
        # RouteLLM: medium is GPT-4's alias -- null even where the cell holds a copy
        _labelled("critical", "outcomes", "gsm8k", outcomes=both),
        # graded at score_pass 0.6 here: 0.6 passes, 0.59 does not; the score beats the outcome
        _labelled("medium", "outcomes", "mt_bench", outcomes={"simple": True},
                  scores={"simple": 0.59, "medium": 0.9, "critical": 0.6}),
        # rule: the stated tier only, the others unmeasured
        _labelled("simple", "rule", "banking77"),
        _labelled("medium", "rule", "clinc150"),
        # judge: the judged tier and every tier above it suffice, those below do not
        _labelled("simple", "judge", "log"),
        _labelled("medium", "judge", "log"),
        _labelled("critical", "judge", "log"),
        # no label (whatever the source or outcomes): nothing to learn
        _labelled(None, "outcomes", outcomes=both),
        _labelled(None, "judge", "log"),
    ], index=[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
    targets = success_targets(rows, score_pass=0.6)
    assert targets.index.equals(rows.index)
    assert [_targets(cell) for cell in targets] == [
        (0, 1, 1), (0, 0, 0), (0, None, 1), (0, None, 1),
        (1, None, None), (None, 1, None),
        (1, 1, 1), (0, 1, 1), (0, 0, 1),
        (None, None, None), (None, None, None)]
    with pytest.raises(LabelError, match=r"routerbench\.x"):
        success_targets(pd.DataFrame([{**_labelled("simple", "outcomes"),
                                       "row_id": "routerbench.x", "outcomes": "{bad"}]), 0.8)


# --- the judge, without HTTP: a scripted dispatcher ------------------------------------------

class ScriptedDispatcher:
    """Answers each call with the next of ``replies`` (a str, or an exception to raise)."""

    def __init__(self, *replies: str | Exception, cost: float = 0.01) -> None:
        self.replies = list(replies)
        self.cost = cost
        self.calls: list[list[dict[str, str]]] = []

    async def acompletion(self, tier: str, messages: list[dict[str, str]], **_: Any) -> Any:
        self.calls.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        message = SimpleNamespace(content=reply)
        return SimpleNamespace(response=SimpleNamespace(choices=[SimpleNamespace(
            message=message)]), cost_usd=self.cost)


def scripted_judge(tmp_path: Path, dispatcher: ScriptedDispatcher, **params: Any) -> JudgeLabeller:
    return JudgeLabeller(JudgeParams(cache_path=str(tmp_path / "cache.sqlite"), **params),
                         dispatcher_factory=lambda: dispatcher)  # type: ignore[arg-type,return-value]


def test_judge_reasks_after_invalid_output_and_never_guesses(tmp_path: Path) -> None:
    fenced = '```json\n{"tier": "medium", "reason": "x"}\n```'
    dispatcher = ScriptedDispatcher(fenced, '{"tier": "medium", "reason": "multi-step"}',
                                    '{"tier": "huge", "reason": "x"}', "prose", "{\"tier\":")
    rows = pd.DataFrame([row("a", "log"), row("b", "log")])
    labels = scripted_judge(tmp_path, dispatcher, max_retries=2, concurrency=1).label(rows)
    assert [_na(v) for v in labels["label"]] == ["medium", None]
    assert list(labels["label_note"]) == ["multi-step", "invalid judge output after 3 tries"]
    assert set(labels["label_source"]) == {"judge"}
    assert set(labels["labeller_version"]) == {"judge-rubric-v1"}
    # The re-ask shows the invalid reply back.
    assert dispatcher.calls[1][-2] == {"role": "assistant", "content": fenced}
    assert "valid" in dispatcher.calls[1][-1]["content"]


def test_judge_records_provider_failures_and_zero_budget(tmp_path: Path) -> None:
    rows = pd.DataFrame([row("a", "log")])
    judge = scripted_judge(tmp_path, ScriptedDispatcher(RuntimeError("provider down")))
    assert judge.label(rows)["label_note"].iloc[0] == "judge call failed: provider down"
    assert judge.stats.failed_texts == 1
    broke = scripted_judge(tmp_path, ScriptedDispatcher(), budget_usd=0.0)
    assert broke.label(rows)["label_note"].iloc[0] == "budget exhausted"
    assert broke.stats.budget_exhausted and broke.stats.calls == 0


def test_budget_admits_a_call_only_while_the_estimates_fit() -> None:
    async def scenario() -> None:
        budget = _Budget(1.0)
        first = await budget.acquire(100)
        waiting = asyncio.create_task(budget.acquire(100))
        await asyncio.sleep(0)
        assert first is not None and not waiting.done()  # no price known yet: one at a time
        await budget.settle(first, 0.3, 100, answered=True)  # $0.003 per character
        second, third = await waiting, await budget.acquire(100)  # 0.3 + 0.3 + 0.3 <= 1
        fourth = asyncio.create_task(budget.acquire(100))  # 0.3 + 0.6 + 0.3 > 1: waits
        await budget.settle(second, 0.3, 100, answered=True)
        await asyncio.sleep(0.01)
        assert not fourth.done()
        await budget.settle(third, 0.3, 100, answered=True)  # spent 0.9, none in flight
        await budget.settle(await fourth, 0.3, 100, answered=True)
        assert await budget.acquire(100) is None and budget.exhausted
        assert budget.spent == pytest.approx(1.2)  # <= budget + one call

        free = _Budget(1.0)  # a model priced at 0 must not serialise the calls
        await free.settle(await free.acquire(10), 0.0, 10, answered=True)
        assert None not in (await free.acquire(10), await free.acquire(10))

    asyncio.run(scenario())


# --- the judge against the simulator over HTTP ------------------------------------------------

def _rows_for(workload: Workload, records: list[WorkloadRecord]) -> list[dict[str, Any]]:
    """Harvest-like rows: each tier's own outcome/score (null for RouteLLM's aliased medium)."""
    rows = []
    for record in records:
        outcomes = {t: workload.own_outcome(record, t) for t in TIERS}
        rows.append(row(record.id, record.source,
                        {t: o.correct if o else None for t, o in outcomes.items()},
                        {t: o.score if o else None for t, o in outcomes.items()},
                        text=normalise(record.messages())))
    return rows


@pytest.fixture(scope="module")
def seed_rows(routerbench: Workload, mmlu: Workload) -> pd.DataFrame:
    """~20 seed prompts the simulator's catalog resolves to the same record, including some
    whose first judge answer is invalid and one whose first two answers are invalid."""
    gsm8k, mt_bench = load_workload("gsm8k"), load_workload("mt_bench")
    catalog = AnswerCatalog([routerbench, mmlu, gsm8k, mt_bench])

    def pick(workload: Workload, count: int, want: tuple[bool, bool] | None = None) -> list:
        chosen = []
        # A seeded shuffle: prompts from many eval sets, not the first one's.
        for record in random.Random(0).sample(workload.records, len(workload.records)):
            text = normalise(record.messages())
            found = catalog.find_text(text)
            if found is None or found[1].id != record.id or not any(
                    o.correct is not None or o.score is not None
                    for o in record.outcomes.values()):
                continue
            draws = (answer_is_invalid(text, 0), answer_is_invalid(text, 1))
            if draws == (want or (False, False)):
                chosen.append(record)
                if len(chosen) == count:
                    break
        return _rows_for(workload, chosen)

    rows = (pick(routerbench, 10) + pick(routerbench, 2, (True, False))
            + pick(routerbench, 1, (True, True)) + pick(mmlu, 3) + pick(gsm8k, 2)
            + pick(mt_bench, 2) + [row("log.unknown", "log", text="user: an unrecorded ask 1")])
    assert not answer_is_invalid("user: an unrecorded ask 1", 0)
    return pd.DataFrame(rows)


def judge_params(cache: Path, api_base: str, **extra: Any) -> JudgeParams:
    return JudgeParams(config=str(CONFIG_PATH), api_base=api_base, cache_path=str(cache),
                       max_retries=1, concurrency=4, **extra)


def test_judge_over_http_matches_outcomes_caches_and_respects_the_budget(
        simulator: SimulatorProcess, seed_rows: pd.DataFrame, tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    judge = JudgeLabeller(judge_params(cache, simulator.root))
    labels = judge.label(seed_rows).set_axis(seed_rows["row_id"])
    # The stand-in judge answers "critical" where no tier was right: so does this labeller.
    expected = OutcomesLabeller(unresolved_tier="critical").label(seed_rows).set_axis(
        seed_rows["row_id"])
    stats = judge.stats
    doubly = seed_rows["row_id"].iloc[12]  # the one whose first two answers are invalid

    # Invalid answers were re-asked; the doubly invalid row is recorded null, not guessed.
    assert pd.isna(labels.loc[doubly, "label"])
    assert labels.loc[doubly, "label_note"] == "invalid judge output after 2 tries"
    assert stats.invalid_answers == 2 + 2 and stats.invalid_texts == 1
    assert stats.calls == len(seed_rows) + 3 and stats.cache_hits == 0
    assert 0 < stats.cost_usd <= 5.0
    valid = labels.drop(index=[doubly, "log.unknown"])
    assert valid["label"].notna().all()
    assert (valid["label"] == expected.loc[valid.index, "label"]).all()
    assert not (labels["label"] == "medium").loc[seed_rows["source"].isin(
        ["mmlu", "gsm8k", "mt_bench"]).to_numpy()].any()
    assert labels.loc["log.unknown", "label"] == "simple"
    assert set(labels["label_source"]) == {"judge"}

    # Rerun against a dead provider: every labelled row comes from the cache, zero calls.
    done = seed_rows[labels["label"].notna().to_numpy()]
    dead = JudgeLabeller(judge_params(cache, f"http://127.0.0.1:{free_port()}"))
    again = dead.label(done).set_axis(done["row_id"])
    assert dead.stats.calls == 0 and dead.stats.cache_hits == len(done)
    assert (again["label"] == labels.loc[done["row_id"], "label"]).all()
    cached = JudgeCache(cache)
    try:  # invalid outcomes are not cached as answers
        assert cached.get(cache_key(seed_rows.set_index("row_id").loc[doubly, "text"])) is None
    finally:
        cached.close()

    # A budget of about three calls stops cleanly: the rest are noted, not labelled.
    budget = 3 * stats.cost_usd / stats.calls
    poor = JudgeLabeller(judge_params(tmp_path / "other.sqlite", simulator.root,
                                      budget_usd=budget))
    capped = poor.label(seed_rows)
    assert poor.stats.budget_exhausted
    assert poor.stats.calls >= 1 and poor.stats.cost_usd <= budget + stats.max_call_cost_usd
    assert (capped["label_note"] == "budget exhausted").sum() == poor.stats.budget_exhausted_texts
    assert poor.stats.budget_exhausted_texts >= len(seed_rows) - 6


def test_label_rows_with_the_judge_reports_its_stats(simulator: SimulatorProcess,
                                                     seed_rows: pd.DataFrame,
                                                     tmp_path: Path) -> None:
    rows = pd.concat([seed_rows.head(3), pd.DataFrame([row("bank.1", "banking77")])],
                     ignore_index=True)
    params = LabelParams(labeller="judge",
                         judge=judge_params(tmp_path / "judge.sqlite", simulator.root))
    labelled, metrics = label_stage.label_rows(rows, params)
    assert list(labelled["label_source"]) == ["judge", "judge", "judge", "rule"]
    # Judged rows: the named tier and those above it are targets 1, those below 0.
    for label, cell in zip(labelled["label"].iloc[:3], labelled["targets"].iloc[:3],
                           strict=True):
        assert _targets(cell) == tuple(int(TIERS.index(t) >= TIERS.index(label))
                                       for t in TIERS)
    assert _targets(labelled["targets"].iloc[3]) == (1, None, None)
    assert sum(metrics["targets"]["critical"].values()) == 4
    assert metrics["labeller"] == "judge"
    assert metrics["judge"]["calls"] == 3 and metrics["judge"]["rows"] == 3
    assert metrics["judge"]["budget_exhausted"] is False
