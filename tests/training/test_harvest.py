"""The harvest stage: log window and quarantine, bootstrap switch, PII scrubbing, dedupe, files,
each tier's own outcome (an aliased tier records none) and the token columns."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from router.pii import scrub_pii
from router.telemetry import DecisionLog, DecisionRecord, hash_text
from training import harvest as stage
from training.harvest import COLUMNS, HarvestError, harvest, parse_window, read_log
from training.params import HarvestParams
from workloads import BUILTIN, Outcome, Workload, WorkloadRecord

SINCE = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = datetime(2026, 4, 1, tzinfo=UTC)
WINDOW = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
# Two recorded models, as in RouteLLM's data: medium is an alias of critical's model.
TIER_MODELS = {"simple": "small", "medium": "big", "critical": "big"}
NULLS = {"simple": None, "medium": None, "critical": None}
# ~40 distinct words: word-shingled, and one changed first word keeps Jaccard ~0.95.
LONG = ("A farmer plants rows of corn and beans in spring then waters each field every "
        "morning before the sun rises high above the hills while neighbours bring baskets "
        "of apples pears and plums to trade at the busy village market near the river bend "
        "today")


def record(rid: str, text: str, category: str = "misc", small: bool | None = True,
           big: bool | None = True, source: str = "mmlu") -> WorkloadRecord:
    outcomes = {name: Outcome(correct=value, cost_usd=0.001 if name == "small" else 0.01)
                for name, value in (("small", small), ("big", big)) if value is not None}
    return WorkloadRecord(id=rid, source=source, category=category, turns=(text,),
                          outcomes=outcomes)


def seeds() -> dict[str, Workload]:
    """Two tiny workloads: graded multiple choice and support intents without outcomes."""
    mmlu = [
        record("m.law", "Is a verbal contract for land enforceable?", "professional_law"),
        record("m.fin", "What does a rising yield curve signal?", "econometrics"),
        record("m.math", "Janet's ducks lay 16 eggs per day. She sells them at $2 each "
               "since 1999. How much does she make in 2023 from 1,250 eggs?", "math"),
        record("m.pii", "Email jane.doe@example.com or call +44 20 7946 0958 about card "
               "4111 1111 1111 1111 and IBAN DE89 3704 0044 0532 0130 00."),
        # Exact duplicate of m.dup2's text but with less outcome information: m.dup2 wins.
        record("m.dup1", "Which planet is largest?", small=None, big=None),
        record("m.dup2", "Which planet is largest?"),
        record("m.near1", LONG),
        record("m.near2", "The " + LONG.split(" ", 1)[1]),
    ]
    intents = [record(f"b.{i}", text, "card_arrival", None, None, "banking77")
               for i, text in enumerate(("Where is my card?", "When will my card arrive?"))]
    return {"mmlu": Workload("mmlu", "mem", mmlu, TIER_MODELS),
            "banking77": Workload("banking77", "mem", intents, {})}


def loader(workloads: dict[str, Workload], calls: list[str] | None = None
           ) -> Callable[[str], Workload]:
    def load(name: str) -> Workload:
        if calls is not None:
            calls.append(name)
        return workloads[name]
    return load


def params(**changes: Any) -> HarvestParams:
    values = {**WINDOW, "bootstrap": ["mmlu", "banking77"], "min_log_rows": 5, **changes}
    return HarvestParams(**values)


def decision(n: int, created: datetime, **changes: Any) -> DecisionRecord:
    text = changes.pop("text", f"user: log question number {n} about invoices")
    return DecisionRecord(request_id=f"req-{n}", tenant="acme", text_hash=hash_text(str(text)),
                          requested_model="auto", created_at=created, text=text,
                          final_tier="medium", cost_usd=0.002, **changes)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    """A real SQLite decision log: 3 usable rows in the window, 2 unusable, 2 outside."""
    url = f"sqlite:///{tmp_path / 'decisions.sqlite'}"
    day = timedelta(days=1)
    records = [
        decision(1, SINCE, prompt_tokens=20, completion_tokens=7),  # the window includes since
        decision(2, SINCE + day, text="user: write to bob@example.org please",
                 feedback="call me on (555) 123-4567"),
        decision(3, SINCE + 2 * day, override_domain="legal"),
        decision(4, SINCE + 3 * day, status="error", error="timeout"),
        decision(5, SINCE + 4 * day, text=None),
        decision(6, SINCE - day),
        decision(7, UNTIL),  # ... and excludes until
    ]
    with DecisionLog(url, spill_path=tmp_path / "spill.jsonl") as log:
        for rec in records:
            log.record(rec)
        log.flush()
    return url


def test_log_window_quarantine_and_no_bootstrap(log_url: str) -> None:
    records, problems = read_log(log_url, SINCE, UNTIL)
    assert [r.request_id for r in records] == [f"req-{n}" for n in range(1, 6)]
    assert problems == []
    calls: list[str] = []
    result = harvest(records, params(min_log_rows=3), load=loader(seeds(), calls))
    assert calls == []
    stats = result.stats
    assert (stats["log_rows"], stats["log_usable"], stats["bootstrapped"]) == (5, 3, False)
    assert stats["quarantined"] == 2
    assert sorted(q["reason"] for q in result.quarantine) == ["no text", "status error"]
    assert all("text" not in q for q in result.quarantine)
    rows = result.rows.set_index("row_id")
    assert list(rows.index) == ["log:req-1", "log:req-2", "log:req-3"]
    assert set(rows["source"]) == {"log"} and set(rows["category"]) == {"log"}
    assert rows.loc["log:req-1", "created_at"] == "2026-03-01T00:00:00+00:00"
    assert json.loads(rows.loc["log:req-1", "costs"]) == {
        "simple": None, "medium": 0.002, "critical": None}
    assert json.loads(rows.loc["log:req-1", "outcomes"]) == dict.fromkeys(
        ("simple", "medium", "critical"))
    assert rows.loc["log:req-3", "domain"] == "legal"
    # Tokens: the logged prompt count, and the completion count for the answering tier only.
    assert rows.loc["log:req-1", "prompt_tokens"] == "20"
    assert json.loads(rows.loc["log:req-1", "output_tokens"]) == {
        "simple": None, "medium": 7, "critical": None}
    assert rows.loc["log:req-2", "prompt_tokens"] is None  # not logged: unknown, not 0
    assert json.loads(rows.loc["log:req-2", "output_tokens"]) == NULLS
    # PII is scrubbed from log text and feedback alike.
    assert rows.loc["log:req-2", "text"] == "user: write to [EMAIL] please"
    assert rows.loc["log:req-2", "feedback"] == "call me on [PHONE]"
    assert rows.loc["log:req-2", "text_hash"] == hash_text("user: write to [EMAIL] please")
    assert stats["pii_replacements"] == {"secret": 0, "email": 1, "iban": 0, "card": 0,
                                         "phone": 1}


def test_bootstrap_when_the_log_is_short(log_url: str) -> None:
    records, _ = read_log(log_url, SINCE, UNTIL)
    calls: list[str] = []
    result = harvest(records, params(min_log_rows=4), load=loader(seeds(), calls))
    assert calls == ["mmlu", "banking77"]
    assert result.stats["bootstrapped"] is True
    assert result.stats["rows_by_source"] == {"log": 3, "mmlu": 6, "banking77": 2}
    rows = result.rows.set_index("row_id")
    assert rows.loc["m.law", "domain"] == "legal"
    assert rows.loc["m.fin", "domain"] == "finance"
    assert rows.loc["m.math", "domain"] is None
    assert rows.loc["m.math", "text"] == normalised(seeds()["mmlu"].records[2])
    # Medium only aliases critical's model here: it records no outcome or cost of its own
    # (never a copy of critical's).
    assert json.loads(rows.loc["m.law", "outcomes"]) == {
        "simple": True, "medium": None, "critical": True}
    assert json.loads(rows.loc["m.law", "costs"]) == {
        "simple": 0.001, "medium": None, "critical": 0.01}
    assert json.loads(rows.loc["m.law", "scores"]) == NULLS
    # 42 characters -> ceil(42 / 4) = 11 tokens; no recorded response, so the synthetic
    # "The answer is X." (16 characters, 4 tokens) for each tier with a model of its own.
    assert rows.loc["m.law", "prompt_tokens"] == "11"
    assert json.loads(rows.loc["m.law", "output_tokens"]) == {
        "simple": 4, "medium": None, "critical": 4}
    assert json.loads(rows.loc["b.0", "outcomes"]) == NULLS
    assert json.loads(rows.loc["b.0", "scores"]) == NULLS
    assert json.loads(rows.loc["b.0", "costs"]) == NULLS
    # "Where is my card?": 17 characters -> 5 tokens. Intent data records no model: each tier
    # gets the generic answer "This is a simulated reply from <tier> (... reference <12 hex>).",
    # 113 characters + the tier name: 119 (simple, medium) -> 30 tokens, 121 (critical) -> 31.
    assert rows.loc["b.0", "prompt_tokens"] == "5"
    assert json.loads(rows.loc["b.0", "output_tokens"]) == {
        "simple": 30, "medium": 30, "critical": 31}
    assert rows.loc["b.0", "created_at"] is None


def test_a_tier_with_a_model_of_its_own_keeps_its_outcome_and_answer_tokens() -> None:
    """Three recorded models (RouterBench's shape): every tier's own outcome, cost and answer
    length; prompt tokens count every turn."""
    three = Workload("routerbench", "mem", [WorkloadRecord(
        id="rb.1", source="routerbench", category="gsm8k",
        turns=("What is six times seven?", "And halved?"),  # 24 + 11 = 35 characters
        outcomes={"small": Outcome(False, 0.0001, "I think 40"),  # 10 characters
                  "mid": Outcome(True, 0.0004, "42, halved: 21"),  # 14 characters
                  "big": Outcome(None, 0.003, "The product is 42; half of it is 21.")})],
        {"simple": "small", "medium": "mid", "critical": "big"})
    result = harvest([], params(bootstrap=["routerbench"]), load=loader({"routerbench": three}))
    row = result.rows.set_index("row_id").loc["rb.1"]
    assert json.loads(row["outcomes"]) == {"simple": False, "medium": True, "critical": None}
    assert json.loads(row["costs"]) == {"simple": 0.0001, "medium": 0.0004, "critical": 0.003}
    assert row["prompt_tokens"] == "9"  # ceil(35 / 4)
    # ceil(10 / 4), ceil(14 / 4), ceil(36 / 4)
    assert json.loads(row["output_tokens"]) == {"simple": 3, "medium": 4, "critical": 9}


def normalised(rec: WorkloadRecord) -> str:
    from router.normalise import normalise
    return normalise(rec.messages())


def test_dedupe_keeps_the_row_with_more_outcome_information() -> None:
    result = harvest([], params(), load=loader(seeds()))
    ids = list(result.rows["row_id"])
    assert "m.dup2" in ids and "m.dup1" not in ids  # exact: m.dup2 has outcomes
    assert "m.near1" in ids and "m.near2" not in ids  # near: one word differs, later dropped
    assert (result.stats["exact_duplicates"], result.stats["near_duplicates"]) == (1, 1)
    assert result.rows["text_hash"].is_unique


def test_seed_rows_are_scrubbed_and_columns_follow_the_contract() -> None:
    result = harvest([], params(), load=loader(seeds()))
    assert tuple(result.rows.columns) == COLUMNS
    text = result.rows.set_index("row_id").loc["m.pii", "text"]
    assert text == ("user: Email [EMAIL] or call [PHONE] about card [CARD] and IBAN "
                    "[IBAN].")
    assert result.stats["pii_replacements"] == {"secret": 0, "email": 1, "iban": 1,
                                                "card": 1, "phone": 1}
    assert all(isinstance(v, str) for v in result.rows["text_hash"])


@pytest.mark.parametrize(("text", "expected", "kinds"), [
    ("mail A.B-c+d@mail.example.co.uk now", "mail [EMAIL] now", {"email": 1}),
    ("call +1 (415) 555-0132 or 415.555.0132", "call [PHONE] or [PHONE]", {"phone": 2}),
    ("ring 020 7946 0958 today", "ring [PHONE] today", {"phone": 1}),
    ("card 4111111111111111.", "card [CARD].", {"card": 1}),
    ("amex 3782-822463-10005 ok", "amex [CARD] ok", {"card": 1}),
    ("iban GB82WEST12345698765432 and GB82 WEST 1234 5698 7654 32 OK",
     "iban [IBAN] and [IBAN] OK", {"iban": 2}),
    ("key sk-proj-Ab3dEf5gHi7jKl9mNo1pQr2s done", "key [SECRET] done", {"secret": 1}),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]", {"secret": 1}),
    ("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
     "sha [SECRET]", {"secret": 1}),
    ("token Zm9vYmFyQmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg==", "token [SECRET]", {"secret": 1}),
])
def test_scrub_pii_replaces_typed_placeholders(text: str, expected: str,
                                               kinds: dict[str, int]) -> None:
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == expected
    assert dict(counts) == kinds


@pytest.mark.parametrize("text", [
    "Janet's ducks lay 16 eggs per day and she sells them for $2 each: 16 * 2 = 32.",
    "In 1999-2001 the price rose from $1,234,567.89 to $2,345,678.90 (+12.5 %).",
    "Compute 2^64 = 18446744073709551616 and 20! = 2432902008176640000.",
    "pi = 3.14159265358979323846, e = 2.718281828459045, x = -0.5, +5 degrees",
    "A 16-digit number that fails Luhn: 4111 1111 1111 1112; not a card: 1234567890123456.",
    "dates 2023-10-15 and 15.10.2023 at 12:30, ISBN 978-3-16-148410-0, version 1.2.3",
    "lists 100 200 300 400 500 and 0 5 10 15 20, sums 3+4=7, 12-345-6789",
    "sk-learn-compatible-estimators use getUserAccountBalanceHistoryV2Handler in code",
    "the word pneumonoultramicroscopicsilicovolcanoconiosis is long",
    "a 40-digit number 1234567890123456789012345678901234567890 is just maths",
])
def test_scrub_pii_leaves_ordinary_text_and_numbers_alone(text: str) -> None:
    assert scrub_pii(text) == (text, {})


def test_malformed_log_rows_are_quarantined_not_fatal() -> None:
    t = SINCE + timedelta(hours=1)
    rows = [
        {"request_id": "a", "created_at": t, "status": "ok", "text": 123},
        {"request_id": "b", "created_at": t, "status": "ok", "text": "   "},
        {"request_id": "c", "created_at": datetime(2026, 3, 2), "status": "ok", "text": "x y"},
        {"request_id": None, "created_at": t, "status": "ok", "text": "x y"},
        {"request_id": "d", "created_at": t, "status": "ok", "text": "user: fine"},
        {"request_id": "d", "created_at": t, "status": "ok", "text": "user: again"},
    ]
    result = harvest(rows, params(min_log_rows=0), load=loader({}))
    assert list(result.rows["row_id"]) == ["log:d"]
    assert [q["reason"] for q in result.quarantine] == [
        "text is int, not str", "blank text", "created_at not a timezone-aware time",
        "no request_id", "duplicate request_id"]
    assert result.stats["quarantined"] == 5 and result.stats["log_rows"] == 6


def test_unreadable_log_row_is_quarantined(log_url: str) -> None:
    path = log_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE decisions SET scores = 'not json' WHERE request_id = 'req-2'")
    records, problems = read_log(log_url, SINCE, UNTIL)
    assert [r.request_id for r in records] == ["req-1", "req-3", "req-4", "req-5"]
    assert [(p["row_id"], p["reason"]) for p in problems] == [("log:req-2", "unreadable")]
    result = harvest(records, params(min_log_rows=0), log_problems=problems)
    assert result.stats["log_rows"] == 5 and result.stats["quarantined"] == 3


def test_missing_sqlite_log_is_empty_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "decisions.sqlite"
    assert read_log(f"sqlite:///{path}", SINCE, UNTIL) == ([], [])
    assert not path.exists() and not path.parent.exists()


def test_window_must_be_valid() -> None:
    assert parse_window(params(since="2026-03-01T00:00:00")) == (SINCE, UNTIL)
    with pytest.raises(HarvestError, match="empty"):
        parse_window(params(since=UNTIL.isoformat(), until=SINCE.isoformat()))
    with pytest.raises(HarvestError, match="ISO"):
        parse_window(params(since="March"))


def test_max_rows_per_source_is_a_seeded_sample() -> None:
    many = Workload("mmlu", "mem", [record(f"m.{i}", f"question {i} about thing {i * 7}")
                                    for i in range(50)], TIER_MODELS)
    workloads = {"mmlu": many, "banking77": seeds()["banking77"]}
    first = harvest([], params(max_rows_per_source={"mmlu": 10}), load=loader(workloads))
    again = harvest([], params(max_rows_per_source={"mmlu": 10}), load=loader(workloads))
    assert first.stats["rows_by_source"] == {"mmlu": 10, "banking77": 2}
    assert list(first.rows["row_id"]) == list(again.rows["row_id"])
    other = harvest([], params(max_rows_per_source={"mmlu": 10}, seed=14), load=loader(workloads))
    assert list(other.rows["row_id"]) != list(first.rows["row_id"])


def test_main_writes_rows_quarantine_and_metrics(log_url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "params.yaml").write_text(json.dumps({"harvest": {
        **WINDOW, "log_url": log_url, "min_log_rows": 0}}))
    stage.main()
    table = pq.read_table(work / stage.ROWS_PATH)
    assert table.column_names == list(COLUMNS)
    assert {str(t) for t in table.schema.types} == {"string"}
    assert table.num_rows == 3
    lines = (work / stage.QUARANTINE_PATH).read_text().splitlines()
    assert [json.loads(line)["reason"] for line in lines] == ["status error", "no text"]
    metrics = json.loads((work / stage.METRICS_PATH).read_text())
    assert set(metrics) == {"log_rows", "log_usable", "bootstrapped", "rows_by_source",
                            "exact_duplicates", "near_duplicates", "quarantined",
                            "pii_replacements", "rows"}
    assert metrics["rows"] == 3


def test_main_exits_non_zero_on_a_bad_window(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(json.dumps({"harvest": {
        "since": "2027-01-01T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}}))
    with pytest.raises(SystemExit) as exc:
        stage.main()
    assert exc.value.code == 1
    assert not (tmp_path / stage.ROWS_PATH).exists()


def test_real_seed_data() -> None:
    """All six built-in workloads, as the pipeline bootstraps them: sane counts, fast."""
    started = time.monotonic()
    result = harvest([], HarvestParams(**WINDOW))
    elapsed = time.monotonic() - started
    stats = result.stats
    assert stats["bootstrapped"] is True
    by_source = stats["rows_by_source"]
    assert set(by_source) == set(BUILTIN)
    # Intent data repeats itself; RouterBench and GSM8K prompts are all distinct.
    assert by_source["routerbench"] == 2351 and by_source["gsm8k"] == 1072
    assert 11_000 <= by_source["mmlu"] <= 11_166 and 150 <= by_source["mt_bench"] <= 160
    assert 12_800 <= by_source["banking77"] <= 13_083
    assert 23_400 <= by_source["clinc150"] <= 23_700
    assert 50 <= stats["exact_duplicates"] <= 200 and 100 <= stats["near_duplicates"] <= 600
    assert stats["rows"] == len(result.rows) == sum(by_source.values())
    assert result.rows["row_id"].is_unique and result.rows["text_hash"].is_unique
    assert result.rows["domain"].value_counts().to_dict().keys() == {
        "legal", "finance", "medical"}
    # Every seed row has a prompt token count; RouteLLM's rows (two recorded models) record
    # nothing for medium, RouterBench's (a medium model of its own) almost always do.
    assert result.rows["prompt_tokens"].map(lambda v: v.isdigit() and int(v) > 0).all()
    cells = {column: result.rows[column].map(json.loads) for column in (
        "outcomes", "scores", "costs", "output_tokens")}
    routellm = result.rows["source"].isin(["mmlu", "gsm8k", "mt_bench"]).to_numpy()
    for column, values in cells.items():
        assert all(cell["medium"] is None for cell in values[routellm]), column
    assert all(cell["critical"] is not None for cell in cells["output_tokens"][routellm])
    routerbench = (result.rows["source"] == "routerbench").to_numpy()
    medium_known = sum(cell["medium"] is not None for cell in cells["outcomes"][routerbench])
    assert medium_known >= by_source["routerbench"] - 10  # 5 to 7 blank cells per model
    assert all(cell["medium"] is not None for cell in cells["costs"][routerbench])
    assert elapsed < 60, f"harvest took {elapsed:.1f} s"
