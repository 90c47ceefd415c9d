"""The decision log's Alembic migrations on real SQLite files and the throwaway PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from router.cli import app
from router.telemetry import (
    BASELINE_REVISION,
    MIGRATIONS_DIR,
    VERSION_TABLE,
    DecisionLog,
    DecisionRecord,
    SchemaError,
    SchemaUpgrade,
    decisions,
    metadata,
    migrate_schema,
    schema_head,
)
from tests.router.pg import sqlite_url
from tests.router.test_telemetry import T0, full_record

# A frozen copy of the table as ``metadata.create_all`` made it before migrations existed
# (revision 0001), with the index names create_all gave it. Never change it.
OLD_METADATA = sa.MetaData()
OLD_DECISIONS = sa.Table(
    "decisions", OLD_METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("request_id", sa.String, nullable=False, unique=True, index=True),
    sa.Column("tenant", sa.String, nullable=False, index=True),
    sa.Column("text_hash", sa.String, nullable=False),
    sa.Column("requested_model", sa.String, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("text", sa.Text),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("predicted_tier", sa.String),
    sa.Column("confidence", sa.Double),
    sa.Column("gate_action", sa.String),
    sa.Column("override_rule", sa.String),
    sa.Column("override_domain", sa.String),
    sa.Column("pinned", sa.Boolean, nullable=False),
    sa.Column("target_tier", sa.String),
    sa.Column("thresholds", sa.JSON, nullable=False),
    sa.Column("threshold_source", sa.String),
    sa.Column("deployments_tried", sa.JSON, nullable=False),
    sa.Column("fallbacks", sa.JSON, nullable=False),
    sa.Column("final_tier", sa.String),
    sa.Column("final_model", sa.String),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("cost_usd", sa.Double),
    sa.Column("latency_ms", sa.JSON, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("model_version", sa.String),
    sa.Column("cache_status", sa.String),
    sa.Column("cache_similarity", sa.Double),
    sa.Column("feedback", sa.Text),
    sa.Column("extra", sa.JSON, nullable=False),
)
NEW_COLUMNS = ("variant", "shadow")


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[sa.Engine]:
    (tmp_path / "var").mkdir(exist_ok=True)  # a SQLite file's folder: made before connecting
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


def old_records(count: int = 5) -> list[DecisionRecord]:
    """Records as the code before 0002 wrote them: no variant, no shadow, one with no text."""
    records = [full_record(n, variant=None, shadow=None, tenant=("acme", "globex")[n % 2],
                           text=f"question {n}", created_at=T0 + timedelta(minutes=n))
               for n in range(count)]
    records[1] = dataclasses.replace(records[1], text=None, feedback="thumbs_up",
                                     cost_usd=None, extra={})
    return records


def insert_old(engine: sa.Engine, records: list[DecisionRecord]) -> None:
    rows = [{k: v for k, v in rec.to_row().items() if k not in NEW_COLUMNS} for rec in records]
    with engine.begin() as conn:
        conn.execute(OLD_DECISIONS.insert(), rows)


def raw_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every old column of every row, as the database returns it, in id order."""
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            sa.select(*(sa.column(c.name) for c in OLD_DECISIONS.columns))
            .select_from(sa.table("decisions")).order_by(sa.column("id"))).mappings()]


def alembic_config(conn: sa.Connection) -> Config:
    """Alembic run in code, as router.telemetry runs it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    return config


def table_shape(engine: sa.Engine) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    return {
        "columns": [(c["name"], c["nullable"]) for c in inspector.get_columns("decisions")],
        "indexes": sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                          for ix in inspector.get_indexes("decisions")),
    }


def test_a_database_from_before_migrations_keeps_every_row(
        db_url: str, engine: sa.Engine, spill: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    OLD_METADATA.create_all(engine)
    old = old_records()
    insert_old(engine, old)
    before = raw_rows(engine)
    # Alembic's scripts are found from the package, whatever the current directory.
    monkeypatch.chdir(tmp_path)
    with DecisionLog(db_url, spill_path=spill) as log:
        assert log.schema == SchemaUpgrade(before=BASELINE_REVISION, after=schema_head(),
                                           unversioned=True)
        assert log.read() == old
        assert raw_rows(engine) == before  # byte for byte, ids included
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("decisions")}
        assert set(NEW_COLUMNS) <= set(columns)
        assert columns["variant"]["nullable"] and columns["shadow"]["nullable"]
        new = full_record(100, created_at=T0 + timedelta(hours=1))
        assert new.variant and new.shadow
        unassigned = full_record(101, variant=None, shadow=None,
                                 created_at=T0 + timedelta(hours=2))
        log.record(new)
        log.record(unassigned)
        log.flush()
        assert log.read() == [*old, new, unassigned]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(decisions)
                            .where(decisions.c.shadow.is_(None))).scalar_one() == len(old) + 1
        assert conn.execute(sa.select(decisions.c.request_id)
                            .where(decisions.c.variant == new.variant)).scalars().all() == [
            new.request_id]
    shape = table_shape(engine)
    # Opening again changes nothing.
    with DecisionLog(db_url, spill_path=spill) as log:
        assert log.schema == SchemaUpgrade(before=schema_head(), after=schema_head())
        assert log.count() == len(old) + 2
    assert table_shape(engine) == shape
    assert migrate_schema(db_url) == SchemaUpgrade(before=schema_head(), after=schema_head())


def test_a_database_created_now_matches_the_table_and_the_old_one_plus_0002(
        db_url: str, engine: sa.Engine, spill: Path) -> None:
    with DecisionLog(db_url, spill_path=spill) as log:
        assert log.schema == SchemaUpgrade(before=None, after=schema_head())
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == schema_head()
        # The Table the code writes through equals what the revisions built.
        assert compare_metadata(context, metadata) == []
    created = table_shape(engine)
    assert [name for name, _ in created["columns"]] == [c.name for c in decisions.columns]
    assert ("ix_decisions_variant", ("variant",), False) in created["indexes"]

    # The same shape from a pre-migration table: baseline 0001 equals the old create_all.
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
    metadata.drop_all(engine)
    OLD_METADATA.create_all(engine)
    assert migrate_schema(db_url) == SchemaUpgrade(before=BASELINE_REVISION,
                                                   after=schema_head(), unversioned=True)
    assert table_shape(engine) == created


def test_a_database_at_0001_upgrades_and_0002_downgrades(
        db_url: str, engine: sa.Engine, spill: Path) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE_REVISION)
    old = old_records(3)
    insert_old(engine, old)
    assert migrate_schema(db_url) == SchemaUpgrade(before=BASELINE_REVISION, after="0002")
    new = full_record(50, created_at=T0 + timedelta(hours=1))
    with DecisionLog(db_url, spill_path=spill) as log:
        log.record(new)
        log.flush()
        assert log.read() == [*old, new]
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), BASELINE_REVISION)
    columns = [c["name"] for c in sa.inspect(engine).get_columns("decisions")]
    assert columns == [c.name for c in OLD_DECISIONS.columns]
    assert len(raw_rows(engine)) == 4


def test_workers_starting_at_once_all_open_the_log(db_url: str, engine: sa.Engine,
                                                   tmp_path: Path) -> None:
    workers = 4
    start = threading.Barrier(workers)
    results: list[SchemaUpgrade] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        start.wait()
        try:
            with DecisionLog(db_url, spill_path=tmp_path / f"spill-{n}.jsonl") as log:
                log.record(full_record(n))
                results.append(log.schema)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {r.after for r in results} == {schema_head()}
    # Exactly one of them created the schema; the others found it done.
    assert sorted(r.before or "" for r in results) == ["", *[schema_head()] * (workers - 1)]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one() == \
            workers
        if engine.dialect.name == "sqlite":  # the switch to WAL races too: one of them made it
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_a_dropped_table_with_a_stale_stamp_is_recreated(db_url: str, engine: sa.Engine,
                                                         spill: Path) -> None:
    migrate_schema(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE decisions"))
    with DecisionLog(db_url, spill_path=spill) as log:
        assert log.schema == SchemaUpgrade(before=None, after=schema_head())
        log.record(full_record(1))
        log.flush()
        assert log.count() == 1


def test_a_newer_revision_is_written_to_but_not_migrated(
        tmp_path: Path, spill: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = sqlite_url(tmp_path)
    migrate_schema(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="'9999', unknown"):
        migrate_schema(url)
    result = CliRunner().invoke(app, ["log", "migrate", "--db", url])
    assert result.exit_code == 1
    assert "unknown to this version" in result.output
    # A worker of the older release keeps logging (new columns are nullable by convention).
    with DecisionLog(url, spill_path=spill) as log:
        assert log.schema == SchemaUpgrade(before="9999", after="9999")
        log.record(full_record(1))
        log.flush()
        assert log.count() == 1
    assert "newer release" in caplog.text


def test_log_migrate_reports_from_and_to(db_url: str, engine: sa.Engine) -> None:
    OLD_METADATA.create_all(engine)
    insert_old(engine, old_records(2))
    runner = CliRunner()
    first = runner.invoke(app, ["log", "migrate", "--db", db_url])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert {k: report[k] for k in ("from", "to", "unversioned")} == {
        "from": BASELINE_REVISION, "to": schema_head(), "unversioned": True}
    again = json.loads(runner.invoke(app, ["log", "migrate", "--db", db_url]).stdout)
    assert (again["from"], again["to"], again["unversioned"]) == (schema_head(), schema_head(),
                                                                  False)
    assert len(raw_rows(engine)) == 2


def test_log_migrate_of_an_empty_database_and_a_bad_url(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["log", "migrate", "--db", sqlite_url(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["from"] is None
    bad = runner.invoke(app, ["log", "migrate", "--db", "not a url"])
    assert bad.exit_code == 1
    assert "--db" in bad.output
