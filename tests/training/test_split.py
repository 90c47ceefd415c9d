"""The split stage: groups, stable folds, tail oversampling and its weights, files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training import split as stage
from training.params import SplitParams
from training.split import (
    FOLDS,
    SplitError,
    assign_groups,
    fold_probabilities,
    split_rows,
)

WORDS = ("apple", "river", "stone", "cloud", "maple", "tiger", "copper", "violet", "garden",
         "signal", "harbor", "lantern", "meadow", "pepper", "quartz", "rocket", "saddle",
         "timber", "velvet", "walnut", "yellow", "zephyr", "anchor", "basket", "candle",
         "dragon", "ember", "falcon", "glacier", "hollow", "island", "jasper", "kettle")


def row(row_id: str, text: str, *, source: str = "mmlu", category: str = "misc",
        label: str | None = "simple", domain: str | None = None,
        label_source: str = "outcomes") -> dict[str, Any]:
    """A label-stage row: harvest columns (token counts included), label columns, targets."""
    tiers = ("simple", "medium", "critical")
    rank = tiers.index(label) if label in tiers else None
    targets = {tier: None if rank is None else int(i >= rank)
               for i, tier in enumerate(tiers)}
    return {"row_id": row_id, "source": source, "category": category, "text": text,
            "text_hash": str(hash(text)), "domain": domain, "outcomes": "{}", "scores": "{}",
            "costs": "{}", "prompt_tokens": str(len(row_id)),
            "output_tokens": json.dumps({"simple": 3, "medium": None, "critical": len(text)}),
            "created_at": None, "feedback": None, "label": label,
            "label_source": label_source, "labeller_version": "test", "label_note": None,
            "targets": json.dumps(targets)}


def prompt(rng: random.Random, words: int = 20) -> str:
    return "user: " + " ".join(rng.choice(WORDS) + str(rng.randrange(1000))
                               for _ in range(words))


def frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """``n`` distinct prompts in one 50-row category, a third of them critical, plus a
    paraphrase pair, two intents and a rare category."""
    rng = random.Random(seed)
    rows = [row(f"r{i:04d}", prompt(rng), category="big",
                label="critical" if i % 3 == 0 else "simple") for i in range(n)]
    base = prompt(rng, 40)
    rows += [row("p.b", base, category="big"),
             row("p.a", base.replace("user:", "user: Please"), category="big")]
    for intent in ("card_arrival", "lost_card"):
        rows += [row(f"i.{intent}.{k}", f"user: {intent} question {k} {prompt(rng, 3)}",
                     source="banking77", category=intent, label_source="rule")
                 for k in range(40)]
    rows += [row(f"law{k}", prompt(rng), category="professional_law", domain="legal")
             for k in range(3)]
    rows += [row("none1", prompt(rng), label=None), row("none2", prompt(rng), label=None)]
    return pd.DataFrame(rows)


PARAMS = SplitParams(rare_category_max=5, tail_eval_boost=2.0)


def test_folds_cover_every_labelled_row_once_and_groups_never_straddle() -> None:
    result = split_rows(frame(), PARAMS)
    together = pd.concat(result.folds.values(), ignore_index=True)
    assert len(together) == len(frame()) - 2 and together["row_id"].is_unique
    assert result.stats["dropped_unlabelled"] == 2
    assert together.groupby("group")["fold"].nunique().max() == 1
    for fold, rows in result.folds.items():
        assert set(rows["fold"]) <= {fold}
        assert list(rows.columns) == [*frame().columns, "group", "fold", "slice", "weight"]
    assert result.stats["rows_by_fold"] == {f: len(result.folds[f]) for f in FOLDS}
    # What the later stages train and replay on travels with each row, unchanged.
    carried = ["targets", "prompt_tokens", "output_tokens"]
    source = frame().set_index("row_id")[carried]
    pd.testing.assert_frame_equal(together.set_index("row_id")[carried],
                                  source.loc[together["row_id"]])


def test_intents_group_by_intent_and_paraphrases_share_a_group() -> None:
    rows = frame()
    groups = assign_groups(rows, threshold=0.7, seed=13).set_axis(rows["row_id"])
    assert groups["i.card_arrival.0"] == groups["i.card_arrival.39"] == "banking77:card_arrival"
    assert groups["i.lost_card.5"] == "banking77:lost_card"
    # Two near-identical prompts: one group, named by the smaller row_id.
    assert groups["p.a"] == groups["p.b"] == "p.a"
    assert groups["r0001"] == "r0001"
    assert groups.nunique() == len(rows) - 1 - 2 * 39


def test_rerun_and_reordered_input_give_the_same_split() -> None:
    first = split_rows(frame(), PARAMS)
    again = split_rows(frame(), PARAMS)
    for fold in FOLDS:
        pd.testing.assert_frame_equal(first.folds[fold], again.folds[fold])
    shuffled = split_rows(frame().sample(frac=1.0, random_state=7), PARAMS)

    def assignment(result: stage.SplitResult) -> dict[str, tuple[str, str, float]]:
        rows = pd.concat(result.folds.values())
        return {r: (g, f, w) for r, g, f, w in
                zip(rows["row_id"], rows["group"], rows["fold"], rows["weight"], strict=True)}

    assert assignment(shuffled) == assignment(first)
    other_seed = split_rows(frame(), SplitParams(rare_category_max=5, seed=14))
    assert assignment(other_seed) != assignment(first)


def test_tail_groups_are_oversampled_into_evaluation_and_weighted_back() -> None:
    result = split_rows(frame(3000), PARAMS)
    rows = pd.concat(result.folds.values(), ignore_index=True)
    singles = rows[rows["category"] == "big"]
    in_eval = singles["fold"] != "train"
    critical = singles["label"] == "critical"
    # Evaluation share 0.4; tails boosted x2 to 0.8 (3000 groups: +-0.05 is > 3 sigma).
    assert in_eval[critical].mean() == pytest.approx(0.8, abs=0.05)
    assert in_eval[~critical].mean() == pytest.approx(0.4, abs=0.05)
    assert set(singles.loc[~critical, "weight"]) == {1.0}
    expected = {"train": 0.6 / 0.2, "validation": 0.15 / 0.3, "test": 0.25 / 0.5}
    for fold, weight in expected.items():
        tail = singles[critical & (singles["fold"] == fold)]
        assert len(tail) and set(tail["weight"].round(9)) == {round(weight, 9)}
    # Weighted, the tail's evaluation share is back to the configured 0.4.
    weighted = singles[critical]
    eval_share = weighted.loc[weighted["fold"] != "train", "weight"].sum() / (
        weighted["weight"].sum())
    assert eval_share == pytest.approx(0.4, abs=0.06)
    stats = result.stats
    assert stats["rows_by_fold_slice"]["test"]["critical"] > stats["rows_by_fold_slice"][
        "train"]["critical"]
    assert sum(stats["rows_by_fold_label"]["train"].values()) == stats["rows_by_fold"]["train"]


def test_slices() -> None:
    rows = pd.concat(split_rows(frame(), PARAMS).folds.values()).set_index("row_id")
    assert json.loads(rows.loc["r0000", "slice"]) == ["critical"]
    assert json.loads(rows.loc["r0001", "slice"]) == []
    assert json.loads(rows.loc["law0", "slice"]) == ["legal", "rare"]  # 3 rows <= 5
    assert json.loads(rows.loc["i.lost_card.0", "slice"]) == []  # 40 rows > 5


def test_fold_probabilities_and_bad_input() -> None:
    probabilities = fold_probabilities(SplitParams(validation=0.3, test=0.3, tail_eval_boost=3))
    assert probabilities[True] == pytest.approx({"train": 0.1, "validation": 0.45, "test": 0.45})
    with pytest.raises(SplitError, match="no training"):
        fold_probabilities(SplitParams(validation=0.5, test=0.5))
    with pytest.raises(SplitError, match="duplicate"):
        split_rows(pd.DataFrame([row("a", "user: x"), row("a", "user: y")]), PARAMS)
    with pytest.raises(SplitError, match="not tiers"):
        split_rows(pd.DataFrame([row("a", "user: x", label="hard")]), PARAMS)
    with pytest.raises(SplitError, match="column"):
        split_rows(pd.DataFrame([row("a", "user: x")]).drop(columns=["label"]), PARAMS)


def test_main_writes_three_folds_and_metrics(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({"split": {"rare_category_max": 5}}))
    stage.LABELLED_PATH.parent.mkdir(parents=True)
    frame().to_parquet(stage.LABELLED_PATH, index=False)  # created_at, feedback: null type
    stage.main()
    total = 0
    for fold in FOLDS:
        table = pq.read_table(stage.SPLIT_DIR / f"{fold}.parquet")
        assert table.schema.field("created_at").type == pa.string()
        for column in ("targets", "prompt_tokens", "output_tokens"):  # JSON / digits, as read
            assert pa.types.is_string(table.schema.field(column).type) or \
                pa.types.is_large_string(table.schema.field(column).type)
        assert table.schema.field("weight").type == pa.float64()
        assert table.column_names[-4:] == ["group", "fold", "slice", "weight"]
        total += table.num_rows
    metrics = json.loads(stage.METRICS_PATH.read_text())
    assert total == metrics["rows"] == len(frame()) - 2
    assert metrics["dropped_unlabelled"] == 2
    assert set(metrics) >= {"rows_by_fold", "rows_by_fold_label", "rows_by_fold_slice",
                            "rows_by_fold_label_source", "groups"}
