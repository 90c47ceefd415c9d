"""``tier-router log retain|export`` on real SQLite files and the throwaway PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from ops import logs
from ops.logs import LogUpkeepError, export_window
from router.cli import app
from router.config import parse_config
from router.errors import ConfigError
from router.telemetry import DecisionLog, DecisionRecord, create_log_engine, decisions
from tests.conftest import CONFIG_PATH
from tests.router.pg import sqlite_url
from tests.router.test_telemetry import T0, full_record

NOW = T0 + timedelta(days=40)
JSON_COLUMNS = ("scores", "thresholds", "deployments_tried", "fallbacks", "latency_ms", "extra",
                "shadow")


def write_config(tmp_path: Path, retention: dict[str, Any], url: str | None = None) -> Path:
    """The repo's config with ``decision_log.retention`` (and url) replaced."""
    data = yaml.safe_load(CONFIG_PATH.read_text())
    data["decision_log"]["retention"] = retention
    if url is not None:
        data["decision_log"]["url"] = url
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def store(url: str, tmp_path: Path, records: list[DecisionRecord]) -> None:
    with DecisionLog(url, spill_path=tmp_path / "spill.jsonl") as log:
        for rec in records:
            log.record(rec)


def read_all(url: str, tmp_path: Path) -> list[DecisionRecord]:
    """Every stored record, in request_id order."""
    with DecisionLog(url, spill_path=tmp_path / "spill.jsonl") as log:
        return sorted(log.read(), key=lambda rec: rec.request_id)


def aged(n: int, tenant: str, days: float, text: str | None = "a prompt") -> DecisionRecord:
    """A record created ``days`` before NOW."""
    return full_record(n, tenant=tenant, text=text and f"{text} {n}",
                       created_at=NOW - timedelta(days=days))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["log", *args])


# -- retention --------------------------------------------------------------------------------


def test_retain_clears_old_prompts_per_tenant_and_keeps_the_rows(db_url: str,
                                                                  tmp_path: Path) -> None:
    records = [
        aged(1, "acme", 45), aged(2, "acme", 31), aged(3, "acme", 29), aged(4, "acme", 1),
        aged(5, "acme", 60, text=None),  # cleared before: not counted again
        aged(6, "globex", 10), aged(7, "globex", 5),  # globex: 7 days
        aged(8, "initech", 100),  # initech: a year
    ]
    store(db_url, tmp_path, records)
    config = write_config(tmp_path, {"prompt_days": 30, "tenants": {"globex": 7,
                                                                    "initech": 365}})
    args = ["retain", "--config", str(config), "--db", db_url, "--now", NOW.isoformat()]

    dry = invoke(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["prompts_cleared"] == {"acme": 2, "globex": 1}
    assert json.loads(dry.stdout)["dry_run"] is True
    assert read_all(db_url, tmp_path) == records  # nothing changed

    done = invoke(*args)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert (report["prompts_cleared"], report["total"], report["now"]) == (
        {"acme": 2, "globex": 1}, 3, NOW.isoformat())
    cleared = {"req-00001", "req-00002", "req-00006"}
    # Only the prompt goes: every other field, metrics included, is as it was.
    assert read_all(db_url, tmp_path) == [
        dataclasses.replace(rec, text=None) if rec.request_id in cleared else rec
        for rec in records]

    again = json.loads(invoke(*args).stdout)
    assert (again["prompts_cleared"], again["total"]) == ({}, 0)


def test_retain_keeps_forever_without_prompt_days(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    records = [aged(1, "acme", 3650), aged(2, "globex", 8), aged(3, "globex", 6.9)]
    store(url, tmp_path, records)
    # decision_log.url from the config (no --db); fractional days.
    config = write_config(tmp_path, {"prompt_days": None, "tenants": {"globex": 7.0}}, url=url)
    result = invoke("retain", "--config", str(config), "--now", NOW.isoformat())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompts_cleared"] == {"globex": 1}
    assert [r.text is None for r in read_all(url, tmp_path)] == [False, True, False]


def test_negative_retention_days_are_a_config_error(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG_PATH.read_text())
    for retention, where in (({"prompt_days": -1}, "decision_log.retention.prompt_days"),
                             ({"tenants": {"acme": -0.5}}, "decision_log.retention.tenants.acme"),
                             ({"prompt_days": float("inf")}, "decision_log.retention.prompt_days"),
                             ({"days": 3}, "decision_log.retention.days")):
        data["decision_log"]["retention"] = retention
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse_config(data)
    config = write_config(tmp_path, {"prompt_days": -1})
    result = invoke("retain", "--config", str(config), "--db", sqlite_url(tmp_path))
    assert result.exit_code == 1
    assert "decision_log.retention.prompt_days" in result.output
    assert "greater than or equal to 0" in result.output
    assert parse_config(yaml.safe_load(CONFIG_PATH.read_text())).decision_log.retention \
        .prompt_days == 30


def test_retain_refuses_bad_input(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"prompt_days": 30})
    naive = invoke("retain", "--config", str(config), "--db", sqlite_url(tmp_path),
                   "--now", "2025-04-01T00:00:00")
    assert naive.exit_code == 1
    assert "--now" in naive.output and "UTC offset" in naive.output
    missing = invoke("retain", "--config", str(config), "--db", sqlite_url(tmp_path))
    assert missing.exit_code == 1
    assert "no decision log at" in missing.output
    assert not (tmp_path / "var" / "decisions.sqlite").exists()  # not created by a trim job


# -- export -----------------------------------------------------------------------------------


def export_records() -> list[DecisionRecord]:
    return [full_record(n, tenant=("acme", "globex")[n % 2], text=f"prompt {n}",
                        created_at=T0 + timedelta(minutes=n, microseconds=n),
                        variant=None if n == 2 else "escalate-0.65",
                        shadow=None if n == 3 else {"predicted_tier": "simple", "n": n})
            for n in range(6)]


def test_export_writes_every_column_of_the_window(db_url: str, tmp_path: Path) -> None:
    records = export_records()
    store(db_url, tmp_path, records)
    window = ["--db", db_url, "--since", (T0 + timedelta(minutes=1)).isoformat(),
              # The same instant in another zone: bounds are instants.
              "--until", "2025-03-01T14:05:00+02:00"]
    out = tmp_path / "out" / "window.jsonl"
    result = invoke("export", *window, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{out}: 4 rows"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == [f"req-0000{n}" for n in (1, 2, 3, 4)]
    assert all(list(line) == [c.name for c in decisions.columns] for line in lines)
    first = lines[0]
    assert first["created_at"] == "2025-03-01T12:01:00.000001+00:00"
    assert isinstance(first["id"], int)
    rec = records[1]
    expected = {name: value for name, value in rec.to_row().items() if name != "created_at"}
    assert {k: v for k, v in first.items() if k not in ("id", "created_at")} == expected
    # what the decision weighed survives as it was: the operating point, the expected prices,
    # the allowed tiers and the neighbourhood (its unrecorded tier's share a JSON null)
    assert first["thresholds"] == {"price_weight": 1000.0, "trust": 0.8, "escalate": 0.5,
                                   "score_threshold": 0.55, "escalation_weight": 0.0}
    assert first["extra"]["expected_cost_usd"] == rec.extra["expected_cost_usd"]
    assert first["extra"]["allowed"] == ["medium", "critical"]
    assert first["extra"]["neighbourhood"]["tiers"]["simple"] == {"recorded": 0, "right": None}
    assert [step["failed"] for step in first["extra"]["cascade"]] == [True, False]
    assert (lines[1]["variant"], lines[2]["shadow"]) == (None, None)

    acme = tmp_path / "acme.parquet"
    result = invoke("export", *window, "--tenant", "acme", "--out", str(acme))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{acme}: 2 rows"
    table = pq.read_table(acme)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("pinned").type == pa.bool_()
    assert table.schema.field("cost_usd").type == pa.float64()
    assert table.schema.field("created_at").type == pa.string()
    rows = table.to_pylist()
    for row in rows:
        for name in JSON_COLUMNS:  # JSON columns as JSON text in Parquet
            row[name] = None if row[name] is None else json.loads(row[name])
    assert rows == [line for line in lines if line["tenant"] == "acme"]
    assert rows[0]["extra"]["neighbourhood"] == records[1].extra["neighbourhood"]


def test_an_empty_window_is_a_readable_empty_file(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    store(url, tmp_path, export_records())
    for name in ("empty.jsonl", "empty.parquet"):
        result = invoke("export", "--db", url, "--since", "2030-01-01T00:00:00Z",
                        "--until", "2030-01-02T00:00:00Z", "--out", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().endswith(": 0 rows")
    assert (tmp_path / "empty.jsonl").read_text() == ""
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


@pytest.mark.parametrize(("since", "until", "out", "message"), [
    ("2025-03-01T00:00:00", "2025-03-02T00:00:00Z", "x.jsonl", "--since: '2025-03-01T00:00:00' "
                                                               "has no UTC offset"),
    ("2025-03-01T00:00:00Z", "2025-03-02T00:00:00", "x.jsonl", "--until: "),
    ("2025-03-02T00:00:00Z", "2025-03-02T00:00:00Z", "x.jsonl", "must be before until"),
    ("2025-03-02T00:00:00Z", "2025-03-01T00:00:00Z", "x.parquet", "must be before until"),
    ("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z", "x.csv", "unknown export format '.csv'"),
    ("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z", "x", "unknown export format"),
    ("yesterday", "2025-03-02T00:00:00Z", "x.jsonl", "not an ISO-8601 time"),
])
def test_export_refuses_bad_input_in_one_line(tmp_path: Path, since: str, until: str, out: str,
                                              message: str) -> None:
    url = sqlite_url(tmp_path)
    store(url, tmp_path, export_records())
    result = invoke("export", "--db", url, "--since", since, "--until", until,
                    "--out", str(tmp_path / out))
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / out).exists()


def test_export_needs_an_existing_current_log(tmp_path: Path) -> None:
    window = ["--since", "2025-03-01T00:00:00Z", "--until", "2025-03-02T00:00:00Z"]
    missing = invoke("export", "--db", sqlite_url(tmp_path), *window,
                     "--out", str(tmp_path / "x.jsonl"))
    assert missing.exit_code == 1
    assert "no decision log at" in missing.output
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as conn:  # a table from before migrations, never opened since
        conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY)")
    stale = invoke("export", "--db", f"sqlite:///{old}", *window,
                   "--out", str(tmp_path / "x.jsonl"))
    assert stale.exit_code == 1
    assert "unversioned decisions table" in stale.output and "log migrate" in stale.output
    assert not (tmp_path / "x.jsonl").exists()


def test_a_failed_export_leaves_the_previous_file_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    store(url, tmp_path, export_records())
    # SQLite does not enforce column types: a text in an integer column fails the Parquet
    # write of the second batch, after the first was written.
    with sqlite3.connect(tmp_path / "var" / "decisions.sqlite") as conn:
        conn.execute("UPDATE decisions SET prompt_tokens = 'many' WHERE request_id = 'req-00004'")
    monkeypatch.setattr(logs, "EXPORT_BATCH_ROWS", 2)
    out = tmp_path / "exports" / "window.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")
    engine = create_log_engine(url)
    try:
        with pytest.raises(LogUpkeepError, match="do not fit the Parquet schema"):
            export_window(engine, out, since=T0, until=T0 + timedelta(hours=1))
    finally:
        engine.dispose()
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in out.parent.iterdir()) == ["window.parquet"]
    result = invoke("export", "--db", url, "--since", T0.isoformat(), "--until",
                    (T0 + timedelta(hours=1)).isoformat(), "--out", str(tmp_path / "y.parquet"))
    assert result.exit_code == 1
    assert "do not fit the Parquet schema" in result.output
    assert not (tmp_path / "y.parquet").exists()
