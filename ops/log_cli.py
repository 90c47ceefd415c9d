"""``tier-router log ...``: decision-log upkeep (schema migrations, retention, export).

A thin edge over :mod:`router.telemetry` and :mod:`ops.logs`: bad input and database errors
become one line on stderr and exit code 1; results go to stdout (JSON, or a one-line summary).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

log_app = typer.Typer(no_args_is_help=True, help="Decision-log upkeep: migrate, retain, export.")

DbOption = Annotated[str, typer.Option(
    "--db", help="decision-log SQLAlchemy URL (sqlite:///path or postgresql+psycopg://...)")]


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=1)


def _shown(url: str) -> str:
    """``url`` without its password, for output."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _open(url: str, option: str) -> Any:
    """The engine (``sqlalchemy.Engine``) of an existing decision log; else an exit-1 error.

    A SQLite file must exist: these jobs read or trim a log, never start an empty one.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from router.telemetry import create_log_engine

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise _fail(f"{option}: {exc}") from None
    database = parsed.database or ""
    if (parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
            and not database.startswith("file:") and not Path(database).is_file()):
        raise _fail(f"{option}: no decision log at {database}")
    return create_log_engine(url)


def _time(option: str, value: str) -> datetime:
    """``value`` (ISO 8601 with a UTC offset) as a tz-aware datetime; else an exit-1 error."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"{option}: not an ISO-8601 time: {value!r}") from None
    if when.tzinfo is None:
        raise _fail(f"{option}: {value!r} has no UTC offset; add one, e.g. {value}Z or "
                    f"{value}+00:00")
    return when


def _echo_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, indent=2))


@log_app.command()
def migrate(db: DbOption) -> None:
    """Upgrade the decision log's schema to the newest revision (a no-op when it is there).

    Prints JSON: {"database", "from", "to", "unversioned"}; "from" is null for a database
    without the table, "unversioned" true for a table made before migrations existed.
    """
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from router.telemetry import SchemaError, brief_error, migrate_schema

    try:
        upgrade = migrate_schema(db)
    except SchemaError as exc:
        raise _fail(f"{_shown(db)}: {exc}") from None
    except ArgumentError as exc:
        raise _fail(f"--db: {exc}") from None
    except SQLAlchemyError as exc:
        raise _fail(f"{_shown(db)}: {brief_error(exc)}") from None
    _echo_json({"database": _shown(db), "from": upgrade.before, "to": upgrade.after,
                "unversioned": upgrade.unversioned})


@log_app.command()
def retain(
    config: Annotated[Path, typer.Option("--config", help="router YAML (decision_log.retention)")],
    db: Annotated[str | None, typer.Option(
        "--db", help="decision-log URL [default: the config's decision_log.url]")] = None,
    now: Annotated[str | None, typer.Option(
        "--now", help="ISO-8601 time with offset the ages are measured from [default: now]")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only, change nothing")
                       ] = False,
) -> None:
    """Clear logged prompts older than their tenant's retention (decision_log.retention).

    Only the prompt text goes; rows and metrics stay. Prints JSON: {"database", "now",
    "dry_run", "prompts_cleared": {tenant: n}, "total"}.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from ops.logs import LogUpkeepError, retain_prompts
    from router.config import load_config
    from router.errors import ConfigError
    from router.telemetry import brief_error

    try:
        router_config = load_config(config)
    except ConfigError as exc:
        raise _fail(f"invalid config:\n{exc}") from None
    url = db or router_config.decision_log.url
    at = _time("--now", now) if now is not None else datetime.now(UTC)
    engine = _open(url, "--db" if db else "decision_log.url")
    try:
        counts = retain_prompts(engine, router_config.decision_log.retention, now=at,
                                dry_run=dry_run)
    except LogUpkeepError as exc:
        raise _fail(f"{_shown(url)}: {exc}") from None
    except SQLAlchemyError as exc:
        raise _fail(f"{_shown(url)}: {brief_error(exc)}") from None
    finally:
        engine.dispose()
    _echo_json({"database": _shown(url), "now": at.astimezone(UTC).isoformat(),
                "dry_run": dry_run, "prompts_cleared": counts, "total": sum(counts.values())})


@log_app.command()
def export(
    db: DbOption,
    since: Annotated[str, typer.Option("--since", help="ISO-8601 time with offset, inclusive")],
    until: Annotated[str, typer.Option("--until", help="ISO-8601 time with offset, exclusive")],
    out: Annotated[Path, typer.Option("--out", help="FILE.jsonl or FILE.parquet")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="only this tenant")] = None,
) -> None:
    """Export every column of the decisions with since <= created_at < until.

    FILE.jsonl: one JSON object per row; FILE.parquet: JSON columns as JSON text. Times are
    ISO-8601 UTC. The file appears whole or not at all. Prints the row count.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from ops.logs import LogUpkeepError, check_window, export_format, export_window
    from router.telemetry import brief_error

    start, end = _time("--since", since), _time("--until", until)
    try:
        export_format(out)
        check_window(start, end)
    except LogUpkeepError as exc:
        raise _fail(str(exc)) from None
    engine = _open(db, "--db")
    try:
        rows = export_window(engine, out, since=start, until=end, tenant=tenant)
    except LogUpkeepError as exc:
        raise _fail(f"{_shown(db)}: {exc}") from None
    except SQLAlchemyError as exc:
        raise _fail(f"{_shown(db)}: {brief_error(exc)}") from None
    except OSError as exc:
        raise _fail(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        engine.dispose()
    typer.echo(f"{out}: {rows} rows")
